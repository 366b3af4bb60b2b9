"""ternary_linear / PackedTernaryLinear against BitLinear's fake-quant forward, on every path."""

import pytest
import torch
import torch.nn.functional as F

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.ternary.bitlinear import BitLinear
from mulfree.ternary.packed_linear import (
    PackedTernaryLinear,
    ternary_linear,
    ternary_linear_torch,
)
from mulfree.ternary.packing import PackedTernary
from mulfree.ternary.quant import act_fake_quant, act_quant_int8, weight_fake_quant

PATHS = kernels.available_isas()  # "torch" plus every compiled level this CPU runs
FP32_EPS = 2.0**-24


def _fake_quant_reference(x, w, bias=None):
    """BitLinear's forward value (without its input norm): the spec of ternary_linear."""
    return F.linear(act_fake_quant(x), weight_fake_quant(w), bias)


def _tolerance(x, packed):
    """Per-output bound of the reference's own fp32 rounding (module docstring):
    (K + 2) * 2^-24 * sum_k |x_fq[k] w_fq[k]|."""
    q_x, s_x = act_quant_int8(x.reshape(-1, x.shape[-1]))
    mag = F.linear(q_x.float().abs(), packed.unpack().float().abs()) / (s_x * packed.scale)
    return (packed.in_features + 2) * FP32_EPS * mag + 1e-30


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "lead,n,k", [((1,), 33, 50), ((8,), 64, 517), ((2, 3), 100, 1040), ((5,), 1, 7)], ids=str
)
def test_equals_bitlinear_fake_quant_forward(path, lead, n, k):
    torch.manual_seed(n + k)
    w = torch.randn(n, k) * 0.02
    x = torch.randn(*lead, k)
    packed = PackedTernary.from_float(w)
    y = ternary_linear(x, packed, isa=path)
    ref = _fake_quant_reference(x, w)
    assert y.shape == (*lead, n) and y.dtype == x.dtype
    err = (y - ref).abs().reshape(-1, n)
    assert bool((err <= _tolerance(x, packed)).all()), err.max()


@pytest.mark.parametrize("threads", [1, 2])
def test_all_paths_are_bit_identical(threads):
    torch.manual_seed(1)
    w = torch.randn(70, 300)
    packed = PackedTernary.from_float(w)
    for m in (1, 8):
        x = torch.randn(m, 300)
        ref = ternary_linear_torch(x, packed)
        for path in PATHS:
            assert torch.equal(ternary_linear(x, packed, isa=path, threads=threads), ref), path


@pytest.mark.parametrize("path", PATHS)
def test_module_from_bitlinear_equals_bitlinear(path):
    torch.manual_seed(2)
    bl = BitLinear(96, 40, bias=True)
    with torch.no_grad():
        bl.norm.weight.uniform_(0.5, 1.5)
        bl.bias.normal_()
    layer = PackedTernaryLinear.from_bitlinear(bl)
    x = torch.randn(4, 7, 96)
    with torch.no_grad():
        ref = bl(x)
    with kernels.use_isa(path):
        y = layer(x)
    xn = bl.norm(x).detach()
    tol = _tolerance(xn, layer.packed()).reshape(4, 7, 40) + 4 * FP32_EPS * bl.bias.abs().detach()
    assert bool(((y - ref).abs() <= tol).all())


def test_module_from_float_tq1_and_state_dict_round_trip():
    torch.manual_seed(3)
    w, b = torch.randn(50, 81), torch.randn(50)
    a = PackedTernaryLinear.from_float(w, b)
    b1 = PackedTernaryLinear.from_packed(PackedTernary.from_float(w, "tq1"), b)
    x = torch.randn(3, 81)
    assert torch.equal(a(x), b1(x))
    c = PackedTernaryLinear(81, 50)
    assert not torch.equal(c(x), a(x))
    c.load_state_dict(a.state_dict())
    assert torch.equal(c(x), a(x))  # in-place buffer updates are picked up
    assert set(a.state_dict()) == {"weight_packed", "weight_scale", "bias"}


def test_other_dtypes_quantize_from_fp32_value():
    torch.manual_seed(4)
    layer = PackedTernaryLinear.from_float(torch.randn(20, 64), bias=None)
    x = torch.randn(2, 64).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ternary_linear_torch(x.float(), layer.packed()).to(torch.bfloat16))


def test_shape_mismatch_is_one_clear_error():
    layer = PackedTernaryLinear.from_float(torch.randn(8, 16))
    with pytest.raises(MulfreeError, match="x has 15 features, weight expects 16"):
        layer(torch.randn(2, 15))
    with pytest.raises(MulfreeError, match="runs on the CPU"):
        layer(torch.randn(2, 16, device="meta"))


def test_empty_batch():
    layer = PackedTernaryLinear.from_float(torch.randn(8, 16))
    for path in PATHS:
        assert ternary_linear(torch.randn(0, 16), layer.packed(), isa=path).shape == (0, 8)


@pytest.mark.parametrize("path", [p for p in PATHS if p != "torch"])
def test_fused_rows_equal_separate_layers(path):
    """q/k/v-style fusion: one call over stacked weights with per-row scales equals the
    separate calls bit for bit."""
    from mulfree.kernels import ternary as KT
    from mulfree.ternary.packing import fuse_rows

    torch.manual_seed(5)
    parts = [
        PackedTernary.from_float(torch.randn(n, 200) * s) for n, s in ((64, 1), (32, 3), (96, 0.1))
    ]
    data, row_scales = fuse_rows(parts)
    x = torch.randn(3, 200)
    y = KT.tq2_linear(x, data, 192, 1.0, threads=2, isa=path, row_scales=row_scales)
    assert torch.equal(y, torch.cat([ternary_linear(x, p, isa=path) for p in parts], dim=1))
    with pytest.raises(MulfreeError, match="multiple of 32"):
        fuse_rows([PackedTernary.from_float(torch.randn(33, 200))])
