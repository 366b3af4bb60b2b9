"""Transformer++ baseline: transformers' LlamaForCausalLM (RoPE, SwiGLU, RMSNorm) shaped like a
MatMul-free preset, for side-by-side training.

Matching rule: same width d, depth L, GLU width I and vocabulary as the MatMul-free config. Per
layer both then hold 4 d^2 token-mixer weights (q, k, v, o vs i, f, g, o) and 3 d I channel-mixer
weights, so total parameters agree up to norm vectors (< 1 %). Heads are d / 64 (head_dim 64,
the Llama convention), at least 1.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from mulfree.errors import MulfreeError
from mulfree.models.mmfree.configuration_mmfree import PRESETS, HGRNBitConfig

HEAD_DIM = 64


def transformerpp_config_for(mmfree: HGRNBitConfig, **overrides) -> LlamaConfig:
    """The LlamaConfig matched in width, depth, GLU width and vocabulary to a MatMul-free config."""
    d = mmfree.hidden_size
    heads = max(1, d // HEAD_DIM)
    if d % heads:
        raise MulfreeError(f"Transformer++: hidden_size {d} is not divisible into {heads} heads")
    kw = dict(
        vocab_size=mmfree.vocab_size,
        hidden_size=d,
        intermediate_size=mmfree.mlp_intermediate_size,
        num_hidden_layers=mmfree.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=mmfree.max_position_embeddings,
        rms_norm_eps=mmfree.rms_norm_eps,
        initializer_range=mmfree.initializer_range,
        tie_word_embeddings=mmfree.tie_word_embeddings,
        pad_token_id=mmfree.pad_token_id,
        bos_token_id=mmfree.bos_token_id,
        eos_token_id=mmfree.eos_token_id,
        attention_bias=False,
        mlp_bias=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def transformerpp_config(name: str, **overrides) -> LlamaConfig:
    """The Transformer++ matched to MatMul-free preset `name` ("370M", "1.3B", "2.7B", "tiny", ...).

    `overrides` apply to both shapes' shared fields (e.g. vocab_size) before matching.
    """
    if name not in PRESETS:
        raise MulfreeError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    shared = {k: v for k, v in overrides.items() if k in HGRNBitConfig.__dataclass_fields__}
    rest = {k: v for k, v in overrides.items() if k not in shared}
    return transformerpp_config_for(HGRNBitConfig.from_name(name, **shared), **rest)


def build_transformerpp(name: str, **overrides) -> LlamaForCausalLM:
    """A randomly initialised Transformer++ for preset `name` (see `transformerpp_config`)."""
    return LlamaForCausalLM(transformerpp_config(name, **overrides))
