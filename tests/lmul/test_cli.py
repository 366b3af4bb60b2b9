"""`mulfree lmul ...` from a user's seat: outputs written, bad input -> one line, non-zero exit."""

import json
import subprocess
import sys

import pytest

from mulfree.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_error_table_written(tmp_path, capsys):
    rc, out, err = _run(
        capsys,
        "lmul",
        "error",
        "--n",
        "5000",
        "--mantissa-bits",
        "1-3,23",
        "--sources",
        "uniform,gaussian",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    assert rc == 0, err
    assert "| 3 |" in out and "fp8_e4m3" in out
    data = json.loads((tmp_path / "error.json").read_text())
    assert set(data["rows"]) == {"uniform", "gaussian"}
    # Exact 3-bit multiplication and fp8 e4m3 (3 mantissa bits) must agree closely on uniform
    # operands (both round operands and product to 3 bits): a cross-check of the two baselines.
    u = data["rows"]["uniform"]
    assert abs(u["kbit_mul"]["3"]["mean"] - u["fp8_e4m3"][""]["mean"]) < 0.005
    # Full-mantissa L-Mul's mean error is well below 1/8 (it drops x_m * y_m, at most 1 - 2^-4
    # of the mantissa product, relative error averaging a few percent).
    assert 0.01 < u["lmul_int"]["23"]["mean"] < 0.05
    assert (tmp_path / "error.png").stat().st_size > 10_000
    assert (tmp_path / "error.md").read_text().startswith("# L-Mul relative error")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["lmul", "matmul", "--format", "fp64"], "unknown float format"),
        (["lmul", "matmul", "--mantissa-bits", "24"], "outside 1..23"),
        (["lmul", "matmul", "--format", "bf16", "--mantissa-bits", "8"], "outside 1..7"),
        (["lmul", "matmul", "--shape-a", "4,5", "--shape-b", "6,3"], "do not multiply"),
        (["lmul", "matmul", "--shape-a", "4,x"], "expected a shape"),
        (["lmul", "error", "--mantissa-bits", "0-3"], "outside 1..23"),
        (["lmul", "error", "--mantissa-bits", "30"], "outside 1..23"),
        (["lmul", "error", "--sources", "weird"], "unknown operand source"),
        (["lmul", "error", "--sources", "model"], "needs --model"),
        (["lmul", "error", "--model", "/nonexistent/model", "--n", "2000"], "does not exist"),
        (["lmul", "nosuch"], "invalid choice"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_input_one_line(argv, needle, capsys, tmp_path):
    if argv[1] == "error":
        argv = [*argv, "--out", str(tmp_path / "out"), "--no-progress"]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit from inside parse_args
        rc = e.code
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mulfree: error:") and needle in lines[0], err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_matmul_check_runs(capsys):
    rc, out, _ = _run(
        capsys,
        "lmul",
        "matmul",
        "--shape-a",
        "8,16",
        "--shape-b",
        "16,4",
        "--format",
        "bf16",
        "--mantissa-bits",
        "3",
    )
    assert rc == 0 and "relative Frobenius error" in out


def test_console_script_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "mulfree.cli", "lmul", "matmul", "--format", "nope"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "Traceback" not in r.stderr
