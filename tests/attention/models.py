"""Tiny random-weight causal LMs of the families apply_lmul_ must handle (no network)."""

from __future__ import annotations

import torch

VOCAB = 101


def _build(config, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    # Random init gives near-uniform attention; larger q/k weights make the attention peaked,
    # so masking/softcapping/window mistakes and L-Mul errors show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
    return model


COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
)  # fmt: skip


def llama():
    from transformers import LlamaConfig

    return _build(LlamaConfig(**COMMON))


def mistral_sliding():
    from transformers import MistralConfig

    return _build(MistralConfig(**COMMON, sliding_window=4))


def qwen2():
    from transformers import Qwen2Config

    return _build(Qwen2Config(**COMMON))


def qwen3():
    from transformers import Qwen3Config

    return _build(Qwen3Config(**COMMON))


def gemma3_sliding_mqa():
    """Gemma 3 text model, one KV head (MQA), sliding window 4 on the first of two layers."""
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        **{**COMMON, "num_key_value_heads": 1},
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=8,
    )
    return _build(cfg)


def gemma2_softcap(cap: float | None = 2.0):
    """Gemma 2 passes `softcap` to the attention function (attn_logit_softcapping)."""
    from transformers import Gemma2Config

    cfg = Gemma2Config(
        **COMMON, attn_logit_softcapping=cap, final_logit_softcapping=None, sliding_window=4,
        query_pre_attn_scalar=8,
    )  # fmt: skip
    return _build(cfg)


def gpt_oss_sinks():
    """GPT-OSS: learned attention sinks (module.sinks), MoE MLP, sliding/full layers."""
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        # max_position_embeddings: the default YaRN rope (factor 32 over 4096) expects 131072.
        **{**COMMON, "intermediate_size": 32, "max_position_embeddings": 131072},
        num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    model = _build(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 2.0)  # zero-initialized otherwise
    return model


FAMILIES = {
    "llama": llama,
    "mistral-sliding": mistral_sliding,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma3-sliding-mqa": gemma3_sliding_mqa,
    "gemma2-softcap": gemma2_softcap,
    "gpt-oss-sinks": gpt_oss_sinks,
}
