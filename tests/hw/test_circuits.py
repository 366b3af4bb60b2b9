"""The Amaranth circuits simulated against mulfree.hw.reference, bit for bit.

Default set: a sample per circuit and format (specials over-represented). Slow set: every fp8
operand pair, and 10^5 random vectors for the wider formats (the issue's bar)."""

from __future__ import annotations

import pytest

pytest.importorskip("amaranth", reason="the hw extra is not installed: pip install 'mulfree[hw]'")

from mulfree.hw import circuits as C  # noqa: E402
from mulfree.hw import sim  # noqa: E402
from mulfree.hw.reference import FLOAT_CIRCUITS, INT_CIRCUITS  # noqa: E402
from mulfree.lmul.formats import get_format  # noqa: E402

FORMATS = ["float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "float32"]


def _check(circuit, f, vectors, k=None):
    r = sim.check(C.build(circuit, f, k), circuit, f, vectors, k)
    assert r.vectors == len(vectors)
    assert r.mismatches == 0, f"first mismatch (inputs, got, want): {r.first_mismatch}"


@pytest.mark.parametrize("circuit", FLOAT_CIRCUITS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_circuit_sample(circuit, fmt):
    f = get_format(fmt)
    n = 300 if circuit.endswith("_mac") else 1500
    _check(circuit, f, sim.float_vectors(f, n, with_acc=circuit.endswith("_mac"), seed=11))


@pytest.mark.parametrize("fmt,k", [("float8_e4m3fn", 2), ("float8_e5m2", 1), ("bfloat16", 3),
                                   ("float16", 4), ("float32", 7)])  # fmt: skip
def test_lmul_with_fewer_mantissa_bits(fmt, k):
    f = get_format(fmt)
    _check("lmul", f, sim.float_vectors(f, 1500, with_acc=False, seed=12), k)
    _check("lmul_mac", f, sim.float_vectors(f, 200, with_acc=True, seed=13), k)


@pytest.mark.parametrize("circuit", INT_CIRCUITS)
def test_integer_units_sample(circuit):
    _check(circuit, None, sim.int_vectors(circuit, 3000, seed=14))


def test_ternary_unit_exhaustive():
    # Every activation and code (1,024 vectors), each with its own accumulator.
    _check("ternary_acc", None, sim.int_vectors("ternary_acc", None, seed=15))


def test_specials_are_in_the_sample():
    f = get_format("bfloat16")
    xs = {v[0] for v in sim.float_vectors(f, 3000, with_acc=False)}
    assert {0, f.sign_mask, f.inf_mag, f.nan_bits, 1, f.max_finite_mag} <= xs


def test_the_check_can_fail():
    # A circuit compared against another circuit's reference must show mismatches: an IEEE
    # multiplier is not L-Mul (the comparison is not vacuous).
    f = get_format("bfloat16")
    vecs = sim.float_vectors(f, 500, with_acc=False, seed=16)
    got = sim.simulate(C.build("ieee_mul", f), "ieee_mul", vecs)
    wrong = sum(g != sim.expected("lmul", f, v, None) for v, g in zip(vecs, got, strict=True))
    assert wrong > 100


@pytest.mark.slow
@pytest.mark.parametrize("circuit", FLOAT_CIRCUITS)
@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_exhaustive(circuit, fmt):
    f = get_format(fmt)
    vecs = sim.float_vectors(f, None, with_acc=circuit.endswith("_mac"), seed=21)
    assert len(vecs) == 65536
    _check(circuit, f, vecs)


@pytest.mark.slow
@pytest.mark.parametrize("circuit", FLOAT_CIRCUITS)
@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "float32"])
def test_wide_formats_1e5(circuit, fmt):
    f = get_format(fmt)
    _check(circuit, f, sim.float_vectors(f, 100_000, with_acc=circuit.endswith("_mac"), seed=22))


@pytest.mark.slow
def test_int8_mac_exhaustive():
    _check("int8_mac", None, sim.int_vectors("int8_mac", None, seed=23))
