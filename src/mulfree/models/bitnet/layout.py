"""BitNet b1.58 checkpoints in the official layout, as microsoft/bitnet-b1.58-2B-4T ships them.

transformers defines the layout (`transformers.integrations.bitnet`, `models/bitnet`):
- config.json: model_type "bitnet" (or "llama" for 1.58-bit Llama-architecture checkpoints)
  with `quantization_config` {quant_method: "bitnet", linear_class, quantization_mode};
- every projection of the decoder layers (q/k/v/o, gate/up/down) is ternary:
    linear_class "bitlinear" (offline): `weight` uint8 [N / 4, K], four ternary rows per byte
      row: code c = q + 1 of row i * (N / 4) + r sits in bits 2i..2i+1 of byte row r
      (`pack_official` / `unpack_official` below, the order of transformers' `pack_weights`);
      `weight_scale` [1]: y = (q_x . q_w) / (s_x * weight_scale), so w = q / weight_scale;
    linear_class "autobitlinear", offline: `weight` ternary values [N, K] (or packed as above)
      and `weight_scale` [1] multiplying the output: w = q * weight_scale;
    linear_class "autobitlinear", online (the bf16 master weights): `weight` float [N, K],
      ternarized per tensor by absmean as in training (mulfree.ternary.quant.weight_quant_ternary);
- activations: int8 absmax per token (mulfree.ternary.quant.act_quant_int8 is the same rule);
- norms, embeddings and the head are floats (the head is never ternary).
BitNet adds `attn_sub_norm` (before o_proj) and `ffn_sub_norm` (before down_proj) to Llama's block
and uses a ReLU^2 gated MLP; a Llama checkpoint has neither sub-norm and its own `hidden_act`.

`BitNetLayout` says which variant a checkpoint is; `BitNetCheckpoint` reads its tensors one at a
time, each ternary projection as (q int8 [N, K], scale) with w = q / scale, the convention of
mulfree.ternary.packing. Every problem is one MulfreeError line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mulfree.errors import MulfreeError, first_line
from mulfree.tensorfile import TensorFiles

MODEL_TYPES = ("bitnet", "llama")
LINEAR_CLASSES = ("bitlinear", "autobitlinear")
QUANTIZATION_MODES = ("offline", "online")
HIDDEN_ACTS = ("relu2", "silu")  # what the packed engine implements
VALUES_PER_BYTE = 4  # ternary codes per uint8 of the official packing
# (module path inside a decoder layer, which config sizes give [out, in])
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


# ---------------------------------------------------------------------------------------------
# The official packing (the spec: transformers' pack_weights / unpack_weights order)
# ---------------------------------------------------------------------------------------------
def pack_official(q: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K] in {-1, 0, 1}, N a multiple of 4 -> uint8 [N / 4, K]: byte row r holds
    rows r, r + N/4, r + 2N/4, r + 3N/4 in bit pairs 0-1, 2-3, 4-5, 6-7 (code q + 1)."""
    if q.dim() != 2 or q.shape[0] % VALUES_PER_BYTE:
        raise MulfreeError(
            f"pack_official: expected [N, K] with N a multiple of 4, got {tuple(q.shape)}"
        )
    p = q.shape[0] // VALUES_PER_BYTE
    codes = (
        (q.to(torch.int16) + 1).to(torch.uint8).reshape(VALUES_PER_BYTE, p, q.shape[1])
    )  # [i, r, k]
    out = torch.zeros(p, q.shape[1], dtype=torch.uint8)
    for i in range(VALUES_PER_BYTE):
        out |= codes[i] << (2 * i)
    return out


def unpack_official(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N / 4, K] -> q int8 [N, K] (inverse of `pack_official`). A code 3 (never written)
    is refused: it means the tensor is not a packed ternary weight."""
    p, k = packed.shape
    codes = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])  # [i, r, k]
    if bool((codes == 3).any()):
        raise MulfreeError("packed ternary weight holds the code 3 (not a bitnet-packed tensor)")
    return (codes.to(torch.int8) - 1).reshape(VALUES_PER_BYTE * p, k)


# ---------------------------------------------------------------------------------------------
# The variant a config describes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BitNetLayout:
    """Which official variant a checkpoint is (kept in a packed file's metadata)."""

    model_type: str = "bitnet"  # "bitnet" | "llama"
    linear_class: str = "bitlinear"
    quantization_mode: str = "offline"

    @property
    def sub_norms(self) -> bool:
        """attn_sub_norm / ffn_sub_norm present (BitNet) or not (Llama)."""
        return self.model_type == "bitnet"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where) -> BitNetLayout:
        try:
            raw = json.loads(text)
            layout = cls(**raw)
        except (ValueError, TypeError) as e:
            raise MulfreeError(f"{where}: unreadable bitnet layout metadata ({e})") from None
        layout.check(where)
        return layout

    def check(self, where) -> None:
        for name, value, allowed in (("model_type", self.model_type, MODEL_TYPES),
                                     ("linear_class", self.linear_class, LINEAR_CLASSES),
                                     ("quantization_mode", self.quantization_mode, QUANTIZATION_MODES)):  # fmt: skip
            if value not in allowed:
                raise MulfreeError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}")


def is_bitnet_config(raw) -> bool:
    """True for a config a BitNet reader should take: model_type bitnet, or a model_type this
    module knows carrying a bitnet quantization_config."""
    if not isinstance(raw, dict):
        return False
    qc = raw.get("quantization_config")
    return raw.get("model_type") == "bitnet" or (
        raw.get("model_type") in MODEL_TYPES
        and isinstance(qc, dict)
        and qc.get("quant_method") == "bitnet"
    )


def parse_layout(raw: dict, where) -> BitNetLayout:
    """The layout of a raw config.json dict; refuses a missing or unknown quantization_config."""
    mt = raw.get("model_type")
    if mt not in MODEL_TYPES:
        raise MulfreeError(
            f"{where}: model_type {mt!r} is not a BitNet layout ({', '.join(MODEL_TYPES)})"
        )
    qc = raw.get("quantization_config")
    if qc is None:
        raise MulfreeError(
            f"{where}: no quantization_config; a BitNet checkpoint declares "
            "{quant_method: bitnet, linear_class, quantization_mode}"
        )
    if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
        got = qc.get("quant_method") if isinstance(qc, dict) else qc
        raise MulfreeError(
            f"{where}: unknown quantization_config quant_method {got!r} (expected 'bitnet')"
        )
    layout = BitNetLayout(
        mt, qc.get("linear_class", "bitlinear"), qc.get("quantization_mode", "offline")
    )
    layout.check(f"{where}: quantization_config")
    if qc.get("use_rms_norm"):
        raise MulfreeError(f"{where}: quantization_config use_rms_norm=true (a norm inside every "
                           "BitLinear) is not supported by the packed engine")  # fmt: skip
    skip = [m for m in (qc.get("modules_to_not_convert") or []) if "lm_head" not in str(m)]
    if skip:
        raise MulfreeError(f"{where}: quantization_config modules_to_not_convert={skip} keeps "
                           "decoder projections in float: not supported by the packed engine")  # fmt: skip
    return layout


def bitnet_config(raw: dict, layout: BitNetLayout, where):
    """transformers' BitNetConfig for `raw` (a Llama config is mapped field by field: the packed
    engine runs both as one family, Llama without sub-norms), checked for what the engine runs."""
    from transformers import BitNetConfig, LlamaConfig

    cls = BitNetConfig if layout.model_type == "bitnet" else LlamaConfig
    body = {k: v for k, v in raw.items() if k not in ("quantization_config", "architectures")}
    try:
        src = cls(**body)
    except (TypeError, ValueError, KeyError) as e:
        raise MulfreeError(f"{where}: bad {layout.model_type} config: {first_line(e)}") from None
    d, h = src.hidden_size, src.num_attention_heads
    kv = src.num_key_value_heads or h
    for name, v in (("vocab_size", src.vocab_size), ("hidden_size", d), ("intermediate_size",
                    src.intermediate_size), ("num_hidden_layers", src.num_hidden_layers),
                    ("num_attention_heads", h), ("num_key_value_heads", kv),
                    ("max_position_embeddings", src.max_position_embeddings)):  # fmt: skip
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 24:
            raise MulfreeError(f"{where}: config {name}={v!r} is not a positive integer")
    if d % h or h % kv:
        raise MulfreeError(f"{where}: hidden_size {d} / num_attention_heads {h} / "
                           f"num_key_value_heads {kv} do not divide")  # fmt: skip
    head_dim = getattr(src, "head_dim", None)
    if head_dim not in (None, d // h):
        raise MulfreeError(f"{where}: head_dim {head_dim} != hidden_size / num_attention_heads")
    if (d // h) % 2:
        raise MulfreeError(f"{where}: head dimension {d // h} is odd (RoPE rotates pairs)")
    if src.hidden_act not in HIDDEN_ACTS:
        raise MulfreeError(
            f"{where}: hidden_act {src.hidden_act!r} is not one of {', '.join(HIDDEN_ACTS)}"
        )
    if getattr(src, "attention_bias", False) or getattr(src, "mlp_bias", False):
        raise MulfreeError(f"{where}: biased projections are not supported by the packed engine")
    rope = src.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise MulfreeError(
            f"{where}: rope_type {rope.get('rope_type')!r} is not supported (default RoPE only)"
        )
    out = BitNetConfig(
        vocab_size=src.vocab_size, hidden_size=d, intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers, num_attention_heads=h, num_key_value_heads=kv,
        hidden_act=src.hidden_act, max_position_embeddings=src.max_position_embeddings,
        rms_norm_eps=float(src.rms_norm_eps), bos_token_id=src.bos_token_id,
        eos_token_id=src.eos_token_id, pad_token_id=src.pad_token_id,
        tie_word_embeddings=bool(src.tie_word_embeddings), rope_parameters=dict(rope),
    )  # fmt: skip
    return out


def projection_shapes(cfg) -> dict[str, tuple[int, int]]:
    """[out, in] of each ternary projection (PROJECTIONS) for a BitNetConfig."""
    d, i = cfg.hidden_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return {
        "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q), "mlp.gate_proj": (i, d), "mlp.up_proj": (i, d),
        "mlp.down_proj": (d, i),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint directory
# ---------------------------------------------------------------------------------------------
class BitNetCheckpoint:
    """The tensors of an official-layout checkpoint directory, read one at a time.

    `BitNetCheckpoint(dir)` reads config.json (layout + BitNetConfig); `ternary(name)` gives a
    projection as (q int8 [N, K], scale float32 0-d) with w = q / scale; `tensor(key)` a float
    tensor (norms, embeddings, head). Shapes are checked against the config.
    """

    def __init__(self, src: str | Path, raw: dict | None = None):
        self.src = Path(src)
        if raw is None:
            cfg_file = self.src / "config.json"
            try:
                raw = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as e:
                raise MulfreeError(f"cannot read {cfg_file}: {first_line(e)}") from None
        if not isinstance(raw, dict):
            raise MulfreeError(f"{self.src}/config.json is not a JSON object")
        self.layout = parse_layout(raw, self.src)
        self.config = bitnet_config(raw, self.layout, self.src)
        self.shapes = projection_shapes(self.config)
        files = sorted(self.src.glob("*.safetensors"))
        if not files:
            raise MulfreeError(
                f"no .safetensors weights in {self.src} (only safetensors checkpoints are read)"
            )
        self._files = TensorFiles(files, self.src)

    def keys(self) -> set[str]:
        return self._files.keys()

    def has(self, key: str) -> bool:
        return key in self._files

    def raw(self, key: str) -> torch.Tensor:
        return self._files.get(key)

    def tensor(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A float tensor as float32, finite, of `shape` when given."""
        t = self.raw(key)
        if not t.is_floating_point():
            raise MulfreeError(f"{self.src}: tensor {key} is {t.dtype}, expected a float tensor")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise MulfreeError(f"{self.src}: shape mismatch for {key}: checkpoint has {tuple(t.shape)}, "
                               f"the config implies {tuple(shape)}")  # fmt: skip
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise MulfreeError(f"{self.src}: tensor {key} holds non-finite values (NaN or inf)")
        return t

    def _scale(self, key: str) -> float:
        if not self.has(key):
            raise MulfreeError(f"{self.src}: missing {key} (an offline bitnet checkpoint has a "
                               "weight_scale per projection)")  # fmt: skip
        s = self.raw(key)
        if not s.is_floating_point() or s.numel() != 1:
            raise MulfreeError(
                f"{self.src}: {key} must be one float, got {tuple(s.shape)} {s.dtype}"
            )
        v = float(s.float().reshape(()))
        if not (v > 0 and v < float("inf")):
            raise MulfreeError(f"{self.src}: {key} = {v} is not a positive finite scale")
        return v

    def ternary(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection `name` (e.g. "model.layers.0.self_attn.q_proj") -> (q int8 [N, K], scale)."""
        from mulfree.ternary.quant import weight_quant_ternary

        n, k = self.shapes[name.split(".", 3)[3]]
        key = f"{name}.weight"
        w = self.raw(key)
        lay = self.layout
        if lay.linear_class == "autobitlinear" and lay.quantization_mode == "online":
            if not w.is_floating_point() or tuple(w.shape) != (n, k):
                raise MulfreeError(f"{self.src}: shape mismatch for {key}: checkpoint has {tuple(w.shape)} "
                                   f"{w.dtype}, master weights of the config are ({n}, {k}) float")  # fmt: skip
            w = self.tensor(key)
            q, scale = weight_quant_ternary(w)  # absmean in float32, as training's WeightQuant
            return q, scale
        if w.dtype == torch.uint8:
            if n % VALUES_PER_BYTE or tuple(w.shape) != (n // VALUES_PER_BYTE, k):
                raise MulfreeError(f"{self.src}: packed tensor {key} has shape {tuple(w.shape)}, the "
                                   f"config implies ({n // VALUES_PER_BYTE}, {k}) uint8 (4 ternary rows per byte)")  # fmt: skip
            try:
                q = unpack_official(w)
            except MulfreeError as e:
                raise MulfreeError(f"{self.src}: {key}: {e}") from None
        elif lay.linear_class == "autobitlinear" and w.is_floating_point():
            if tuple(w.shape) != (n, k):
                raise MulfreeError(f"{self.src}: shape mismatch for {key}: checkpoint has {tuple(w.shape)}, "
                                   f"the config implies ({n}, {k})")  # fmt: skip
            wf = w.float()
            q = wf.round()
            if not bool((q == wf).all()) or bool((q.abs() > 1).any()):
                raise MulfreeError(f"{self.src}: {key} holds values outside {{-1, 0, 1}} (offline "
                                   "autobitlinear weights are ternary)")  # fmt: skip
            q = q.to(torch.int8)
        else:
            raise MulfreeError(f"{self.src}: {key} is {w.dtype} {tuple(w.shape)}; a bitlinear checkpoint "
                               f"stores packed uint8 ({n // VALUES_PER_BYTE}, {k})")  # fmt: skip
        ws = self._scale(f"{name}.weight_scale")
        # bitlinear divides the output by weight_scale, autobitlinear multiplies by it
        scale = ws if lay.linear_class == "bitlinear" else 1.0 / ws
        return q, torch.tensor(scale, dtype=torch.float32)

    def close(self) -> None:
        self._files.close()
