"""The torch ops equal the scalar reference bit for bit.

8-bit formats are checked exhaustively (all 65,536 operand pairs, every k, both modes);
16- and 32-bit formats on 10^6 random pairs per format with special values and edge
exponents over-represented (tests/lmul/conftest.py), plus 10^5 pairs for every other k.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mulfree.lmul import reference as R
from mulfree.lmul.formats import get_format
from mulfree.lmul.ops import combine, from_bits, lmul, prepare, to_bits

from .patterns import patterns_to_tensor, random_patterns


def _torch_bits(xb, yb, f, k, mode):
    x, y = patterns_to_tensor(xb, f), patterns_to_tensor(yb, f)
    kk = f.man_bits if k is None else k
    return combine(prepare(x, f, kk), prepare(y, f, kk), f, kk, mode).to(torch.int64)


def _assert_equal_to_reference(xb, yb, f, k, mode):
    got = _torch_bits(xb, yb, f, k, mode).tolist()
    xs, ys = xb.tolist(), yb.tolist()
    bad = [
        (hex(x), hex(y), hex(g), hex(R.lmul_bits(x, y, f, mantissa_bits=k, mode=mode)))
        for x, y, g in zip(xs, ys, got, strict=True)
        if g != R.lmul_bits(x, y, f, mantissa_bits=k, mode=mode)
    ]
    assert not bad, f"{len(bad)} mismatches, first (x, y, torch, reference): {bad[:5]}"


@pytest.mark.parametrize("mode", ["int", "eq1"])
@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_exhaustive(fmt, mode):
    f = get_format(fmt)
    allbits = torch.arange(256, dtype=torch.int64)
    xb = allbits.repeat_interleave(256)
    yb = allbits.repeat(256)
    for k in range(1, f.man_bits + 1):
        _assert_equal_to_reference(xb, yb, f, k, mode)


@pytest.mark.parametrize(
    "fmt,mode,n",
    [
        ("float32", "int", 10**6),
        ("bfloat16", "int", 10**6),
        ("float16", "int", 10**6),
        ("float32", "eq1", 10**6),
        ("bfloat16", "eq1", 10**6),
        ("float16", "eq1", 10**6),
    ],
)
def test_random_full_mantissa(fmt, mode, n):
    f = get_format(fmt)
    gen = torch.Generator().manual_seed(1234 + f.bits)
    xb, yb = random_patterns(f, n, gen), random_patterns(f, n, gen)
    _assert_equal_to_reference(xb, yb, f, None, mode)
    # The sample really exercises the range edges: finite nonzero operands whose product
    # overflows to inf and underflows to zero, and NaN results.
    x, y = patterns_to_tensor(xb, f).float(), patterns_to_tensor(yb, f).float()
    out = lmul(patterns_to_tensor(xb, f), patterns_to_tensor(yb, f), mode=mode).float()
    normal = (x.abs() >= torch.finfo(f.dtype).tiny) & (y.abs() >= torch.finfo(f.dtype).tiny)
    finite = x.isfinite() & y.isfinite() & normal
    assert (finite & out.isinf()).sum() > 1000
    assert (finite & (out == 0)).sum() > 1000
    assert out.isnan().sum() > 1000


@pytest.mark.parametrize("mode", ["int", "eq1"])
@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16"])
def test_random_every_k(fmt, mode):
    f = get_format(fmt)
    gen = torch.Generator().manual_seed(99)
    ks = range(1, f.man_bits) if f.man_bits <= 10 else [1, 2, 3, 4, 5, 7, 10, 16, 22]
    for k in ks:
        xb, yb = random_patterns(f, 20_000, gen), random_patterns(f, 20_000, gen)
        _assert_equal_to_reference(xb, yb, f, k, mode)


def test_public_lmul_matches_bits_and_broadcasts():
    f = get_format("bfloat16")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 1, 6, generator=gen).to(torch.bfloat16)
    b = torch.randn(5, 1, generator=gen).to(torch.bfloat16)
    out = lmul(a, b, mantissa_bits=3)
    assert out.shape == (4, 5, 6) and out.dtype == torch.bfloat16
    ae, be = torch.broadcast_tensors(a, b)
    want = [
        R.lmul_bits(x, y, f, mantissa_bits=3)
        for x, y in zip(
            to_bits(ae, f).flatten().tolist(), to_bits(be, f).flatten().tolist(), strict=True
        )
    ]
    assert to_bits(out, f).flatten().tolist() == want


def test_bits_roundtrip():
    for name in ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"]:
        f = get_format(name)
        b = random_patterns(f, 1000, torch.Generator().manual_seed(1))
        t = patterns_to_tensor(b, f)
        assert t.dtype == f.dtype
        assert torch.equal(to_bits(t, f).to(torch.int64), b)
        assert torch.equal(to_bits(from_bits(to_bits(t, f), f), f).to(torch.int64), b)


_finite32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(x=_finite32, y=_finite32, k=st.integers(1, 23), mode=st.sampled_from(["int", "eq1"]))
def test_commutative_and_sign_symmetric(x, y, k, mode):
    f = get_format("float32")
    a = torch.tensor([x, -x, x], dtype=torch.float32)
    b = torch.tensor([y, y, -y], dtype=torch.float32)
    ab = to_bits(lmul(a, b, mantissa_bits=k, mode=mode), f).tolist()
    ba = to_bits(lmul(b, a, mantissa_bits=k, mode=mode), f).tolist()
    assert ab == ba  # commutative, bit for bit
    if ab[0] != f.nan_bits:
        # Negating either operand flips exactly the sign bit of the result.
        assert ab[1] == ab[0] ^ f.sign_mask
        assert ab[2] == ab[0] ^ f.sign_mask
    else:
        assert ab[1] == ab[2] == f.nan_bits
