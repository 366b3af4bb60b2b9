"""BitNet b1.58 on packed ternary weights as a transformers model, and its packed-file layout.

`PackedBitNetForCausalLM` is transformers' own `BitNetForCausalLM` with every ternary projection
(q/k/v/o, gate/up/down) a `PackedBitLinear` (tq2 weights on the add-only kernels, int8 absmax
activations per token: BitLinear's rule), the head a `QuantizedHead` and the token embedding
float, int8 or int4. Everything else (RMSNorms, RoPE, GQA attention, ReLU^2 gated MLP with
`attn_sub_norm` / `ffn_sub_norm`, the KV cache, masks, `generate` batched and left-padded) is
transformers' code, so this model is the readable reference the fused decoder
(mulfree.engine.bitnet_decode) is tested against. A 1.58-bit Llama checkpoint runs as the same
model with the sub-norms replaced by identities and its own activation.

Tensors of a packed BitNet file (format.py has the shared metadata; names are this model's):
    model.layers.<i>.<proj>.weight_packed uint8 [packed_nbytes(ternary_format, N, K)]
    model.layers.<i>.<proj>.weight_scale  float32 [] (w = q / scale)
    model.layers.<i>.{input_layernorm,post_attention_layernorm}.weight float32 [D]
    model.layers.<i>.self_attn.attn_sub_norm.weight [D], .mlp.ffn_sub_norm.weight [I] (BitNet only)
    model.norm.weight float32 [D]
    lm_head.weight [V, D] in head_format float32|bfloat16|float16, or
    lm_head.weight_int8 int8 [V, D] + lm_head.weight_step float32 [V], or
    lm_head.weight_int4 uint8 [V, 16 G] + lm_head.weight_step float32 [V, G] (G = ceil(D / 32))
    model.embed_tokens.* as engine.modules' embeddings, only when the head is not tied
A tied model stores its table once (as the head) and looks tokens up in it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mulfree.engine import format as fmt
from mulfree.engine.hf import one_token_step, own_decoder, step_output
from mulfree.engine.modules import (
    Int4Embedding,
    Int8Embedding,
    PackedBitLinear,
    attach_generation_config,
    lay_out_,
    place_weights_,
)
from mulfree.errors import MulfreeError
from mulfree.models.bitnet.layout import PROJECTIONS, BitNetLayout, projection_shapes
from mulfree.models.hf_compat import cache_kwargs, one_cache
from mulfree.ternary import packing

HEAD_FORMATS = ("int8", "int4", "bfloat16", "float16", "float32")
FAMILY = "bitnet"


def _bf16_exact(step: torch.Tensor) -> torch.Tensor:
    """Steps rounded to bfloat16 values (kept as float32): the fast head kernels take bfloat16
    scales, so the stored steps are what they compute with, exactly."""
    return step.to(torch.bfloat16).float()


def quantize_head(w: torch.Tensor, head_format: str) -> dict[str, torch.Tensor]:
    """A float table [V, D] as the head tensors of `head_format` (names without `lm_head.`).

    int8: one step per row, q = round(w / step) in [-127, 127]; int4: one step per 32 entries
    of a row, q in [-7, 7] (engine.modules.Int4Embedding's layout). Steps are bfloat16 values.
    """
    w = w.detach().float()
    if head_format == "int8":
        step = _bf16_exact(w.abs().amax(dim=1).clamp_min(1e-12) / 127.0)
        q = torch.round(w / step[:, None]).clamp_(-127, 127).to(torch.int8)
        return {"weight_int8": q, "weight_step": step}
    if head_format == "int4":
        V, D = w.shape
        G = -(-D // fmt.INT4_GROUP)
        wg = F.pad(w, (0, G * fmt.INT4_GROUP - D)).reshape(V, G, fmt.INT4_GROUP)
        step = _bf16_exact(wg.abs().amax(dim=2).clamp_min(1e-12) / 7.0)  # [V, G]
        q = (torch.round(wg / step[..., None]).clamp_(-7, 7).to(torch.uint8) + 8).reshape(V, -1, 2)
        return {"weight_int4": q[..., 0] | (q[..., 1] << 4), "weight_step": step}
    return {"weight": w.to(getattr(torch, head_format))}


class QuantizedHead(nn.Module):
    """The output head (and, tied, the embedding table) stored as `head_format`.

    forward(x [..., D]) -> logits float32 [..., V]. float32 heads are an fp32 F.linear; the
    others take the activations rounded to bfloat16 (what the fast CPU kernels take:
    torch's bf16 GEMM, `_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) and return logits
    rounded to bfloat16. `reference(x)` is the readable spec of those: the decoded table in
    float32 times the bf16-rounded activations, summed in float32 (the fast path differs by
    its bf16 output rounding and summation order). `rows(ids)` decodes table rows (float32).
    """

    def __init__(self, vocab: int, dim: int, head_format: str = "int8"):
        super().__init__()
        if head_format not in HEAD_FORMATS:
            raise MulfreeError(
                f"head format must be one of {', '.join(HEAD_FORMATS)}, got {head_format!r}"
            )
        self.vocab, self.dim, self.fmt = vocab, dim, head_format
        if head_format == "int8":
            self.register_buffer("weight_int8", torch.zeros(vocab, dim, dtype=torch.int8))
            self.register_buffer("weight_step", torch.ones(vocab))
        elif head_format == "int4":
            G = -(-dim // fmt.INT4_GROUP)
            self.register_buffer(
                "weight_int4", torch.full((vocab, 16 * G), 0x88, dtype=torch.uint8)
            )
            self.register_buffer("weight_step", torch.ones(vocab, G))
        else:
            self.register_buffer(
                "weight", torch.zeros(vocab, dim, dtype=getattr(torch, head_format))
            )
        self._fast = None  # (kind, tensors) built on first use from the buffers

    @classmethod
    def from_float(cls, w: torch.Tensor, head_format: str) -> QuantizedHead:
        m = cls(w.shape[0], w.shape[1], head_format)
        for k, t in quantize_head(w, head_format).items():
            getattr(m, k).copy_(t)
        return m

    def rows(self, ids) -> torch.Tensor:
        """Table rows [..., D] float32 (the embedding lookup of a tied model)."""
        if self.fmt == "int8":
            return self.weight_int8[ids].float() * self.weight_step[ids].unsqueeze(-1)
        if self.fmt == "int4":
            return Int4Embedding.decode(self.weight_int4[ids], self.weight_step[ids], self.dim)
        return self.weight[ids].float()

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, D] this head multiplies with."""
        return self.rows(slice(None))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The spec of forward: float32 sums of decoded weights times bf16-rounded inputs."""
        if self.fmt == "float32":
            return F.linear(x.float(), self.weight)
        return F.linear(x.to(torch.bfloat16).float(), self.dequantize())

    def _prepare(self):
        """The fast kernels' operands, built once (int4: torch's packed layout, in row chunks
        so no int32 copy of the whole table is made)."""
        if self.fmt == "int8" and hasattr(torch, "_weight_int8pack_mm"):
            return "int8", (self.weight_int8, self.weight_step.to(torch.bfloat16))
        if (self.fmt == "int4" and self.dim % fmt.INT4_GROUP == 0
                and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")):  # fmt: skip
            # the kernel takes N in multiples of 16: pad rows with zero weights (code 8)
            pad = -self.vocab % 16
            codes = F.pad(self.weight_int4, (0, 0, 0, pad), value=0x88)
            steps = F.pad(self.weight_step, (0, 0, 0, pad), value=1.0)
            parts = []
            for r in range(0, codes.shape[0], 8192):
                c = codes[r : r + 8192]
                q = torch.stack((c & 15, c >> 4), dim=-1).flatten(-2).to(torch.int32)  # [n, D] q+8
                parts.append(torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 2))
            packed = torch.cat(parts)
            # [G, Vp, 2]: scale and zero per group (w = (code - 8) * scale + zero, zero = 0)
            sz = torch.stack((steps.T, torch.zeros_like(steps.T)), dim=-1)
            return "int4", (packed, sz.to(torch.bfloat16).contiguous())
        if self.fmt in ("bfloat16", "float16"):
            return "float", (self.weight,)
        if self.fmt == "float32":
            return "float32", (self.weight,)
        return "reference", ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast is None:
            self._fast = self._prepare()
        kind, ts = self._fast
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.dim)  # [M, D]
        if kind == "float32":
            y = F.linear(x2.float(), ts[0])
        elif kind == "float":
            y = F.linear(x2.to(ts[0].dtype), ts[0]).float()
        elif kind == "int8":
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), ts[0], ts[1]).float()
        elif kind == "int4":
            y = torch._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16).contiguous(), ts[0], fmt.INT4_GROUP, ts[1]
            )[:, : self.vocab].float()
        else:
            y = self.reference(x2)
        return y.reshape(*lead, self.vocab)  # [..., V]

    def _apply(self, fn, recurse=True):  # .to() / to_empty(): rebuild the fast operands
        self._fast = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.dim}, {self.vocab}, {self.fmt}"


class TiedEmbedding(nn.Module):
    """The token embedding of a tied model: rows of its head's table (not a submodule, so the
    table is stored once)."""

    def __init__(self, head: QuantizedHead):
        super().__init__()
        object.__setattr__(self, "_head", head)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self._head
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= head.vocab):
            raise MulfreeError(f"token id out of range [0, {head.vocab})")
        return head.rows(ids)


class FloatEmbedding(nn.Module):
    """A float token embedding stored in any float dtype, looked up as float32."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab, dim, dtype=dtype), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


def _bitnet_base():
    from transformers import BitNetForCausalLM

    return BitNetForCausalLM


class PackedBitNetForCausalLM(_bitnet_base()):
    """transformers' BitNetForCausalLM on packed ternary weights (inference only).

    Build with `load_packed(path)` (engine.model dispatches packed BitNet files here) or
    `from_checkpoint(dir)` (an official-layout checkpoint). `decoder()` gives the fused
    decoder of mulfree.engine.bitnet_decode.
    """

    # q|k|v and gate|up run as one kernel call each (engine.plan.choose_layouts: their layout)
    fused_projections = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

    def __init__(self, config, layout: BitNetLayout | None = None, *, embedding_format: str = "int8",
                 head_format: str = "int8"):  # fmt: skip
        super().__init__(config)
        self.layout = layout or BitNetLayout()
        tied = bool(config.tie_word_embeddings)
        if head_format not in HEAD_FORMATS:
            raise MulfreeError(f"head format must be one of {', '.join(HEAD_FORMATS)}")
        if not tied and embedding_format not in fmt.EMBEDDING_FORMATS:
            raise MulfreeError(
                f"embedding format must be one of {', '.join(fmt.EMBEDDING_FORMATS)}"
            )
        self.head_format = head_format
        self.embedding_format = head_format if tied else embedding_format
        shapes = projection_shapes(config)
        for layer in self.model.layers:
            for proj in PROJECTIONS:
                n, k = shapes[proj]
                layer.set_submodule(proj, PackedBitLinear(k, n, bias=False))
            if not self.layout.sub_norms:  # Llama: no sub-norms
                layer.self_attn.attn_sub_norm = nn.Identity()
                layer.mlp.ffn_sub_norm = nn.Identity()
        V, D = config.vocab_size, config.hidden_size
        self.lm_head = QuantizedHead(V, D, head_format)
        if tied:
            self.model.embed_tokens = TiedEmbedding(self.lm_head)
        elif embedding_format == "int8":
            self.model.embed_tokens = Int8Embedding(V, D)
        elif embedding_format == "int4":
            self.model.embed_tokens = Int4Embedding(V, D)
        else:
            self.model.embed_tokens = FloatEmbedding(V, D, getattr(torch, embedding_format))
        self.requires_grad_(False)
        self.eval()
        self._decoder = None
        self._hf_step = None  # the cached-step fast path of forward (HF generate)

    def tie_weights(self, *args, **kwargs):
        return None  # the head is its own quantized table; a tied model looks tokens up in it

    def get_output_embeddings(self):
        return None  # no float weight a caller could resize or tie

    def _init_weights(self, module):
        return None  # every tensor is loaded from a packed file

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                past_key_values=None, return_dict=None, **kwargs):  # fmt: skip
        """BitNetForCausalLM.forward; what HF `generate` runs (greedy or sampling, batched and
        left-padded) runs on the compiled step instead: the prompt (when only its last logits
        are asked for, as generate does) and every cached single-token step after it
        (engine.bitnet_decode.HFCacheStep: the engine's speed, transformers' cache kept whole,
        so any call may fall back), matching this model's own modules through int8 rounding
        (tests/engine/test_bitnet_generate.py). Anything `_cached_step_rows` does not accept
        runs transformers' code: all positions' logits, labels, hidden states or attentions
        asked for, training, no cache or another cache class, 4D masks or masks whose position
        ids disagree with the rows' real positions, L-Mul attention set by `apply_lmul_`,
        energy counting, no compiled core."""
        cache = one_cache(cache=cache, past_key_values=past_key_values)
        lengths = self._cached_step_rows(input_ids, attention_mask, position_ids, cache,
                                         inputs_embeds, labels, use_cache, logits_to_keep,
                                         kwargs)  # fmt: skip
        if lengths is not None:
            from mulfree.engine.bitnet_decode import HFCacheStep

            run = own_decoder(self, "_hf_step", lambda: HFCacheStep(self))
            past = cache.get_seq_length()
            if past == 0:  # the prompt: its real tokens (mask) per row
                keep = None if attention_mask is None else attention_mask.bool()
                logits = run.prefill(cache, input_ids, keep, lengths)
            else:
                keep = None if attention_mask is None else attention_mask[:, :past].bool()
                logits = run.step(cache, input_ids[:, 0], keep, lengths)
            return step_output(self, logits, cache, return_dict)
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
                               **cache_kwargs(cache), **kwargs)  # fmt: skip

    def _cached_step_rows(self, input_ids, attention_mask, position_ids, cache, inputs_embeds,
                          labels, use_cache, logits_to_keep, kwargs) -> list[int] | None:  # fmt: skip
        """The one predicate of the fast path: None when transformers' code runs this call, else
        per row: for a cached step (one token per row, P > 0 past positions) the number of
        the row's real past positions (the position its token is rotated to); for a prompt
        into an empty cache (only the last logits asked for) the number of its real tokens."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        from mulfree import energy
        from mulfree.engine.bitnet_decode import compiled_step_unsupported

        cfg = self.config
        if (
            not one_token_step(self, input_ids, inputs_embeds, labels, use_cache, kwargs,
                               prompt=True)
            or energy.counting()  # counted on transformers' modules (the ops it prices)
            or cfg._attn_implementation not in ("eager", "sdpa")  # exact attention only
            or compiled_step_unsupported(cfg) is not None
            or type(cache) is not DynamicCache
            or len(cache.layers) != cfg.num_hidden_layers
        ):  # fmt: skip
            return None
        (B, T), past = input_ids.shape, cache.get_seq_length()
        if past == 0:
            return self._prompt_rows(cache, B, T, attention_mask, position_ids, logits_to_keep,
                                     kwargs)  # fmt: skip
        hd = cfg.hidden_size // cfg.num_attention_heads
        want = (B, cfg.num_key_value_heads, past, hd)
        for layer in cache.layers:  # plain float32 layers holding `past` positions of every row
            if type(layer) is not DynamicLayer or not layer.is_initialized:
                return None
            for t in (layer.keys, layer.values):
                if t is None or t.dtype != torch.float32 or tuple(t.shape) != want:
                    return None
        if T != 1 or past + 1 > cfg.max_position_embeddings:
            return None
        if attention_mask is None:
            lengths = torch.full((B,), past)
        elif attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, past + 1):
            return None
        elif not bool(attention_mask[:, -1].all()):
            return None  # the new token itself masked
        else:
            lengths = attention_mask[:, :past].ne(0).sum(1)
        # the row's token sits at position `length` of its compacted row: transformers must
        # be rotating it there too (position ids from the mask; none given: the cache length)
        pos = kwargs.get("cache_position")
        if pos is not None and (pos.numel() != 1 or int(pos.reshape(-1)[0]) != past):
            return None
        if position_ids is None:
            if not bool((lengths == past).all()):
                return None
        elif tuple(position_ids.shape) != (B, 1) or not torch.equal(position_ids[:, 0].cpu(), lengths):
            return None
        return lengths.tolist()

    def _prompt_rows(self, cache, B, T, attention_mask, position_ids, logits_to_keep,
                     kwargs) -> list[int] | None:  # fmt: skip
        """`_cached_step_rows` for a prompt into an empty cache: the rows' real token counts."""
        from transformers.cache_utils import DynamicLayer

        for layer in cache.layers:  # empty plain layers (generate's fresh DynamicCache)
            if type(layer) is not DynamicLayer:
                return None
            if layer.is_initialized and (layer.keys is not None and layer.keys.numel()):
                return None
        # generate asks for the last position's logits only; all positions' logits (a scoring
        # forward) are transformers' (the compiled prefill computes the head on the last row)
        if not (logits_to_keep == 1 or (T == 1 and logits_to_keep == 0)):
            return None
        if T > self.config.max_position_embeddings:
            return None
        if attention_mask is None:
            keep = torch.ones(B, T, dtype=torch.bool)
        elif attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, T):
            return None
        else:
            keep = attention_mask.ne(0)
        if not bool(keep[:, -1].all()):
            return None  # a row whose last token is padding (right padding): its logits are a pad's
        # each row's real tokens at positions 0, 1, ... (the compacted row): what transformers
        # rotates them to with position ids from the mask; none given, positions 0..T-1
        real = keep.cumsum(1) - 1  # [B, T]
        if position_ids is None:
            if not bool(keep.all()):
                return None
        elif tuple(position_ids.shape) != (B, T) or not torch.equal(position_ids.cpu()[keep], real[keep]):
            return None
        pos = kwargs.get("cache_position")
        if pos is not None and not torch.equal(pos.reshape(-1).cpu(), torch.arange(T)):
            return None
        return keep.sum(1).tolist()

    def fused_decoder(self, **kw):
        """The fused decoder over this model's weights (mulfree.engine.bitnet_decode)."""
        from mulfree.engine.bitnet_decode import BitNetDecoder

        if self._decoder is None or kw:
            self._decoder = BitNetDecoder(self, **kw)
        return self._decoder


# ---------------------------------------------------------------------------------------------
# Packed tensors <-> model
# ---------------------------------------------------------------------------------------------
def _float_specs(config, layout: BitNetLayout) -> dict[str, tuple]:
    D, I = config.hidden_size, config.intermediate_size
    specs = {"model.norm.weight": ((D,), torch.float32)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        specs[p + "input_layernorm.weight"] = ((D,), torch.float32)
        specs[p + "post_attention_layernorm.weight"] = ((D,), torch.float32)
        if layout.sub_norms:
            specs[p + "self_attn.attn_sub_norm.weight"] = ((D,), torch.float32)
            specs[p + "mlp.ffn_sub_norm.weight"] = ((I,), torch.float32)
    return specs


def _table_specs(prefix: str, V: int, D: int, f: str) -> dict[str, tuple]:
    G = -(-D // fmt.INT4_GROUP)
    if f == "int8":
        return {
            f"{prefix}.weight_int8": ((V, D), torch.int8),
            f"{prefix}.weight_step": ((V,), torch.float32),
        }
    if f == "int4":
        return {f"{prefix}.weight_int4": ((V, 16 * G), torch.uint8),
                f"{prefix}.weight_step": ((V, G), torch.float32)}  # fmt: skip
    return {f"{prefix}.weight": ((V, D), getattr(torch, f))}


def expected_specs(config, layout: BitNetLayout, ternary_format: str, embedding_format: str,
                   head_format: str) -> dict[str, tuple]:  # fmt: skip
    """name -> (shape, dtype) of every tensor a packed BitNet file of `config` holds."""
    specs = _float_specs(config, layout)
    for i in range(config.num_hidden_layers):
        for proj, (n, k) in projection_shapes(config).items():
            name = f"model.layers.{i}.{proj}"
            specs[f"{name}.weight_packed"] = (
                (packing.packed_nbytes(ternary_format, n, k),),
                torch.uint8,
            )
            specs[f"{name}.weight_scale"] = ((), torch.float32)
    V, D = config.vocab_size, config.hidden_size
    specs.update(_table_specs("lm_head", V, D, head_format))
    if not config.tie_word_embeddings:
        specs.update(_table_specs("model.embed_tokens", V, D, embedding_format))
    return specs


def build(config, layout: BitNetLayout, tensors: dict[str, torch.Tensor], ternary_format: str,
          embedding_format: str, head_format: str) -> PackedBitNetForCausalLM:  # fmt: skip
    """A PackedBitNetForCausalLM holding `tensors` (names/shapes checked; tq1 -> tq2), its
    packed weights placed in one huge-page arena (q/k/v and gate/up back to back)."""
    fmt.check_tensors(tensors, expected_specs(config, layout, ternary_format, embedding_format,
                                              head_format), "packed bitnet tensors")  # fmt: skip
    with torch.device("meta"):
        model = PackedBitNetForCausalLM(config, layout, embedding_format=embedding_format,
                                        head_format=head_format)  # fmt: skip
    model.to_empty(device="cpu")
    shapes = projection_shapes(config)
    state = {}
    for key, t in tensors.items():
        mod, _, leaf = key.rpartition(".")
        if leaf == "weight_packed" and ternary_format != "tq2":
            n, k = shapes[mod.split(".", 3)[3]]
            t = packing.tq1_to_tq2(t, n, k)
        state[key] = t
    missing, unexpected = model.load_state_dict(state, strict=False)
    # non-persistent buffers (RoPE's inv_freq) are not in a state dict: recompute them
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise MulfreeError(
            f"packed tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    rope = model.model.rotary_emb
    inv_freq, rope.attention_scaling = rope.compute_default_rope_parameters(config)
    rope.inv_freq = inv_freq
    rope.original_inv_freq = inv_freq.clone()
    model.config._attn_implementation = "eager"  # the spec'd ops (apply_lmul_ switches it)
    place_weights_(model)
    return model


def packed_tensors_from_checkpoint(ck, ternary_format: str, embedding_format: str,
                                   head_format: str) -> dict[str, torch.Tensor]:  # fmt: skip
    """The packed file's tensors from a BitNetCheckpoint (layout.py), read one at a time."""
    cfg = ck.config
    out: dict[str, torch.Tensor] = {}
    for key, (shape, _) in _float_specs(cfg, ck.layout).items():
        out[key] = ck.tensor(key, shape).contiguous()
    for i in range(cfg.num_hidden_layers):
        for proj in PROJECTIONS:
            name = f"model.layers.{i}.{proj}"
            q, scale = ck.ternary(name)
            p = packing.PackedTernary.from_int(q, scale, ternary_format)
            out[f"{name}.weight_packed"], out[f"{name}.weight_scale"] = p.data, p.scale.clone()
    V, D = cfg.vocab_size, cfg.hidden_size
    emb = ck.tensor("model.embed_tokens.weight", (V, D))
    if cfg.tie_word_embeddings:
        head = emb
    else:
        head = ck.tensor("lm_head.weight", (V, D))
        if embedding_format in ("int8", "int4"):
            cls = Int8Embedding if embedding_format == "int8" else Int4Embedding
            codes, step = cls.quantize(emb)
            out[f"model.embed_tokens.weight_{embedding_format}"] = codes
            out["model.embed_tokens.weight_step"] = step
        else:
            out["model.embed_tokens.weight"] = emb.to(getattr(torch, embedding_format))
    for k, t in quantize_head(head, head_format).items():
        out[f"lm_head.{k}"] = t
    return out


def from_checkpoint(src, *, embedding_format: str = "float32", head_format: str = "float32"):
    """A PackedBitNetForCausalLM straight from an official-layout checkpoint directory (tq2 in
    memory; float32 tables by default, which keep the checkpoint's values exactly)."""
    from mulfree.models.bitnet.layout import BitNetCheckpoint

    ck = BitNetCheckpoint(src)
    try:
        tensors = packed_tensors_from_checkpoint(ck, "tq2", embedding_format, head_format)
    finally:
        ck.close()
    return build(ck.config, ck.layout, tensors, "tq2", embedding_format, head_format)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def file_metadata(layout: BitNetLayout, head_format: str) -> dict[str, str]:
    """The bitnet entries of a packed file's metadata (format.write_packed's `extra`)."""
    return {"bitnet_layout": layout.to_json(), "head_format": head_format}


def read_header_specs(file, meta: dict[str, str]):
    """(BitNetConfig, expected tensor specs) of a packed bitnet file, from its metadata alone."""
    from mulfree.models.bitnet.layout import bitnet_config

    raw = fmt.config_metadata(meta, file)
    config = bitnet_config({**raw, "model_type": "bitnet"}, BitNetLayout(), file)
    layout = BitNetLayout.from_json(meta.get("bitnet_layout", "{}"), file)
    tfmt, efmt, hfmt = (meta.get(k) for k in ("ternary_format", "embedding_format", "head_format"))
    if tfmt not in fmt.TERNARY_FORMATS:
        raise MulfreeError(
            f"{file}: unknown ternary_format {tfmt!r} (expected one of {fmt.TERNARY_FORMATS})"
        )
    if hfmt not in HEAD_FORMATS:
        raise MulfreeError(f"{file}: unknown head_format {hfmt!r} (expected one of {HEAD_FORMATS})")
    if efmt not in fmt.EMBEDDING_FORMATS:
        raise MulfreeError(
            f"{file}: unknown embedding_format {efmt!r} (expected one of {fmt.EMBEDDING_FORMATS})"
        )
    return config, expected_specs(config, layout, tfmt, efmt, hfmt)


def model_tensors(model: PackedBitNetForCausalLM, ternary_format: str = "tq1", head_format: str | None = None,
                  embedding_format: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The packed file's tensors of an in-memory PackedBitNetForCausalLM (re-encoding the head
    and embedding when other formats are asked for)."""
    cfg = model.config
    hfmt = head_format or model.head_format
    efmt = embedding_format or model.embedding_format
    out = {}
    for key, t in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod == "lm_head" or mod == "model.embed_tokens" or "rotary_emb" in key:
            continue
        if leaf == "weight_packed":
            m = model.get_submodule(mod)
            out[key] = m.packed().to_format(ternary_format).data
        else:
            out[key] = t.detach().float().contiguous() if t.is_floating_point() else t
    head = model.lm_head
    if hfmt == head.fmt:
        out.update({f"lm_head.{k}": t for k, t in head.state_dict().items()})
    else:
        out.update({f"lm_head.{k}": t for k, t in quantize_head(head.dequantize(), hfmt).items()})
    if not cfg.tie_word_embeddings:
        emb = model.model.embed_tokens
        if isinstance(emb, (Int8Embedding, Int4Embedding)) and emb.fmt == efmt:
            out.update({f"model.embed_tokens.{k}": t for k, t in emb.state_dict().items()})
        else:
            w = emb.dequantize() if hasattr(emb, "dequantize") else emb.weight.float()
            if efmt in ("int8", "int4"):
                cls = Int8Embedding if efmt == "int8" else Int4Embedding
                codes, step = cls.quantize(w)
                out[f"model.embed_tokens.weight_{efmt}"], out["model.embed_tokens.weight_step"] = (
                    codes,
                    step,
                )
            else:
                out["model.embed_tokens.weight"] = w.to(getattr(torch, efmt))
    return out


def config_json(config) -> str:
    return config.to_json_string(use_diff=False)


def load_packed_bitnet(path, *, verify: bool = True, layout: str = "auto",
                       isa: str | None = None) -> PackedBitNetForCausalLM:  # fmt: skip
    """Load a packed bitnet file (or its directory); one-line MulfreeErrors (format.read_packed).
    `layout`: the in-memory form of the ternary weights, as engine.model.load_packed's
    (engine.modules.lay_out_: t81 where the dispatcher measured its kernel faster at `isa`)."""
    config, tensors, meta = fmt.read_packed(path, verify=verify)
    if fmt.model_family(meta, path) != FAMILY:
        raise MulfreeError(
            f"{path} is a packed {meta.get('model_family', 'hgrn_bit')} model, not bitnet"
        )
    arch = BitNetLayout.from_json(meta["bitnet_layout"], path)
    model = build(config, arch, tensors, meta["ternary_format"], meta["embedding_format"],
                  meta["head_format"])  # fmt: skip
    del tensors
    lay_out_(model, layout, isa)  # in place: q|k|v and gate|up stay back to back
    attach_generation_config(model, fmt.weights_file(path).parent)
    return model
