"""L-Mul: floating-point multiplication approximated by one integer add (Luo & Sun 2024).

See `mulfree.lmul.reference` for the exact semantics (the spec) and `mulfree.lmul.ops` for
the vectorized torch implementation that equals it bit for bit.
"""
