"""Simulate the circuits with Amaranth's simulator and compare them with their references.

Test vectors: every operand pair for fp8 (65,536), else random pairs with the special values
(zeros, subnormals, the smallest/largest normals, inf, NaN, values whose product lands near the
flush and overflow thresholds) over-represented: a third of the operands come from that pool.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mulfree.hw import reference as ref
from mulfree.lmul.formats import FloatFormat

SPECIAL_SHARE = 1 / 3  # of the operands drawn from the special-value pool (wide formats)


def special_values(f: FloatFormat) -> list[int]:
    """Bit patterns at the edges of a format: zeros, subnormals, min/max normals, 1, inf, NaN,
    and values near sqrt of the flush and overflow thresholds (their squares land there)."""
    m, s = f.man_bits, f.sign_mask
    mags = {
        0,
        1,
        f.man_mask,  # zero, smallest and largest subnormal
        1 << m,
        (1 << m) | 1,
        (2 << m) - 1,  # smallest normals
        f.max_finite_mag,
        f.max_finite_mag - 1,
        f.bias << m,
        (f.bias << m) | f.man_mask,
        ((f.bias - 1) << m) | f.man_mask,  # ~1
        (f.bias // 2) << m,
        ((f.bias // 2) + 1) << m,  # products near the smallest normal
        ((f.bias + f.bias // 2) << m) | f.man_mask,  # products near the largest
        ((f.bias + (f.bias + 1) // 2) << m),
    }
    if f.has_inf:
        mags |= {f.inf_mag, f.inf_mag | 1, f.inf_mag | f.man_mask, f.nan_bits}
    else:
        mags.add(f.nan_bits & (s - 1))
    return sorted({v for g in mags for v in (g, g | s)})


def _operand(rng: random.Random, f: FloatFormat, pool: Sequence[int]) -> int:
    if rng.random() < SPECIAL_SHARE:
        return rng.choice(pool)
    return rng.getrandbits(f.bits)


def float_vectors(
    f: FloatFormat, n: int | None, *, with_acc: bool, seed: int = 0
) -> list[tuple[int, ...]]:
    """(x, y) or (x, y, acc) operand patterns: exhaustive pairs for 8-bit formats when n is
    None, else n random ones (specials over-represented)."""
    rng = random.Random(seed)
    pool, acc_pool = special_values(f), special_values(ref.FP32)
    if n is None:
        if f.bits > 8:
            raise ValueError(f"exhaustive simulation is for 8-bit formats, not {f.name}")
        pairs = [(x, y) for x in range(256) for y in range(256)]
    else:
        pairs = [(_operand(rng, f, pool), _operand(rng, f, pool)) for _ in range(n)]
    if not with_acc:
        return pairs
    return [(x, y, _operand(rng, ref.FP32, acc_pool)) for x, y in pairs]


def int_vectors(circuit: str, n: int | None, seed: int = 0) -> list[tuple[int, ...]]:
    """(acc, act, code) or (acc, a, b): every int8 operand combination when n is None (with a
    random accumulator each, its edges over-represented), else n random ones."""
    rng = random.Random(seed)
    edges = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FFFFF80, 0x80000080]

    def acc() -> int:
        return rng.choice(edges) if rng.random() < SPECIAL_SHARE else rng.getrandbits(32)

    second = 4 if circuit == "ternary_acc" else 256
    if n is None:
        return [(acc(), a, b) for a in range(256) for b in range(second)]
    return [(acc(), rng.getrandbits(8), rng.randrange(second)) for _ in range(n)]


def expected(circuit: str, fmt: FloatFormat | None, vec: tuple[int, ...], k: int | None) -> int:
    """The reference result of one test vector."""
    if circuit in ("lmul", "lmul_bare", "ieee_mul"):
        return ref.product_bits(circuit, vec[0], vec[1], fmt, k)
    if circuit in ("lmul_mac", "ieee_mac"):
        return ref.mac_bits(circuit, vec[0], vec[1], vec[2], fmt, k)
    if circuit == "ternary_acc":
        return ref.ternary_acc_int(*vec)
    if circuit == "int8_mac":
        return ref.int8_mac_int(*vec)
    raise ValueError(f"unknown circuit {circuit!r}")


@dataclass
class SimResult:
    vectors: int
    mismatches: int
    first_mismatch: tuple | None  # (inputs, got, expected) of the first one, for messages


def simulate(component, circuit: str, vectors: Sequence[tuple[int, ...]]) -> list[int]:
    """Drive `component` (an Amaranth circuit) with each input tuple; return its outputs."""
    from amaranth.sim import Simulator

    from mulfree.hw.circuits import ports

    in_names, out_name = ports(circuit)
    ins = [getattr(component, n) for n in in_names]
    out_sig = getattr(component, out_name)
    outs: list[int] = []

    async def bench(ctx):
        for vec in vectors:
            for sig, v in zip(ins, vec, strict=True):
                ctx.set(sig, v)
            outs.append(ctx.get(out_sig))

    sim = Simulator(component)
    sim.add_testbench(bench)
    sim.run()
    return outs


def check(
    component,
    circuit: str,
    fmt: FloatFormat | None,
    vectors: Sequence[tuple[int, ...]],
    mantissa_bits: int | None = None,
) -> SimResult:
    """Simulate and compare every output with the reference, bit for bit."""
    got = simulate(component, circuit, vectors)
    bad, first = 0, None
    for vec, g in zip(vectors, got, strict=True):
        want = expected(circuit, fmt, vec, mantissa_bits)
        if g != want:
            bad += 1
            if first is None:
                first = (vec, g, want)
    return SimResult(len(vectors), bad, first)
