"""Floating-point formats L-Mul works on, described by their bit fields.

Each format is sign | exponent (E bits, bias 2^(E-1) - 1) | mantissa (M bits). All but
float8_e4m3fn follow IEEE-754 (all-ones exponent = inf when the mantissa is 0, NaN otherwise).
float8_e4m3fn (OCP FP8 "fn": finite + NaN) has no inf: the all-ones exponent holds normal
numbers up to 1.110b * 2^8 = 448, and only S.1111.111 is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from mulfree.errors import MulfreeError


@dataclass(frozen=True)
class FloatFormat:
    name: str
    exp_bits: int
    man_bits: int
    has_inf: bool
    dtype: torch.dtype

    # Derived bit masks are cached: the scalar reference reads them for every product.
    @cached_property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @cached_property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @cached_property
    def sign_mask(self) -> int:
        return 1 << (self.bits - 1)

    @cached_property
    def man_mask(self) -> int:
        return (1 << self.man_bits) - 1

    @cached_property
    def exp_all_ones(self) -> int:
        return (1 << self.exp_bits) - 1

    @cached_property
    def inf_mag(self) -> int:
        """Magnitude bits of inf (only meaningful when has_inf)."""
        return self.exp_all_ones << self.man_bits

    @cached_property
    def max_finite_mag(self) -> int:
        """Magnitude bits of the largest finite value."""
        if self.has_inf:
            return ((self.exp_all_ones - 1) << self.man_bits) | self.man_mask
        # e4m3fn: all-ones exponent with every mantissa pattern but all-ones is finite.
        return (self.exp_all_ones << self.man_bits) | (self.man_mask - 1)

    @cached_property
    def nan_bits(self) -> int:
        """The canonical (positive, quiet) NaN every NaN result is written as."""
        if self.has_inf:
            return self.inf_mag | (1 << (self.man_bits - 1))
        return (self.exp_all_ones << self.man_bits) | self.man_mask

    def is_nan_mag(self, mag: int) -> bool:
        if self.has_inf:
            return (mag >> self.man_bits) == self.exp_all_ones and (mag & self.man_mask) != 0
        return mag == self.nan_bits

    def is_inf_mag(self, mag: int) -> bool:
        return self.has_inf and mag == self.inf_mag


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("float32", 8, 23, True, torch.float32),
        FloatFormat("bfloat16", 8, 7, True, torch.bfloat16),
        FloatFormat("float16", 5, 10, True, torch.float16),
        FloatFormat("float8_e4m3fn", 4, 3, False, torch.float8_e4m3fn),
        FloatFormat("float8_e5m2", 5, 2, True, torch.float8_e5m2),
    )
}
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "e4m3": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "fp8_e5m2": "float8_e5m2",
}
_BY_DTYPE = {f.dtype: f for f in FORMATS.values()}


def canonical_name(name: str) -> str:
    """A float format's canonical (torch) name for any of its spellings: "bf16" -> "bfloat16",
    "e4m3" -> "float8_e4m3fn"; an unknown name comes back lowercased. The one alias table."""
    key = str(name).lower()
    return _ALIASES.get(key, key)


def get_format(fmt: str | torch.dtype | FloatFormat) -> FloatFormat:
    """Look a format up by name (e.g. "bf16", "float8_e4m3fn") or torch dtype."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, torch.dtype):
        if fmt not in _BY_DTYPE:
            raise MulfreeError(f"L-Mul does not support dtype {fmt}; supported: {_names()}")
        return _BY_DTYPE[fmt]
    key = canonical_name(fmt)
    if key not in FORMATS:
        raise MulfreeError(f"unknown float format {fmt!r}; supported: {_names()}")
    return FORMATS[key]


def _names() -> str:
    return ", ".join(FORMATS)


def offset_exponent(k: int) -> int:
    """The paper's l(k): the L-Mul offset is 2^-l(k) for k mantissa bits."""
    if k <= 3:
        return k
    if k == 4:
        return 3
    return 4


def check_mantissa_bits(fmt: FloatFormat, mantissa_bits: int | None) -> int:
    """Validate the `mantissa_bits` option for a format; return the effective k."""
    if mantissa_bits is None:
        return fmt.man_bits
    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int):
        raise MulfreeError(f"mantissa_bits must be an integer, got {mantissa_bits!r}")
    if not 1 <= mantissa_bits <= fmt.man_bits:
        raise MulfreeError(
            f"mantissa_bits={mantissa_bits} is outside 1..{fmt.man_bits} for {fmt.name}"
        )
    return mantissa_bits


def lmul_constant(fmt: str | torch.dtype | FloatFormat, mantissa_bits: int | None = None) -> int:
    """The integer subtracted in L-Mul's integer form: (bias << m) - (2^m >> l(k)).

    float32 gives the paper's 0x3F780000, bfloat16 its 0x3F78.
    """
    f = get_format(fmt)
    k = check_mantissa_bits(f, mantissa_bits)
    return (f.bias << f.man_bits) - ((1 << f.man_bits) >> offset_exponent(k))
