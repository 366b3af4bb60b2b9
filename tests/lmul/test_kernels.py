"""The compiled L-Mul kernels (csrc/mf_lmul_ew.c, csrc/mf_lmatmul.c) equal the torch reference bit for bit, on every
ISA level this CPU has (levels it lacks are skipped, never silently downgraded)."""

import pytest
import torch

from mulfree.kernels import available_isas, use_isa
from mulfree.lmul import fast, lmatmul, lmul
from mulfree.lmul.formats import get_format
from mulfree.lmul.ops import lmatmul_reference, lmul_reference, to_bits

from .patterns import patterns_to_tensor, random_patterns

COMPILED = [isa for isa in available_isas() if isa != "torch"]
pytestmark = pytest.mark.skipif(not COMPILED, reason="compiled core mulfree._C not built")


def _same_bits(x, y):
    f = get_format(x.dtype)
    return torch.equal(to_bits(x, f), to_bits(y, f))


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"])
def test_elementwise_bitexact(isa, fmt):
    f = get_format(fmt)
    gen = torch.Generator().manual_seed(11)
    n = 20_011  # not a multiple of any vector width: the scalar tail runs too
    x = patterns_to_tensor(random_patterns(f, n, gen), f)
    y = patterns_to_tensor(random_patterns(f, n, gen), f)
    for mode in ("int", "eq1"):
        for k in sorted({1, 2, f.man_bits}):
            want = lmul_reference(x, y, f, k, mode)
            with use_isa(isa):
                got = fast.lmul_elementwise(x, y, f, k, mode)
            assert got is not None and _same_bits(got, want), (mode, k)


def test_public_lmul_uses_kernel_and_broadcasts():
    a = torch.randn(3, 1, 5)
    b = torch.randn(4, 1)
    with use_isa(COMPILED[-1]):
        got = lmul(a, b, mantissa_bits=4)
    want = lmul_reference(*torch.broadcast_tensors(a, b), get_format("float32"), 4, "int")
    assert got.shape == (3, 4, 5) and _same_bits(got, want)


def _operands(kind, bsz, m, k, n, gen):
    a = torch.randn(bsz, m, k, generator=gen)
    b = torch.randn(bsz, k, n, generator=gen)
    if kind == "zeros":  # exact zeros in both operands, whole rows/columns too
        a[a.abs() < 0.5] = 0
        b[:, : k // 3] = 0
        a[:, :1] = -0.0
    elif kind == "tiny":  # every product underflows (and flushes)
        a, b = a * 1e-20, b * 1e-20
    elif kind == "mixed_scale":  # some products underflow, others do not
        a = a * torch.pow(10.0, torch.randint(-25, 5, a.shape, generator=gen).float())
    elif kind == "huge":  # some products overflow to inf
        a, b = a * 1e20, b * 1e20
    elif kind == "specials":
        a.view(-1)[::7] = float("inf")
        b.view(-1)[::11] = float("nan")
        b.view(-1)[::13] = 0.0
        a.view(-1)[::5] = 1e-40  # subnormal: flushed to zero
    return a, b


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("kind", ["normal", "zeros", "tiny", "mixed_scale", "huge", "specials"])
@pytest.mark.parametrize(
    "shape", [(2, 37, 70, 45), (1, 1, 5, 1), (1, 6, 1, 33), (1, 13, 257, 64)], ids=str
)
def test_lmatmul_bitexact(isa, kind, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    a, b = _operands(kind, *shape, gen)
    f = get_format("float32")
    for mode, k in (("int", 23), ("int", 3), ("eq1", 23), ("eq1", 2)):
        want = lmatmul_reference(a, b, mantissa_bits=k, mode=mode)
        for route in ("auto", "full"):
            with use_isa(isa):
                got = fast.lmatmul_3d(a, b, f, k, mode, torch.float32, route=route)
            assert got is not None and _same_bits(got, want), (mode, k, route)


@pytest.mark.parametrize("isa", COMPILED)
def test_lmatmul_route_codes(isa):
    """Which fast kernel ran: 2 = no-underflow variant (every product normal: no zero operand,
    smallest magnitudes large enough), 1 = with the per-lane validity mask, 0 = full route.
    test_lmatmul_bitexact checks the bits of all three against the reference."""
    from mulfree.kernels import ISA_LEVELS
    from mulfree.kernels._core import core

    gen = torch.Generator().manual_seed(3)
    cases = {kind: _operands(kind, 1, 9, 40, 21, gen) for kind in ("normal", "zeros", "specials")}
    cases["one_tiny"] = (cases["normal"][0].clone(), cases["normal"][1].clone())
    cases["one_tiny"][0][0, 0, 0] = 1e-37  # 1e-37 * 1e-3 underflows: the mask is needed
    cases["one_tiny"][1][0, 0, 0] = 1e-3
    expect = {"normal": 2, "zeros": 1, "one_tiny": 1, "specials": 0}
    for kind, (a, b) in cases.items():
        out = torch.empty(1, a.shape[1], b.shape[2])
        code = core().lmatmul_f32(a.data_ptr(), b.data_ptr(), out.data_ptr(), 1, a.shape[1],
                                  a.shape[2], b.shape[2], 3, 0, ISA_LEVELS[isa], 1, -1)  # fmt: skip
        assert code == (expect[kind] if isa != "scalar" else 0), kind


@pytest.mark.parametrize("isa", COMPILED)
def test_lmatmul_bf16_int_mode(isa):
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 19, 40, generator=gen).bfloat16()
    b = torch.randn(3, 40, 21, generator=gen).bfloat16()
    for k in (None, 2, 4):
        want = lmatmul_reference(a, b, mantissa_bits=k)
        with use_isa(isa):
            got = lmatmul(a, b, mantissa_bits=k)
        assert _same_bits(got, want)


def test_kernel_declines_what_it_does_not_cover():
    f = get_format("bfloat16")
    a = torch.randn(1, 4, 4).bfloat16()
    assert fast.lmatmul_3d(a, a, f, 7, "eq1", torch.float32) is None  # bf16 eq1
    g = get_format("float32")
    assert fast.lmatmul_3d(a.float(), a.float(), g, 23, "int", torch.bfloat16) is None
    with use_isa("torch"):
        assert fast.lmatmul_3d(a.float(), a.float(), g, 23, "int", torch.float32) is None
        assert fast.lmul_elementwise(a, a, f, 7, "int") is None
