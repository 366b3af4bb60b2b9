"""L-Mul: floating-point multiplication approximated by one integer add (Luo & Sun 2024).

`mulfree.lmul.reference` holds the exact semantics (the spec, scalar Python);
`mulfree.lmul.ops` the vectorized torch implementation that equals it bit for bit.
"""

from mulfree.lmul.formats import FORMATS, get_format, lmul_constant, offset_exponent
from mulfree.lmul.ops import lmatmul, lmul

__all__ = ["FORMATS", "get_format", "lmatmul", "lmul", "lmul_constant", "offset_exponent"]
