"""The circuits' specifications (mulfree.hw.reference) against independent oracles: torch's
and numpy's IEEE arithmetic where both conventions agree (normal operands, normal results), and
the conventions themselves (flush, saturation, specials, signed zeros) on chosen cases."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mulfree.hw import reference as ref
from mulfree.lmul.formats import get_format
from mulfree.lmul.reference import bits_to_float, lmul_bits

FORMATS = ["float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "float32"]


def _is_normal(bits: int, f) -> bool:
    mag = bits & (f.sign_mask - 1)
    return (mag >> f.man_bits) != 0 and not f.is_nan_mag(mag) and not f.is_inf_mag(mag)


def _torch_round(value: float, f) -> int:
    """Bits of a float64 value rounded once to format f by torch (round-to-nearest-even)."""
    t = torch.tensor([value], dtype=torch.float64).to(f.dtype)
    ints = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[f.bits]
    return int(t.view(ints).item()) & ((1 << f.bits) - 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_ieee_mul_equals_torch_on_normal_range(fmt):
    # The exact product of two <= 24-bit significands fits a float64, so torch's one rounding
    # of it to the format is the IEEE product; where it is a normal number both must agree.
    f, rng, checked = get_format(fmt), random.Random(1), 0
    pairs = (
        [(x, y) for x in range(256) for y in range(256)]
        if f.bits == 8
        else [(rng.getrandbits(f.bits), rng.getrandbits(f.bits)) for _ in range(20_000)]
    )
    for x, y in pairs:
        if not (_is_normal(x, f) and _is_normal(y, f)):
            continue
        exact = bits_to_float(x, f) * bits_to_float(y, f)
        want = _torch_round(exact, f)
        if abs(exact) < 2.0 ** (1 - f.bias) or not _is_normal(want, f):
            continue  # below the normals or overflowing: the conventions differ on purpose
        assert ref.ieee_mul_bits(x, y, f) == want, (hex(x), hex(y))
        checked += 1
    assert checked > len(pairs) // 5


def test_fp32_add_equals_numpy_on_normal_range():
    rng, checked = random.Random(2), 0
    for _ in range(50_000):
        a = rng.getrandbits(32)
        # Half the pairs with close exponents, so cancellation and rounding carries are hit.
        b = (a ^ rng.getrandbits(26)) if rng.random() < 0.5 else rng.getrandbits(32)
        if not (_is_normal(a, ref.FP32) and _is_normal(b, ref.FP32)):
            continue
        with np.errstate(over="ignore"):  # an overflow to inf is skipped below
            s = np.array([a], np.uint32).view(np.float32) + np.array([b], np.uint32).view(
                np.float32
            )
        want = int(s.view(np.uint32)[0])
        exact = float(np.array([a], np.uint32).view(np.float32)[0]) + float(
            np.array([b], np.uint32).view(np.float32)[0]
        )
        if abs(exact) < 2.0**-126 or not _is_normal(want, ref.FP32):
            continue
        assert ref.fp32_add_bits(a, b) == want, (hex(a), hex(b))
        checked += 1
    assert checked > 20_000


@pytest.mark.parametrize("fmt", FORMATS)
def test_widen_equals_torch(fmt):
    f = get_format(fmt)
    values = range(256) if f.bits == 8 else random.Random(3).sample(range(1 << f.bits), 5000)
    for x in values:
        w = ref.widen_bits(x, f)
        mag = x & (f.sign_mask - 1)
        if f.name == "float32":
            assert w == x  # the identity: the float32 adder applies its own rules
        elif f.is_nan_mag(mag):
            assert w == ref.FP32.nan_bits
        elif (mag >> f.man_bits) == 0:
            assert w == (ref.FP32.sign_mask if x & f.sign_mask else 0)  # denormals-are-zero
        else:
            assert w == _torch_round(bits_to_float(x, f), ref.FP32)


def test_conventions_on_chosen_cases():
    f32, e4 = get_format("float32"), get_format("e4m3")
    one, two, tiny = 0x3F800000, 0x40000000, 0x00800000  # 1, 2, smallest normal
    assert ref.ieee_mul_bits(one, two, f32) == two
    assert ref.ieee_mul_bits(tiny, 0x3F000000, f32) == 0  # 2^-127: flushed, not subnormal
    assert ref.ieee_mul_bits(tiny | f32.sign_mask, 0x3F000000, f32) == f32.sign_mask
    assert ref.ieee_mul_bits(0x7F000000, two, f32) == f32.inf_mag  # overflow -> inf
    assert ref.ieee_mul_bits(0x7E, 0x7E, e4) == 0x7E  # 448 * 448 saturates to 448
    assert ref.ieee_mul_bits(0x7F800000, 0, f32) == f32.nan_bits  # inf * 0
    assert ref.ieee_mul_bits(0x00000001, two, f32) == 0  # a subnormal operand is zero
    # Flush after rounding: (1 - 2^-25) * 2^-126 rounds up to the smallest normal and is kept;
    # (1 - 2^-24) * 2^-126 needs no rounding, is below the normals and flushes.
    assert ref.round_to_format(0, (1 << 25) - 1, -126 - 25, f32) == tiny
    assert ref.round_to_format(0, (1 << 24) - 1, -126 - 24, f32) == 0
    assert ref.fp32_add_bits(one, one | f32.sign_mask) == 0  # x + (-x) = +0
    assert ref.fp32_add_bits(f32.sign_mask, f32.sign_mask) == f32.sign_mask  # -0 + -0 = -0
    assert ref.fp32_add_bits(0x7F800000, 0xFF800000) == f32.nan_bits  # inf - inf
    assert ref.fp32_add_bits(0x7F7FFFFF, 0x7F7FFFFF) == f32.inf_mag
    assert ref.fp32_add_bits(0x00800001, 0x80800000) == 0  # 2^-149: flushed


@pytest.mark.parametrize("fmt", FORMATS)
def test_bare_lmul_equals_lmul_on_normal_in_range_operands(fmt):
    f, rng, same = get_format(fmt), random.Random(4), 0
    for _ in range(20_000):
        x, y = rng.getrandbits(f.bits), rng.getrandbits(f.bits)
        if not (_is_normal(x, f) and _is_normal(y, f)):
            continue
        full = lmul_bits(x, y, f)
        if not _is_normal(full, f) or (full & (f.sign_mask - 1)) == f.max_finite_mag:
            continue  # flushed or saturated: the bare form wraps instead
        assert ref.lmul_bare_bits(x, y, f) == full
        same += 1
    assert same > 2000


def test_integer_units():
    assert ref.ternary_acc_int(5, 3, 2) == 8  # +1
    assert ref.ternary_acc_int(5, 3, 0) == 2  # -1
    assert ref.ternary_acc_int(5, 3, 1) == 5  # 0: skip
    assert ref.ternary_acc_int(5, 3, 3) == 5  # unused code: skip
    assert ref.ternary_acc_int(0, 0x80, 0) == 128  # - (-128)
    assert ref.ternary_acc_int(0x7FFFFFFF, 1, 2) == 0x80000000  # wraps
    assert ref.int8_mac_int(0, 0x80, 0x80) == 16384  # -128 * -128
    assert ref.int8_mac_int(10, 0xFF, 3) == 7  # 10 + (-1 * 3)
    assert ref.int8_mac_int(0, 0x7F, 0x80) == (-127 * 128) & 0xFFFFFFFF
