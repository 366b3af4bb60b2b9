"""apply_lmul_ on tiny Llama / Mistral / Qwen 2 / Qwen 3 / Gemma 2 / Gemma 3 / GPT-OSS models.

- kind="exact" is eager attention bit for bit: prefill, padded batches, cached decoding.
- With L-Mul (and fp8) on, cached decoding equals a full forward with the same attention: the
  decode-vs-full gap is float round-off (DECODE_ATOL), far below the L-Mul-vs-exact gap.
- L-Mul really runs (outputs change by more than MIN_EFFECT) in prefill and in decoding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mulfree.attention import LMulConfig, LMulLinear, apply_lmul_, lmul_config_of, remove_lmul_
from mulfree.errors import MulfreeError
from mulfree.models.hf_compat import cache_kwargs, output_cache
from tests._tolerances import FP32_LOGITS
from tests.attention.models import FAMILIES, VOCAB, gemma2_softcap

# Cached decoding vs a full forward: the non-attention matmuls see other shapes (BLAS may sum in
# another order) and softmax reduces over rows of another length: float32 round-off only.
DECODE_ATOL = FP32_LOGITS.atol
# L-Mul / fp8 / bf16 attention must move logits by at least this much on these models (their
# attention is peaked, see models._build); a silent fallback to exact attention moves them by 0.
MIN_EFFECT = 1e-4

T_PREFILL, T_TOTAL = 5, 11  # decoding runs past the sliding windows (4) of the tiny models


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, T_TOTAL), generator=g)


def _full(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw).logits


def _decode(model, x):
    """Prefill T_PREFILL tokens, then feed the rest one by one through the KV cache."""
    with torch.no_grad():
        out = model(x[:, :T_PREFILL], use_cache=True)
        cache, logits = output_cache(out), [out.logits]
        for t in range(T_PREFILL, x.shape[1]):
            out = model(x[:, t : t + 1], **cache_kwargs(cache), use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exact_kind_equals_eager_bit_for_bit(family, tokens):
    model = FAMILIES[family]()
    ref_full = _full(model, tokens)
    ref_dec = _decode(model, tokens)
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0  # left padding in the second row
    ref_pad = _full(model, tokens, attention_mask=mask)
    apply_lmul_(model, LMulConfig(kind="exact"))
    assert model.config._attn_implementation == "mulfree_exact"
    assert torch.equal(_full(model, tokens), ref_full)
    assert torch.equal(_decode(model, tokens), ref_dec)
    assert torch.equal(_full(model, tokens, attention_mask=mask), ref_pad)


LMUL_CONFIGS = {
    "lmul-k3": LMulConfig(mantissa_bits=3),
    "lmul-full": LMulConfig(),
    "fp8-e4m3": LMulConfig(kind="fp8_e4m3"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", list(LMUL_CONFIGS))
def test_cached_decoding_equals_full_forward(family, name, tokens):
    model = FAMILIES[family]()
    exact = _full(model, tokens)
    exact_dec = _decode(model, tokens)
    apply_lmul_(model, LMUL_CONFIGS[name])
    full = _full(model, tokens)
    dec = _decode(model, tokens)
    torch.testing.assert_close(dec, full, rtol=0, atol=DECODE_ATOL)
    # Both paths really use the configured attention, in prefill and in the decoded positions.
    assert (full - exact).abs().max() > MIN_EFFECT
    assert (dec[:, T_PREFILL:] - exact_dec[:, T_PREFILL:]).abs().max() > MIN_EFFECT


@pytest.mark.parametrize(
    "cfg",
    [
        LMulConfig(mantissa_bits=2),
        LMulConfig(mantissa_bits=4),
        LMulConfig(mantissa_bits=3, mode="eq1"),
        LMulConfig(mantissa_bits=3, dtype="bfloat16"),
        LMulConfig(mantissa_bits=3, acc_dtype="bfloat16"),
        LMulConfig(kind="fp8_e5m2"),
        LMulConfig(kind="fp8_e4m3", fp8_scaling="per_tensor"),
        LMulConfig(kind="exact", dtype="bfloat16"),
    ],
    ids=lambda c: c.name,
)
def test_every_config_changes_outputs(cfg, tokens):
    model = FAMILIES["llama"]()
    exact = _full(model, tokens)
    apply_lmul_(model, cfg)
    assert model.config._attn_implementation == cfg.name
    assert (_full(model, tokens) - exact).abs().max() > MIN_EFFECT


def test_fewer_mantissa_bits_mean_larger_error(tokens):
    model = FAMILIES["llama"]()
    exact = _full(model, tokens)
    err = {}
    for k in (2, 4, None):
        apply_lmul_(model, LMulConfig(mantissa_bits=k))
        err[k] = (_full(model, tokens) - exact).abs().mean().item()
    assert err[2] > err[4] > err[None] > 0


def test_softcapping_path_is_taken(tokens):
    """Gemma 2's softcap kwarg is applied: with it exact == eager, and the cap matters."""
    capped, uncapped = gemma2_softcap(2.0), gemma2_softcap(None)
    assert not torch.equal(_full(capped, tokens), _full(uncapped, tokens))
    ref = _full(capped, tokens)
    apply_lmul_(capped, LMulConfig(kind="exact"))
    assert torch.equal(_full(capped, tokens), ref)


def test_sliding_window_is_masked(tokens):
    """Past the window, a key outside it must not matter: change the first token only."""
    from tests.attention.models import mistral_sliding

    model = mistral_sliding()  # window 4 on both layers: position t sees t-3..t per layer
    apply_lmul_(model, LMulConfig(mantissa_bits=3))
    x2 = tokens.clone()
    x2[:, 0] = (x2[:, 0] + 1) % VOCAB
    a, b = _full(model, tokens), _full(model, x2)
    # Two layers of window 4 reach back 6 positions: position 10 cannot see position 0.
    assert torch.equal(a[:, 7:], b[:, 7:])
    assert not torch.equal(a[:, :4], b[:, :4])


def test_remove_restores_model(tokens):
    model = FAMILIES["gemma3-sliding-mqa"]()
    ref = _full(model, tokens)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    apply_lmul_(model, LMulConfig(mantissa_bits=3, linear=True))
    assert lmul_config_of(model) == LMulConfig(mantissa_bits=3, linear=True)
    n_lmul = sum(isinstance(m, LMulLinear) for m in model.modules())
    assert n_lmul == linears - 1  # every linear layer but lm_head
    apply_lmul_(model, LMulConfig(mantissa_bits=2))  # re-applying replaces the config
    assert not any(isinstance(m, LMulLinear) for m in model.modules())
    remove_lmul_(model)
    assert model.config._attn_implementation == "eager"
    assert lmul_config_of(model) is None
    assert sum(type(m) is nn.Linear for m in model.modules()) == linears
    assert torch.equal(_full(model, tokens), ref)


def test_lmul_linear_is_lmatmul_of_the_shared_weight():
    from mulfree.lmul import lmatmul

    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    wrapped = LMulLinear(lin, LMulConfig(mantissa_bits=3))
    assert wrapped.weight is lin.weight and wrapped.bias is lin.bias
    x = torch.randn(2, 3, 20)
    want = lmatmul(x.reshape(6, 20), lin.weight.t(), mantissa_bits=3) + lin.bias
    assert torch.equal(wrapped(x), want.reshape(2, 3, 7))


def test_linear_mode_decodes_like_full_forward(tokens):
    model = FAMILIES["qwen3"]()
    exact = _full(model, tokens)
    apply_lmul_(model, LMulConfig(mantissa_bits=3, linear=True))
    full = _full(model, tokens)
    torch.testing.assert_close(_decode(model, tokens), full, rtol=0, atol=DECODE_ATOL)
    assert (full - exact).abs().max() > MIN_EFFECT


def test_gradients_flow_through_lmul_attention(tokens):
    model = FAMILIES["llama"]()
    apply_lmul_(model, LMulConfig(mantissa_bits=3))
    model.train()
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    g = model.model.layers[0].self_attn.q_proj.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_registered_name_loads_with_from_pretrained(tmp_path, tokens):
    from transformers import AutoModelForCausalLM

    from mulfree.attention import register_attention

    model = FAMILIES["llama"]()
    cfg = LMulConfig(mantissa_bits=4)
    apply_lmul_(model, cfg)
    want = _full(model, tokens)
    remove_lmul_(model)
    model.save_pretrained(tmp_path)
    name = register_attention(cfg)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=name).eval()
    assert torch.equal(_full(loaded, tokens), want)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="int8"), "kind must be one of"),
        (dict(mantissa_bits=5), "mantissa_bits must be 2, 3, 4 or None"),
        (dict(mantissa_bits=True), "mantissa_bits must be"),
        (dict(mode="fast"), "mode must be one of"),
        (dict(kind="fp8_e4m3", mantissa_bits=3), "applies to kind 'lmul' only"),
        (dict(kind="exact", linear=True), "linear=True applies to kind 'lmul' only"),
        (dict(kind="fp8_e5m2", dtype="bfloat16"), "dtype does not apply"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(acc_dtype="float16"), "acc_dtype must be one of"),
        (dict(fp8_scaling="per_block"), "fp8_scaling must be one of"),
        (dict(linear_skip="lm_head"), "linear_skip must be a tuple"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(MulfreeError, match=message):
        LMulConfig(**kwargs)


def test_config_accepts_torch_dtypes_and_names_are_stable():
    a = LMulConfig(mantissa_bits=3, dtype=torch.bfloat16, acc_dtype=torch.float32)
    b = LMulConfig(mantissa_bits=3, dtype="bf16")
    assert a == b and a.name == b.name == "mulfree_lmul_k3_int_accfloat32_bfloat16"


def test_model_without_attention_interface_is_refused():
    from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

    mmfree = HGRNBitForCausalLM(HGRNBitConfig.from_name("tiny", vocab_size=64, num_hidden_layers=1))
    with pytest.raises(MulfreeError, match="no attention layers that use transformers' Attention"):
        apply_lmul_(mmfree, LMulConfig())
    with pytest.raises(MulfreeError, match="not a transformers PreTrainedModel"):
        apply_lmul_(nn.Linear(2, 2), LMulConfig())
    with pytest.raises(MulfreeError, match="apply_lmul_ takes an LMulConfig"):
        apply_lmul_(FAMILIES["llama"](), {"kind": "lmul"})
    with pytest.raises(MulfreeError, match="apply_lmul_ was not applied"):
        remove_lmul_(FAMILIES["llama"]())


def test_public_api_is_exported():
    import mulfree

    assert mulfree.apply_lmul_ is apply_lmul_
    assert mulfree.remove_lmul_ is remove_lmul_
    assert mulfree.LMulConfig is LMulConfig
