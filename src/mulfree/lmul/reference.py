"""L-Mul, the specification: one product at a time, in plain Python integers.

This module is slow and meant to be read. `mulfree.lmul.ops` must equal it bit for bit.

Semantics of lmul(x, y) in a format with M mantissa bits and bias B, k = mantissa_bits (M when
not given), l = l(k) (k if k <= 3, 3 if k = 4, 4 if k > 4):

1. Operands. NaN stays NaN. Subnormal operands are flushed to (signed) zero first
   (denormals-are-zero). With k < M each finite operand is rounded to k mantissa bits,
   round-to-nearest-even, on its magnitude bits; a carry moves into the exponent. An operand
   that rounds past the largest finite value becomes inf (float8_e4m3fn, which has no inf,
   saturates to its largest k-bit value instead).
2. Special products, as IEEE-754 multiplication: NaN if either operand is NaN, or for inf * 0;
   inf * nonzero = inf; zero * finite = zero. The sign is always sign(x) xor sign(y), except
   that every NaN result is the format's canonical positive quiet NaN.
3. Finite nonzero operands, mode="int" (the paper's integer form, default): on the magnitude
   bits |x|, |y| (sign cleared),
       r = |x| + |y| - ((B << M) - (2^M >> l))
   one integer add: the exponents add, the mantissas add with the offset 2^-l, and a mantissa
   carry spills into the exponent field as a hardware adder does. For float32 the constant is
   0x3F780000, for bfloat16 0x3F78.
   mode="eq1" (the paper's Eq. 1 taken literally): (1 + x_m + y_m + 2^-l) * 2^(x_e + y_e),
   rounded to the format (round-to-nearest-even) when it needs one more bit.
4. Range. A result whose exponent field would be <= 0 (below the smallest normal) flushes to
   signed zero. A result past the largest finite value is signed inf (float8_e4m3fn
   saturates to +-448, as torch's cast to float8_e4m3fn does).
"""

from __future__ import annotations

import struct

import torch

from mulfree.lmul.formats import FloatFormat, check_mantissa_bits, get_format, offset_exponent

MODES = ("int", "eq1")


def round_magnitude(mag: int, fmt: FloatFormat, k: int) -> int:
    """Round finite, normal magnitude bits to k mantissa bits (round-to-nearest-even)."""
    drop = fmt.man_bits - k
    if drop == 0:
        return mag
    kept = mag >> drop
    rest = mag & ((1 << drop) - 1)
    half = 1 << (drop - 1)
    if rest > half or (rest == half and kept & 1):
        kept += 1  # may carry into the exponent: that is the rounded value
    rounded = kept << drop
    if rounded > fmt.max_finite_mag:
        if fmt.has_inf:
            return fmt.inf_mag
        # e4m3fn: saturate to the largest value that has k mantissa bits.
        return (fmt.max_finite_mag >> drop) << drop
    return rounded


def prepare_operand(bits: int, fmt: FloatFormat, k: int) -> tuple[int, int]:
    """Return (sign bit, magnitude bits) after flush-to-zero and rounding to k bits."""
    sign = bits & fmt.sign_mask
    mag = bits & (fmt.sign_mask - 1)
    if fmt.is_nan_mag(mag) or fmt.is_inf_mag(mag):
        return sign, mag
    if (mag >> fmt.man_bits) == 0:  # zero or subnormal: denormals-are-zero
        return sign, 0
    return sign, round_magnitude(mag, fmt, k)


def _combine_eq1(ax: int, ay: int, fmt: FloatFormat, l: int) -> int:
    """Eq. 1 on finite normal magnitudes; returns magnitude bits before range checks (or -1
    for underflow)."""
    m = fmt.man_bits
    ex, mx = ax >> m, ax & fmt.man_mask
    ey, my = ay >> m, ay & fmt.man_mask
    # The significand 1 + x_m + y_m + 2^-l in units of 2^-m.
    s = (1 << m) + mx + my + ((1 << m) >> l)
    e = ex + ey - fmt.bias  # biased exponent of the result
    if s >= (2 << m):
        # The significand is in [2, 4): renormalize by one bit, rounding to nearest even.
        # (At most 3.5 * 2^m before the shift, so the rounded value stays below 2 * 2^m.)
        lost = s & 1
        s >>= 1
        if lost and (s & 1):
            s += 1
        e += 1
    if e <= 0:
        return -1
    return (e << m) | (s - (1 << m))


def lmul_bits(
    x_bits: int,
    y_bits: int,
    fmt: str | torch.dtype | FloatFormat = "float32",
    *,
    mantissa_bits: int | None = None,
    mode: str = "int",
) -> int:
    """L-Mul of two values given as bit patterns (unsigned ints) of format `fmt`."""
    f = get_format(fmt)
    k = check_mantissa_bits(f, mantissa_bits)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sx, ax = prepare_operand(x_bits, f, k)
    sy, ay = prepare_operand(y_bits, f, k)
    sign = sx ^ sy

    if f.is_nan_mag(ax) or f.is_nan_mag(ay):
        return f.nan_bits
    x_inf, y_inf = f.is_inf_mag(ax), f.is_inf_mag(ay)
    if x_inf or y_inf:
        if ax == 0 or ay == 0:
            return f.nan_bits  # inf * 0
        return sign | f.inf_mag
    if ax == 0 or ay == 0:
        return sign  # signed zero

    l = offset_exponent(k)
    if mode == "int":
        # The paper's single integer add (its constant folds the bias and the offset).
        r = ax + ay - ((f.bias << f.man_bits) - ((1 << f.man_bits) >> l))
        if r < (1 << f.man_bits):
            r = -1  # exponent field <= 0: below the smallest normal
    else:
        r = _combine_eq1(ax, ay, f, l)

    if r < 0:
        return sign  # underflow flushes to signed zero
    if r > f.max_finite_mag:
        return sign | (f.inf_mag if f.has_inf else f.max_finite_mag)
    return sign | r


# --- conveniences on Python floats (float32 / float16 via struct; others via torch) ---------


def float_to_bits(value: float, fmt: str | torch.dtype | FloatFormat) -> int:
    """The bit pattern of `value` rounded to format `fmt` (by torch's/struct's conversion)."""
    f = get_format(fmt)
    if f.name == "float32":
        return struct.unpack("<I", struct.pack("<f", value))[0]
    if f.name == "float16":
        return struct.unpack("<H", struct.pack("<e", value))[0]
    t = torch.tensor([value], dtype=torch.float32).to(f.dtype)
    return _tensor_bits(t)


def bits_to_float(bits: int, fmt: str | torch.dtype | FloatFormat) -> float:
    """The value of bit pattern `bits` in format `fmt`, as a Python float."""
    f = get_format(fmt)
    if f.name == "float32":
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if f.name == "float16":
        return struct.unpack("<e", struct.pack("<H", bits))[0]
    if f.bits == 16:
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]  # bfloat16
    t = torch.tensor([bits], dtype=torch.uint8).view(f.dtype)
    return float(t.float().item())


def _tensor_bits(t: torch.Tensor) -> int:
    nbytes = t.element_size()
    raw = t.view(torch.uint8).tolist()
    return int.from_bytes(bytes(raw[:nbytes]), "little")


def lmul(
    x: float,
    y: float,
    fmt: str | torch.dtype | FloatFormat = "float32",
    *,
    mantissa_bits: int | None = None,
    mode: str = "int",
) -> float:
    """L-Mul of two Python floats (each first rounded to `fmt`), returned as a Python float."""
    f = get_format(fmt)
    r = lmul_bits(
        float_to_bits(x, f), float_to_bits(y, f), f, mantissa_bits=mantissa_bits, mode=mode
    )
    return bits_to_float(r, f)
