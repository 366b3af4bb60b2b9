"""Random BitNet checkpoints written in the official layout (no real weights can be had here).

`write_random_checkpoint(dst, variant=...)` writes config.json + model.safetensors exactly as
microsoft/bitnet-b1.58-2B-4T ships them ("packed": uint8 4-per-byte + weight_scale, bfloat16
floats; `quantization_config` {quant_method: bitnet, linear_class: bitlinear, quantization_mode:
offline}), as its bf16 master-weight variant ("master": float projections, autobitlinear
online, ternarized by absmean on load), as offline autobitlinear ("autobitlinear": ternary
values times weight_scale), or as a 1.58-bit Llama ("llama": Llama's block, no sub-norms).
transformers' BitNetForCausalLM / LlamaForCausalLM load these, which makes them the reference
the packed engine is tested against; benchmarks/bench_bitnet.py writes one at the 2B4T shape.

The weights are scaled so activations keep unit size through the layers (w = q / scale with
scale = sqrt(K), the RMS of a ternary dot product of K unit inputs) and norm weights are drawn
around 1, as in a trained model; the embedding is unit normal, so logits are well separated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mulfree._io import output_dir
from mulfree.models.bitnet.layout import PROJECTIONS, pack_official, projection_shapes
from mulfree.tensorfile import WEIGHTS_FILE, write_tensors

VARIANTS = ("packed", "master", "autobitlinear", "llama")

# The 2B4T shape (its config.json), for the benchmark.
B1_58_2B_4T = dict(
    vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
    num_attention_heads=20, num_key_value_heads=5, hidden_act="relu2",
    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
    tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
)  # fmt: skip

TINY = dict(
    vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, hidden_act="relu2",
    max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)  # fmt: skip


def _quantization_config(variant: str) -> dict:
    if variant in ("packed", "llama"):
        return {
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
        }
    if variant == "master":
        return {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        }
    return {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }


def write_random_checkpoint(dst: str | Path, config: dict | None = None, *, variant: str = "packed",
                            seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                            force: bool = False) -> Path:  # fmt: skip
    """Write a random checkpoint of `config` (BitNetConfig fields; default TINY) to `dst`
    (config.json + model.safetensors), atomically. Returns dst."""
    from transformers import BitNetConfig

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    fields = dict(TINY if config is None else config)
    if variant == "llama":
        fields["hidden_act"] = "silu"
    cfg = BitNetConfig(**fields)
    g = torch.Generator().manual_seed(seed)
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    shapes = projection_shapes(cfg)
    tensors: dict[str, torch.Tensor] = {}

    def norm(n):
        return (0.5 + torch.rand(n, generator=g)).to(dtype)

    tensors["model.embed_tokens.weight"] = torch.randn(cfg.vocab_size, d, generator=g).to(dtype)
    for i in range(L):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm(d)
        tensors[p + "post_attention_layernorm.weight"] = norm(d)
        if variant != "llama":
            tensors[p + "self_attn.attn_sub_norm.weight"] = norm(d)
            tensors[p + "mlp.ffn_sub_norm.weight"] = norm(cfg.intermediate_size)
        for proj in PROJECTIONS:
            n, k = shapes[proj]
            key = p + proj
            scale = math.sqrt(k) * (0.8 + 0.4 * float(torch.rand((), generator=g)))
            if variant == "master":  # float master weights; absmean makes ~1/3 of them zero
                tensors[key + ".weight"] = (torch.randn(n, k, generator=g) / scale).to(dtype)
                continue
            q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
            if variant == "autobitlinear":  # ternary values, output times weight_scale
                tensors[key + ".weight"] = q.to(dtype)
                tensors[key + ".weight_scale"] = torch.tensor([1.0 / scale]).to(dtype)
            else:  # bitlinear: packed, output divided by weight_scale
                tensors[key + ".weight"] = pack_official(q)
                tensors[key + ".weight_scale"] = torch.tensor([scale]).to(dtype)
    tensors["model.norm.weight"] = norm(d)
    if not cfg.tie_word_embeddings:
        tensors["lm_head.weight"] = (torch.randn(cfg.vocab_size, d, generator=g) * 0.5).to(dtype)
    raw = cfg.to_dict()
    raw.pop("transformers_version", None)
    raw["quantization_config"] = _quantization_config(variant)
    raw["architectures"] = ["LlamaForCausalLM" if variant == "llama" else "BitNetForCausalLM"]
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    if variant == "llama":
        raw["model_type"] = "llama"
        raw["head_dim"] = d // cfg.num_attention_heads
        raw["mlp_bias"] = False
    dst = Path(dst)
    with output_dir(dst, force=force) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
        write_tensors(tmp / WEIGHTS_FILE, tensors, {"format": "pt"})
    return dst
