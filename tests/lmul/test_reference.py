"""The scalar spec on hand-checked cases: the paper's constants, special values, rounding."""

import math

import pytest

from mulfree.errors import MulfreeError
from mulfree.lmul import reference as R
from mulfree.lmul.formats import FORMATS, get_format, lmul_constant, offset_exponent


def test_paper_constants():
    # Luo & Sun give 0x3F780000 (fp32) and 0x3F78 (bf16) as the integer L-Mul constant.
    assert lmul_constant("float32") == 0x3F780000
    assert lmul_constant("bfloat16") == 0x3F78


@pytest.mark.parametrize("k,l", [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (7, 4), (23, 4)])
def test_offset_exponent(k, l):
    assert offset_exponent(k) == l


@pytest.mark.parametrize("mode", ["int", "eq1"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_specials_follow_ieee(fmt, mode):
    f = get_format(fmt)

    def mul(x, y):
        return R.lmul(x, y, f, mode=mode)

    # The paper's raw integer formula gives 0*0 = 4.25, 0*0.5 = NaN, inf*2 ~ 7e-40.
    assert mul(0.0, 0.0) == 0.0 and math.copysign(1, mul(0.0, 0.0)) == 1
    assert mul(0.0, 0.5) == 0.0
    assert math.copysign(1, mul(-0.0, 0.5)) == -1
    assert math.copysign(1, mul(-2.0, 0.0)) == -1
    assert math.isnan(mul(float("nan"), 1.0))
    if f.has_inf:
        assert mul(float("inf"), 2.0) == math.inf
        assert mul(float("-inf"), 2.0) == -math.inf
        assert mul(float("-inf"), -0.5) == math.inf
        assert math.isnan(mul(float("inf"), 0.0))
        assert math.isnan(mul(0.0, float("-inf")))
    # NaN results are the canonical positive quiet NaN.
    nan_bits = R.lmul_bits(f.nan_bits | f.sign_mask, f.bias << f.man_bits, f, mode=mode)
    assert nan_bits == f.nan_bits


@pytest.mark.parametrize("mode", ["int", "eq1"])
def test_overflow_and_underflow(mode):
    f = get_format("float32")
    assert R.lmul(1e30, 1e30, f, mode=mode) == math.inf
    assert R.lmul(-1e30, 1e30, f, mode=mode) == -math.inf
    under = R.lmul(-1e-30, 1e-30, f, mode=mode)
    assert under == 0.0 and math.copysign(1, under) == -1
    # Subnormal operands are flushed to zero (denormals-are-zero).
    assert R.lmul(1e-40, 1e10, f, mode=mode) == 0.0


def test_e4m3fn_saturates():
    f = get_format("float8_e4m3fn")
    assert R.lmul(400.0, 2.0, f) == 448.0
    assert R.lmul(-400.0, 2.0, f) == -448.0
    # Rounding 448 (1.110b * 2^8) to one mantissa bit overflows: saturate to 1.1b * 2^8 = 384.
    prepared = R.prepare_operand(R.float_to_bits(448.0, f), f, 1)
    assert R.bits_to_float(prepared[1], f) == 384.0


def test_int_and_eq1_hand_values():
    f = get_format("float32")
    # 1.5 * 1.25: mantissas .5 + .25 + 2^-4 = .8125, no carry: both forms give 1.8125.
    assert R.lmul(1.5, 1.25, f) == 1.8125
    assert R.lmul(1.5, 1.25, f, mode="eq1") == 1.8125
    # 3 * -7 = (1.5 * 2) * -(1.75 * 4): mantissa sum .5 + .75 + .0625 = 1.3125 carries.
    # int: the carry spills into the exponent -> 2^4 * 1.3125 = 21.
    assert R.lmul(3.0, -7.0, f) == -21.0
    # eq1: (1 + 1.3125) * 2^3 = 18.5.
    assert R.lmul(3.0, -7.0, f, mode="eq1") == -18.5


def test_mantissa_bits_rounds_operands_to_nearest_even():
    f = get_format("float32")
    # k = 1: 1.25 is a tie between 1.0 and 1.5 -> even (1.0); 1.75 is a tie -> 2.0.
    assert R.bits_to_float(R.prepare_operand(R.float_to_bits(1.25, f), f, 1)[1], f) == 1.0
    assert R.bits_to_float(R.prepare_operand(R.float_to_bits(1.75, f), f, 1)[1], f) == 2.0
    # k = 2 for both operands of 1.3 * 1.3: 1.3 -> 1.25; 1.25 * 1.25 with l(2) = 2:
    # mantissas .25 + .25 + .25 = .75 -> 1.75.
    assert R.lmul(1.3, 1.3, f, mantissa_bits=2) == 1.75


def test_bad_arguments():
    with pytest.raises(MulfreeError, match="outside 1..7"):
        R.lmul_bits(0, 0, "bf16", mantissa_bits=8)
    with pytest.raises(MulfreeError, match="unknown float format"):
        get_format("fp64")
    with pytest.raises(ValueError, match="mode"):
        R.lmul_bits(0, 0, "fp32", mode="exact")
