"""The report's circuits section: built from a stored hw.json, verdicts computed from it, a
missing or broken file said in one line. Needs neither amaranth nor Yosys."""

from __future__ import annotations

import json

import pytest

from mulfree.errors import MulfreeError
from mulfree.hw.table import PAPER_FP8_LMUL_OPS, PAPER_FP8_MUL_OPS, comparisons, horowitz_pj
from mulfree.report import hw_section
from mulfree.report.common import Context


def _row(circuit, fmt, gates, energy):
    return {"circuit": circuit, "format": fmt, "gates": gates, "depth": 10, "energy_pj": energy,
            "sim_vectors": 100, "sim_mismatches": 0}  # fmt: skip


def _ctx(tmp_path, rows):
    (tmp_path / "res" / "hw").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    if rows is not None:
        (tmp_path / "res" / "hw" / "hw.json").write_text(json.dumps(rows))
    return Context(results=tmp_path / "res", out=tmp_path / "out", repo=None)


def test_comparisons_are_computed_from_the_rows():
    rows = [_row("lmul", "float8_e4m3fn", 100, 0.1), _row("ieee_mul", "float8_e4m3fn", 200, 0.4),
            _row("lmul_mac", "float32", 1, 3.0), _row("ieee_mac", "float32", 1, 6.0)]  # fmt: skip
    by = {(c["claim"].split(" ")[0], c["format"]): c for c in comparisons(rows)}
    gates = by[("lmul", "float8_e4m3fn")]
    assert gates["ours"] == pytest.approx(50.0)
    assert gates["paper"] == pytest.approx(100 * PAPER_FP8_LMUL_OPS / PAPER_FP8_MUL_OPS)
    energy = by[("energy", "float8_e4m3fn")]
    assert energy["ours"] == pytest.approx(75.0)
    assert energy["table"] == pytest.approx(
        100 * (1 - horowitz_pj("lmul", "float8_e4m3fn") / horowitz_pj("ieee_mul", "float8_e4m3fn"))
    )
    dot = by[("energy", "float32")]
    assert dot["ours"] == pytest.approx(50.0) and dot["paper"] == 80.0


def test_section_verdicts_and_png(tmp_path):
    rows = [_row("lmul", "float32", 300, 0.05), _row("ieee_mul", "float32", 9000, 10.0),
            _row("lmul_mac", "float32", 1800, 2.0), _row("ieee_mac", "float32", 10000, 12.0)]  # fmt: skip
    s = hw_section.section(_ctx(tmp_path, rows))
    assert s.files == [hw_section.PNG] and (tmp_path / "out" / hw_section.PNG).stat().st_size > 1000
    words = {v["claim"].split(":")[0]: v["verdict"] for v in s.verdicts if "paper" in v["claim"]}
    # 1 - 0.05/10 = 99.5 % vs the paper's 95 %: within 5 points; 1 - 2/12 = 83.3 % vs 80 %.
    assert words["energy saved per multiply (L-Mul vs IEEE), fp32"] == "agrees"
    assert words["energy saved per dot-product step (L-Mul MAC vs IEEE MAC), fp32"] == "agrees"
    rows[3]["energy_pj"] = 3.0  # 1 - 2/3 = 33 %: differs from 80 %
    s = hw_section.section(_ctx(tmp_path / "b", rows))
    words = {v["claim"].split(":")[0]: v["verdict"] for v in s.verdicts if "paper" in v["claim"]}
    assert words["energy saved per dot-product step (L-Mul MAC vs IEEE MAC), fp32"] == "differs"
    assert "| lmul | fp32 | 300 |" in s.body


def test_missing_and_broken_results(tmp_path):
    s = hw_section.section(_ctx(tmp_path, None))
    assert s.body.startswith("- **Missing:**") and hw_section.COMMAND in s.body
    with pytest.raises(MulfreeError, match="lacks gates"):
        bad = [{k: v for k, v in _row("lmul", "bfloat16", 1, 1.0).items() if k != "gates"}]
        hw_section.section(_ctx(tmp_path / "b", bad))
