"""Shared generators for L-Mul tests: random bit patterns with special values over-represented."""

from __future__ import annotations

import torch

from mulfree.lmul.formats import FloatFormat


def special_patterns(f: FloatFormat) -> list[int]:
    """Magnitude patterns worth testing: zeros, subnormals, edges of the normal range, inf/NaN."""
    m = f.man_bits
    pats = [
        0,  # zero
        1,  # smallest subnormal
        f.man_mask,  # largest subnormal
        1 << m,  # smallest normal
        (1 << m) | f.man_mask,
        f.max_finite_mag,
        f.max_finite_mag - 1,
        f.bias << m,  # 1.0
        (f.bias << m) | f.man_mask,  # just under 2
        (f.bias << m) | (1 << (m - 1)),  # 1.5
        # Exponents whose sums land near underflow and overflow of the product.
        ((f.bias // 2) << m) | f.man_mask,
        ((f.bias // 2 + 1) << m),
        ((f.bias + f.bias // 2 + 1) << m) | f.man_mask,
        ((f.bias + f.bias // 2) << m),
        f.nan_bits,
    ]
    if f.has_inf:
        pats += [f.inf_mag, f.inf_mag | 1, f.inf_mag | f.man_mask]  # inf, signalling NaNs
    return pats


def random_patterns(f: FloatFormat, n: int, gen: torch.Generator) -> torch.Tensor:
    """n bit patterns (int64): ~30 % specials, ~30 % exponents near the range edges, rest random."""
    bits = torch.randint(0, 1 << f.bits, (n,), generator=gen, dtype=torch.int64)
    sign = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64) << (f.bits - 1)
    choice = torch.rand(n, generator=gen)
    specials = torch.tensor(special_patterns(f), dtype=torch.int64)
    pick = specials[torch.randint(0, len(specials), (n,), generator=gen)] | sign
    bits = torch.where(choice < 0.3, pick, bits)
    # Edge exponents: small (products underflow) or large (products overflow) with random mantissa.
    top = f.exp_all_ones
    edge_exp = torch.tensor(
        [1, 2, f.bias // 2, f.bias // 2 + 1, top - 1, top - 2, f.bias + f.bias // 2],
        dtype=torch.int64,
    )
    e = edge_exp[torch.randint(0, len(edge_exp), (n,), generator=gen)]
    mant = torch.randint(0, 1 << f.man_bits, (n,), generator=gen, dtype=torch.int64)
    edge = sign | (e << f.man_bits) | mant
    return torch.where((choice >= 0.3) & (choice < 0.6), edge, bits)


def patterns_to_tensor(bits: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    from mulfree.lmul.ops import from_bits

    work = torch.int64 if f.bits == 32 else torch.int32
    return from_bits(bits.to(work), f)
