"""build_report / `mulfree report`: whole reports on fixture trees and on the repository's results."""

import json
from pathlib import Path

import pytest

from mulfree.cli import main
from mulfree.errors import MulfreeError
from mulfree.report import build as B
from mulfree.report import build_report
from mulfree.report.energy_section import paper_arithmetic, savings
from tests.report.helpers import fixture_tree

REPO = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_report_on_fixture_tree(tmp_path, fast):
    results = fixture_tree(tmp_path / "results")
    out = build_report(tmp_path / "report", results_dir=results, command="mulfree report X", **fast)
    md = (out / "README.md").read_text()
    assert md.startswith("# mulfree fidelity report")
    assert "- command: `mulfree report X`" in md
    assert "- machine: " in md and " cores " in md
    for i, title in enumerate(
        ("L-Mul error vs mantissa bits", "Gemma 3 270M", "MatMul-free vs Transformer++",
         "Energy per token", "Kernel and decode speed", "Carbon-aware scheduling"), 1):  # fmt: skip
        assert f"\n## {i}. {title}" in md
    # stored results used, partial ones marked, missing ones given their command
    assert "(40, partial)" in md
    assert "- **Missing:** run transformerpp-d128 (no metrics.jsonl)" in md
    assert "| 1 | 123.4 |" in md  # the stored benchmark table, included as written
    assert "#### Decode" in md  # its heading nested under the section
    assert ("- **Missing:** bench_serve (no bench_serve.md). Produce it with "
            "`bash docs/results/benchmarks/run.sh bench_serve`.") in md  # fmt: skip
    meta = json.loads((out / "report.json").read_text())
    assert meta["format"] == "mulfree-report"
    pngs = {f for s in meta["sections"] for f in s["files"]}
    assert pngs == {
        "lmul_error.png",
        "scaling.png",
        "energy_mmfree.png",
        "energy_transformerpp.png",
        "carbon_schedule.png",
    }
    assert all((out / f).stat().st_size > 1000 for f in pngs)
    verdicts = [v["verdict"] for s in meta["sections"] for v in s["verdicts"]]
    assert "differs" in verdicts and "agrees" in verdicts
    assert _leftovers(tmp_path) == []  # no temporary folder left beside the report


def test_rebuild_replaces_a_report_but_nothing_else(tmp_path, fast, monkeypatch):
    results = fixture_tree(tmp_path / "results")
    monkeypatch.setattr(B, "SECTIONS", (B.gemma, B.benchmarks))  # the cheap sections
    out = build_report(tmp_path / "r", results_dir=results, **fast)
    (out / "stale.png").write_text("old")
    build_report(out, results_dir=results, **fast)
    assert not (out / "stale.png").exists() and (out / "README.md").is_file()
    other = tmp_path / "src"
    other.mkdir()
    (other / "keep.py").write_text("x = 1\n")
    with pytest.raises(MulfreeError, match="not an earlier mulfree report"):
        build_report(other, results_dir=results, **fast)
    assert [p.name for p in other.iterdir()] == ["keep.py"]
    assert _leftovers(tmp_path) == []


def test_failure_leaves_nothing_half_written(tmp_path, fast, monkeypatch):
    results = fixture_tree(tmp_path / "results")

    class Boom:
        @staticmethod
        def section(ctx):
            (ctx.out / "half.png").write_text("x")
            raise MulfreeError("boom")

    monkeypatch.setattr(B, "SECTIONS", (B.benchmarks, Boom))
    with pytest.raises(MulfreeError, match="boom"):
        build_report(tmp_path / "report", results_dir=results, **fast)
    assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []


def test_cli_bad_results_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mulfree: error: --results ")
    assert "not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--results", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_refresh_options_need_refresh(tmp_path, capsys):
    assert main(["report", "--limit", "5", "--out", str(tmp_path / "r")]) == 2
    assert "apply to --refresh only" in capsys.readouterr().err


def test_cli_writes_the_report(tmp_path, capsys, monkeypatch):
    results = fixture_tree(tmp_path / "results")
    monkeypatch.setattr(B, "SECTIONS", (B.scaling,))
    out = tmp_path / "r"
    assert main(["report", "--results", str(results), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}/README.md"
    md = (out / "README.md").read_text()
    assert f"- command: `mulfree report --out {out} --results {results}`" in md
    assert "the gap **narrows**" in md
    assert f"Results read from `{results}/scaling/<run>/`." in md  # where they really were


def test_paper_energy_arithmetic():
    from mulfree.energy.tables import EnergyTable

    p = paper_arithmetic(EnergyTable.load())
    assert p["per_multiply"] == pytest.approx(100 * (1 - 0.1 / 3.7))  # 97.3 %: "95 %"
    assert p["per_dot"] == pytest.approx(100 * (1 - 1.0 / 4.6))  # 78.3 %: "80 %"


def test_energy_savings_from_rows():
    class Row:
        def __init__(self, name, compute, memory):
            self.name = name
            self.energy = {"compute_pJ": compute, "memory_pJ": memory,
                           "total_pJ": compute + memory}  # fmt: skip

    class Rep:
        rows = [Row("fp32", 10.0, 90.0), Row("lmul-all", 5.0, 90.0)]

    s = savings(Rep, "lmul-all")
    assert s == pytest.approx({"compute": 50.0, "total": 5.0, "memory_share_base": 90.0})
    assert savings(Rep, "mulfree") is None


def test_report_from_the_repository_results(tmp_path, fast):
    """A fresh checkout's docs/results builds (whatever is stored there now)."""
    if B.source_checkout() is None:
        pytest.skip("not running from a checkout")
    out = build_report(tmp_path / "report", **fast)
    md = (out / "README.md").read_text()
    assert "## 2. Gemma 3 270M" in md and "| fp32 |" in md
    meta = json.loads((out / "report.json").read_text())
    assert meta["results"] == str(REPO / "docs" / "results")
    assert len(meta["sections"]) == len(B.SECTIONS) == 7
