"""BitLinear against the official formulation, its STE gradients, and the quantize_ verb."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mulfree.errors import MulfreeError
from mulfree.ternary.bitlinear import BitLinear, TernaryConfig, quantize_
from mulfree.ternary.quant import weight_quant_ternary


def official_bitlinear(x, w, norm_w):
    """The official mmfreelm BitLinear forward value, written out independently."""
    xf = x.float()
    rstd = 1 / torch.sqrt(xf.square().mean(-1, keepdim=True) + 1e-8)
    xn = (xf * rstd * norm_w).to(x.dtype)
    s = 127.0 / xn.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    xq = (xn * s).round().clamp(-128, 127) / s
    sw = 1.0 / w.abs().mean().clamp(min=1e-5)
    wq = (w * sw).round().clamp(-1, 1) / sw
    return F.linear(xq, wq)


@pytest.mark.parametrize(
    "shape", [(3, 17), (2, 5, 64), (1, 1, 500)], ids=lambda s: "x" + "x".join(map(str, s))
)
def test_forward_equals_official_formula(shape):
    torch.manual_seed(0)
    layer = BitLinear(shape[-1], 31)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(*shape) * 3
    with torch.no_grad():
        got = layer(x)
    ref = official_bitlinear(x, layer.weight.detach(), layer.norm.weight.detach())
    # Same operations in the same order without autograd: bit-identical.
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # With autograd the STE sum x + (q - x) is q up to one float rounding per element.
    got_ste = layer(x)
    torch.testing.assert_close(got_ste, ref, rtol=1e-5, atol=1e-5)


def test_state_dict_keys_and_no_bias_by_default():
    layer = BitLinear(8, 4)
    assert set(layer.state_dict()) == {"weight", "norm.weight"}
    assert layer.weight.shape == (4, 8) and layer.norm.weight.shape == (8,)


def test_ste_gradients_pass_straight_through():
    torch.manual_seed(1)
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    gy = torch.randn(4, 8)
    layer(x).backward(gy)
    # dL/dW = gy^T x_q with x_q the quantized normed input: the quantizer is the identity for grads.
    with torch.no_grad():
        xn = layer.norm(x)
        s = 127.0 / xn.abs().amax(-1, keepdim=True).clamp_min(1e-5)
        xq = (xn * s).round().clamp(-128, 127) / s
    torch.testing.assert_close(layer.weight.grad, gy.t() @ xq, rtol=1e-5, atol=1e-6)
    # dL/dx flows through the norm with w_q in place of W.
    x2 = x.detach().clone().requires_grad_()
    q, sc = weight_quant_ternary(layer.weight.detach())
    wq = q.float() / sc
    xn2 = layer.norm(x2)
    (xn2 @ wq.t()).backward(gy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_quantize_converts_linears_and_skips_head():
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12, bias=False))
            self.lm_head = nn.Linear(12, 5)

        def forward(self, x):
            return self.lm_head(self.body(x))

    net = Net()
    w0 = net.body[0].weight
    out = quantize_(net, TernaryConfig())
    assert out is net
    assert type(net.body[0]) is BitLinear and type(net.body[2]) is BitLinear
    assert type(net.lm_head) is nn.Linear
    assert net.body[0].weight is w0 and net.body[0].bias is not None and net.body[2].bias is None
    x = torch.randn(3, 12)
    with torch.no_grad():
        h = official_bitlinear(x, net.body[0].weight, net.body[0].norm.weight) + net.body[0].bias
        ref = net.lm_head(
            official_bitlinear(torch.relu(h), net.body[2].weight, net.body[2].norm.weight)
        )
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)


def test_ternary_config_rejects_single_string():
    with pytest.raises(MulfreeError, match="tuple of patterns"):
        TernaryConfig(skip="lm_head")


def test_eval_weight_cache_tracks_weight_updates():
    torch.manual_seed(3)
    layer = BitLinear(16, 8).eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        y1 = layer(x)
        assert layer._wq_cache is not None
        torch.testing.assert_close(
            y1, official_bitlinear(x, layer.weight, layer.norm.weight), rtol=0, atol=0
        )
        layer.weight.mul_(-2.0)  # in-place update, as an optimizer step or load_state_dict does
        y2 = layer(x)
    torch.testing.assert_close(
        y2, official_bitlinear(x, layer.weight.detach(), layer.norm.weight.detach()), rtol=0, atol=0
    )
    assert not torch.equal(y1, y2)
    layer.train()
    assert layer._wq_cache is None
    with torch.no_grad():
        layer(x)
    assert layer._wq_cache is None  # training mode never caches
