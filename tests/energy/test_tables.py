"""Energy arithmetic: the paper's figures from the Horowitz table, pricing, user tables."""

import json

import pytest

from mulfree.energy import EnergyTable, price
from mulfree.errors import MulfreeError


def test_paper_arithmetic():
    t = EnergyTable.load()
    # L-Mul paper: an fp32 multiply costs 37x an int32 add ("95 % less energy per multiply").
    assert t.op_pj("fp_mul", 32) / t.op_pj("lmul", 32) == pytest.approx(37.0)
    assert 1 - t.op_pj("lmul", 32) / t.op_pj("fp_mul", 32) == pytest.approx(0.973, abs=1e-3)
    # Dot product: (L-Mul + fp32 add) / (fp32 mul + fp32 add) = (0.1 + 0.9) / (3.7 + 0.9).
    dot = (t.op_pj("lmul", 32) + t.op_pj("fp_add", 32)) / (
        t.op_pj("fp_mul", 32) + t.op_pj("fp_add", 32)
    )
    assert dot == pytest.approx(0.2174, abs=1e-4)


def test_price_sums_compute_and_memory():
    t = EnergyTable.load()
    e = price(
        {("fp_mul", 32): 10, ("int_add", 8): 100, ("exp", 32): 2},
        {"weight_read": 8, "act_read": 8, "act_write": 8},
        t,
    )
    exp_pj = 6 * 3.7 + 6 * 0.9
    assert e["compute_pJ"] == pytest.approx(37.0 + 3.0 + 2 * exp_pj)
    assert e["memory_weights_pJ"] == pytest.approx(1950.0)  # one 64-bit DRAM access
    assert e["memory_activations_pJ"] == pytest.approx(200.0)  # two 64-bit 1 MB-cache accesses
    assert e["total_pJ"] == pytest.approx(e["compute_pJ"] + 2150.0)


def test_every_entry_cites_a_source():
    raw = EnergyTable.load().raw
    for section in ("ops_pJ", "memory_pJ_per_64bit"):
        for key, v in raw[section].items():
            assert v["source"].strip(), key


def test_user_table_and_errors(tmp_path):
    raw = EnergyTable.load().raw
    raw["ops_pJ"]["fp_mul_32"]["pJ"] = 1.0
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(raw))
    assert EnergyTable.load(str(p)).op_pj("fp_mul", 32) == 1.0
    with pytest.raises(MulfreeError, match="unknown energy table"):
        EnergyTable.load("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MulfreeError, match="malformed"):
        EnergyTable.load(str(bad))
    with pytest.raises(MulfreeError, match="cannot price"):
        EnergyTable.load().op_pj("teleport", 32)
