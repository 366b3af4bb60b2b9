"""Transformer++ baseline presets: matched width, depth, GLU width and parameters."""

import pytest
import torch
from transformers import LlamaForCausalLM

from mulfree.errors import MulfreeError
from mulfree.models import (
    HGRNBitConfig,
    HGRNBitForCausalLM,
    build_transformerpp,
    transformerpp_config,
)

# Matched shapes differ only in norm vectors (and MatMul-free's lower bounds): under 1 %.
PARAM_MATCH_RTOL = 0.01


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "mini", "small", "370M", "1.3B", "2.7B"])
def test_transformerpp_matches_mmfree_preset(name):
    llama_cfg = transformerpp_config(name)
    mm_cfg = HGRNBitConfig.from_name(name)
    assert (
        llama_cfg.hidden_size,
        llama_cfg.num_hidden_layers,
        llama_cfg.intermediate_size,
        llama_cfg.vocab_size,
    ) == (
        mm_cfg.hidden_size,
        mm_cfg.num_hidden_layers,
        mm_cfg.mlp_intermediate_size,
        mm_cfg.vocab_size,
    )
    assert llama_cfg.hidden_size // llama_cfg.num_attention_heads == min(64, llama_cfg.hidden_size)
    with torch.device("meta"):
        a, b = n_params(LlamaForCausalLM(llama_cfg)), n_params(HGRNBitForCausalLM(mm_cfg))
    assert abs(a - b) / b < PARAM_MATCH_RTOL, (a, b)


def test_overrides_reach_both_shapes():
    cfg = transformerpp_config("tiny", vocab_size=1234, rope_theta=5e5)
    assert cfg.vocab_size == 1234
    assert cfg.rope_parameters["rope_theta"] == 5e5


def test_build_runs_forward_and_loss():
    torch.manual_seed(0)
    model = build_transformerpp("tiny", vocab_size=300)
    ids = torch.randint(0, 300, (2, 10))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 10, 300) and torch.isfinite(out.loss)


def test_unknown_preset():
    with pytest.raises(MulfreeError, match="unknown preset 'huge'"):
        transformerpp_config("huge")


def test_saved_transformerpp_loads_through_load_causal_lm(tmp_path):
    from mulfree.models import load_causal_lm

    torch.manual_seed(1)
    model = build_transformerpp("tiny", vocab_size=300).eval()
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path).eval()
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
