"""The circuits' specifications, in plain Python integers: slow, readable, the test oracles.

L-Mul itself is `mulfree.lmul.reference.lmul_bits`; this module adds what the other circuits
compute, with the same conventions (round-to-nearest-even; denormals-are-zero on the operands; a
result whose rounded exponent field would be <= 0 flushes to signed zero; overflow is signed inf,
float8_e4m3fn saturates to +-448; every NaN result is the format's canonical quiet NaN):

- `ieee_mul_bits`: the exact product, rounded once to the format;
- `lmul_bare_bits`: the paper's bare integer form, sign xor and one add, no special values;
- `fp32_add_bits`: the exact sum of two float32 values, rounded once (the accumulator);
- `widen_bits`: a product of a narrow format as float32 (exact: every format here fits);
- `mac_bits`: product (L-Mul or IEEE) widened to float32, plus a float32 accumulator;
- `ternary_acc_int` / `int8_mac_int`: the integer units, wrapping at 32 bits.

Rounding with an unbounded exponent first and flushing afterwards ("flush after rounding") is
the rule for every circuit here, so a result just below the smallest normal that rounds up to it
is kept.
"""

from __future__ import annotations

from mulfree.lmul.formats import FloatFormat, get_format, lmul_constant
from mulfree.lmul.reference import lmul_bits, prepare_operand

FP32 = get_format("float32")

CIRCUITS = ("lmul", "lmul_bare", "ieee_mul", "lmul_mac", "ieee_mac", "ternary_acc", "int8_mac")
FLOAT_CIRCUITS = CIRCUITS[:5]  # parameterised by a float format
INT_CIRCUITS = CIRCUITS[5:]  # fixed: int8 operands, int32 accumulator

# Ternary weight codes as the packed formats store them: code c means weight c - 1.
# The fourth pattern (3) is unused by the packers; the circuit skips it like a zero.
TERNARY_CODES = {0: -1, 1: 0, 2: +1, 3: 0}


def _wrap(value: int, bits: int) -> int:
    """Two's-complement wrap of an integer to `bits` bits, as an unsigned pattern."""
    return value & ((1 << bits) - 1)


def _signed(pattern: int, bits: int) -> int:
    """The signed value of a `bits`-bit two's-complement pattern."""
    return pattern - (1 << bits) if pattern >> (bits - 1) else pattern


def round_to_format(sign: int, n: int, e: int, fmt: FloatFormat) -> int:
    """Bits of the value (-1)^sign * n * 2^e (n > 0 an integer) in `fmt`, rounded once.

    Round-to-nearest-even at the format's precision with an unbounded exponent; then a biased
    exponent <= 0 flushes to signed zero and a magnitude past the largest finite one is inf
    (float8_e4m3fn: saturates to its largest finite value).
    """
    assert n > 0
    m = fmt.man_bits
    sign_bit = fmt.sign_mask if sign else 0
    drop = n.bit_length() - (m + 1)
    if drop > 0:
        kept, rest, half = n >> drop, n & ((1 << drop) - 1), 1 << (drop - 1)
        if rest > half or (rest == half and kept & 1):
            kept += 1
        if kept >> (m + 1):  # rounding carried into a new leading bit
            kept >>= 1
            drop += 1
        n, e = kept, e + drop
    else:
        n, e = n << -drop, e + drop  # exact: pad to m + 1 significant bits
    biased = e + m + fmt.bias  # n is 1.xxx * 2^m
    if biased <= 0:
        return sign_bit
    mag = (biased << m) | (n - (1 << m))
    if mag > fmt.max_finite_mag:
        return sign_bit | (fmt.inf_mag if fmt.has_inf else fmt.max_finite_mag)
    return sign_bit | mag


def _special_product(ax: int, ay: int, sign: int, f: FloatFormat) -> int | None:
    """IEEE-754's special products (as lmul_bits has them), or None for finite nonzero pairs."""
    if f.is_nan_mag(ax) or f.is_nan_mag(ay):
        return f.nan_bits
    if f.is_inf_mag(ax) or f.is_inf_mag(ay):
        return f.nan_bits if ax == 0 or ay == 0 else sign | f.inf_mag
    if ax == 0 or ay == 0:
        return sign
    return None


def ieee_mul_bits(x_bits: int, y_bits: int, fmt: str | FloatFormat) -> int:
    """The exact IEEE product of two bit patterns of `fmt`, rounded once (module conventions)."""
    f = get_format(fmt)
    sx, ax = prepare_operand(x_bits, f, f.man_bits)
    sy, ay = prepare_operand(y_bits, f, f.man_bits)
    sign = sx ^ sy
    special = _special_product(ax, ay, sign, f)
    if special is not None:
        return special
    m = f.man_bits
    # A normal value is (2^m + mantissa) * 2^(exponent - bias - m).
    nx, ny = (1 << m) | (ax & f.man_mask), (1 << m) | (ay & f.man_mask)
    e = (ax >> m) + (ay >> m) - 2 * (f.bias + m)
    return round_to_format(1 if sign else 0, nx * ny, e, f)


def lmul_bare_bits(x_bits: int, y_bits: int, fmt: str | FloatFormat) -> int:
    """The paper's L-Mul with nothing around it: sign xor, |x| + |y| - constant, wrapped.

    No NaN/inf/zero handling, no flush, no saturation: what its operation count prices. On
    normal operands whose product is in range it equals `lmul_bits` (mode "int")."""
    f = get_format(fmt)
    mag_bits = f.bits - 1
    sign = (x_bits ^ y_bits) & f.sign_mask
    ax, ay = x_bits & (f.sign_mask - 1), y_bits & (f.sign_mask - 1)
    return sign | _wrap(ax + ay - lmul_constant(f), mag_bits)


def widen_bits(bits: int, fmt: str | FloatFormat) -> int:
    """A value of `fmt` as float32 bits (exact; subnormals flush, NaN becomes float32's)."""
    f = get_format(fmt)
    if f.name == "float32":
        return bits
    sign, mag = prepare_operand(bits, f, f.man_bits)
    s = FP32.sign_mask if sign else 0
    if f.is_nan_mag(mag):
        return FP32.nan_bits
    if f.is_inf_mag(mag):
        return s | FP32.inf_mag
    if mag == 0:
        return s
    m = f.man_bits
    n = (1 << m) | (mag & f.man_mask)
    return round_to_format(1 if sign else 0, n, (mag >> m) - f.bias - m, FP32)


def fp32_add_bits(a_bits: int, b_bits: int) -> int:
    """The float32 sum, rounded once (module conventions; x + (-x) is +0, -0 + -0 is -0)."""
    f = FP32
    sa, ma = prepare_operand(a_bits, f, f.man_bits)
    sb, mb = prepare_operand(b_bits, f, f.man_bits)
    if f.is_nan_mag(ma) or f.is_nan_mag(mb):
        return f.nan_bits
    a_inf, b_inf = f.is_inf_mag(ma), f.is_inf_mag(mb)
    if a_inf and b_inf:
        return f.nan_bits if sa != sb else sa | f.inf_mag
    if a_inf or b_inf:
        return (sa if a_inf else sb) | f.inf_mag
    if ma == 0 and mb == 0:
        return sa & sb

    # Exact sum as an integer times 2^e_min (Python integers have no width).
    def value(sign: int, mag: int) -> tuple[int, int]:
        if mag == 0:
            return 0, 0
        n = (1 << f.man_bits) | (mag & f.man_mask)
        return (-n if sign else n), (mag >> f.man_bits) - f.bias - f.man_bits

    (na, ea), (nb, eb) = value(sa, ma), value(sb, mb)
    if na == 0:
        ea = eb
    if nb == 0:
        eb = ea
    e = min(ea, eb)
    total = (na << (ea - e)) + (nb << (eb - e))
    if total == 0:
        return 0  # an exact zero sum of nonzero terms is +0 (round-to-nearest)
    return round_to_format(1 if total < 0 else 0, abs(total), e, f)


def product_bits(
    circuit: str, x_bits: int, y_bits: int, fmt: str | FloatFormat, mantissa_bits: int | None
) -> int:
    """The product a multiplier circuit computes: "lmul", "lmul_bare" or "ieee_mul"."""
    if circuit == "lmul":
        return lmul_bits(x_bits, y_bits, fmt, mantissa_bits=mantissa_bits)
    if circuit == "lmul_bare":
        return lmul_bare_bits(x_bits, y_bits, fmt)
    if circuit == "ieee_mul":
        return ieee_mul_bits(x_bits, y_bits, fmt)
    raise ValueError(f"not a multiplier circuit: {circuit!r}")


def mac_bits(
    circuit: str,
    x_bits: int,
    y_bits: int,
    acc_bits: int,
    fmt: str | FloatFormat,
    mantissa_bits: int | None = None,
) -> int:
    """One dot-product step: "lmul_mac" or "ieee_mac" = float32(product(x, y)) + acc."""
    mul = {"lmul_mac": "lmul", "ieee_mac": "ieee_mul"}[circuit]
    p = product_bits(mul, x_bits, y_bits, fmt, mantissa_bits)
    return fp32_add_bits(widen_bits(p, fmt), acc_bits)


def ternary_acc_int(acc: int, act: int, code: int) -> int:
    """acc (int32 pattern) + w * act (act an int8 pattern, w = TERNARY_CODES[code]), wrapped."""
    return _wrap(_signed(acc, 32) + TERNARY_CODES[code] * _signed(act, 8), 32)


def int8_mac_int(acc: int, a: int, b: int) -> int:
    """acc (int32 pattern) + a * b (int8 patterns), wrapped to 32 bits."""
    return _wrap(_signed(acc, 32) + _signed(a, 8) * _signed(b, 8), 32)
