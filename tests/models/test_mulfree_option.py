"""The fully multiplication-free option (elementwise_mul="lmul") of the MatMul-free model."""

import torch
from tests._tolerances import assert_close_through_int8
from torch import nn

from mulfree.energy import EnergyCounter
from mulfree.models.hf_compat import cache_kwargs
from mulfree.models.mmfree import HGRNBitCache, HGRNBitConfig, HGRNBitForCausalLM
from mulfree.models.mmfree.modeling_mmfree import HGRNBitAttention, HGRNBitMLP
from mulfree.ternary.bitlinear import BitLinear


def _cfg(**kw):
    return HGRNBitConfig(
        hidden_size=64, num_hidden_layers=2, vocab_size=96, intermediate_size=128, **kw
    )


class _ShapeOnly(nn.Module):
    """Stands in for a projection without any arithmetic: tiles/slices x to the output width."""

    def __init__(self, out_features):
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        reps = -(-self.out_features // x.shape[-1])
        return torch.cat([x] * reps, -1)[..., : self.out_features]


def _strip_projections(module):
    for name, child in list(module.named_children()):
        if isinstance(child, BitLinear):
            setattr(module, name, _ShapeOnly(child.out_features))


def _mixer_counts(kind):
    torch.manual_seed(0)
    model = HGRNBitForCausalLM(_cfg(elementwise_mul=kind, elementwise_mul_bits=3)).eval()
    layer = model.model.layers[1]  # the second layer uses the learned lower bound
    attn, mlp = layer.attn, layer.mlp
    assert isinstance(attn, HGRNBitAttention) and isinstance(mlp, HGRNBitMLP)
    _strip_projections(attn)
    _strip_projections(mlp)
    x = torch.randn(2, 5, 64)
    lb = torch.full((64,), 0.25)
    with torch.no_grad(), EnergyCounter() as c:
        layer.attn_norm(x)
        attn(x, lower_bound=lb)
        mlp(layer.mlp_norm(x))
    return c


def test_mixers_run_no_float_multiply():
    c = _mixer_counts("lmul")
    assert c.total("fp_mul") == 0, dict(c.counts)
    assert c.total("lmul") > 0
    exact = _mixer_counts("exact")  # the same code in exact mode does multiply
    assert exact.total("fp_mul") > 0 and exact.total("lmul") == 0


def test_lmul_changes_outputs_and_survives_save_load(tmp_path):
    torch.manual_seed(1)
    model = HGRNBitForCausalLM(_cfg()).eval()
    ids = torch.randint(0, 96, (1, 9))
    exact = model(ids).logits
    model.set_elementwise_mul("lmul", 3)
    lm = model(ids).logits
    assert not torch.equal(exact, lm)
    assert (exact - lm).abs().max() < 0.5 * exact.abs().max()  # an approximation, not noise
    model.save_pretrained(tmp_path)
    again = HGRNBitForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.elementwise_mul == "lmul" and again.config.elementwise_mul_bits == 3
    assert torch.equal(again(ids).logits, lm)


def test_cached_decoding_equals_full_forward():
    torch.manual_seed(2)
    model = HGRNBitForCausalLM(_cfg(elementwise_mul="lmul")).eval()
    ids = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        full = model(ids).logits
        cache = HGRNBitCache(model.config)
        steps = [
            model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits for t in range(7)
        ]
    # Not bit equality: BitLinear's float F.linear sums in another order for 1 row than for 7
    # (~1e-7), which can flip one int8 activation rounding downstream; L-Mul runs in float32 only,
    # so the comparison is through int8 (tests/_tolerances.py). The L-Mul recurrence itself is the
    # same loop in both cases.
    assert_close_through_int8(torch.cat(steps, 1), full)


def test_trains_with_lmul_gradients():
    torch.manual_seed(3)
    model = HGRNBitForCausalLM(_cfg(elementwise_mul="lmul", elementwise_mul_bits=4))
    ids = torch.randint(0, 96, (2, 8))
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.model.layers[0].attn.i_proj.weight.grad.abs().sum() > 0
