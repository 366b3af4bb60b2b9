"""Result folders and files are never destroyed by accident (mulfree._io): an existing output that
is not the command's own earlier result is refused without --force, and a failed write leaves
the old output whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mulfree._io import check_output_dir, output_dir
from mulfree.cli import main
from mulfree.errors import MulfreeError
from mulfree.lmul import lmatmul


def _one_line(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("mulfree: error: ") and err.count("\n") == 1, err
    assert match in err, err


LMUL_ERROR = ["lmul", "error", "--n", "1000", "--mantissa-bits", "2", "--sources", "uniform", "--no-progress"]


def test_lmul_error_out_rules(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    _one_line(capsys, [*LMUL_ERROR, "--out", str(f)], "exists and is not a directory")
    assert f.read_text() == "mine"
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    _one_line(capsys, [*LMUL_ERROR, "--out", str(d)], "not empty (notes.txt)")
    assert (d / "notes.txt").read_text() == "mine"
    assert main([*LMUL_ERROR, "--out", str(d), "--force"]) == 0  # replaced as a whole
    assert sorted(p.name for p in d.iterdir()) == ["error.json", "error.md", "error.png"]
    assert main([*LMUL_ERROR, "--out", str(d)]) == 0  # its own earlier result: rewritten
    capsys.readouterr()


def test_energy_out_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    argv = ["energy", "--model", "mmfree:does-not-matter", "--out", str(tmp_path)]
    _one_line(capsys, argv, "not empty (keep.txt)")


def test_eval_out_file_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    argv = ["eval", "--model", str(tmp_path / "no-model"), "--tasks", "piqa", "--out", str(out)]
    _one_line(capsys, argv, "--resume")
    assert out.read_text() == "{}"


def test_output_dir_failure_keeps_the_old_folder(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with output_dir(d, force=True) as tmp:
            (tmp / "a.txt").write_text("new, half")
            raise RuntimeError("killed")
    assert (d / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(MulfreeError, match="home folder"):  # checked only: nothing is written
        check_output_dir(Path.home(), force=True)


def test_lmatmul_with_empty_inner_dim_is_zeros():
    for sa, sb in (((3, 0), (0, 4)), ((2, 3, 0), (2, 0, 4)), ((0,), (0,)), ((2, 3, 0), (0, 4))):
        a, b = torch.randn(sa), torch.randn(sb)
        out = lmatmul(a, b)
        torch.testing.assert_close(out, torch.matmul(a, b), atol=0, rtol=0)  # zeros, torch's shape
