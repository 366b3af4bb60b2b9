"""L-Mul: floating-point multiplication approximated by one integer add (Luo & Sun 2024).

`mulfree.lmul.reference` holds the exact semantics (the spec, scalar Python);
`mulfree.lmul.ops` the vectorized torch implementation that equals it bit for bit.
"""

from mulfree._lazy import attach

_NAMES = {
    "FORMATS": "mulfree.lmul.formats",
    "get_format": "mulfree.lmul.formats",
    "lmul_constant": "mulfree.lmul.formats",
    "offset_exponent": "mulfree.lmul.formats",
    "lmatmul": "mulfree.lmul.ops",
    "lmul": "mulfree.lmul.ops",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = ["FORMATS", "get_format", "lmatmul", "lmul", "lmul_constant", "offset_exponent"]
