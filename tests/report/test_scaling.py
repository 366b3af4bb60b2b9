"""Scaling section: the gap table and its trend from hand-made metrics files."""

import math

import pytest

from mulfree.errors import MulfreeError
from mulfree.report import scaling
from mulfree.report import verdict as V
from mulfree.report.common import Context
from tests.report.helpers import fixture_tree, write_run


def test_read_run_splits_train_and_held_out_rows(tmp_path):
    write_run(tmp_path, "mmfree-d64", [(1000, 6.0), (2000, 5.5)], params=500_000)
    run = scaling.read_run(tmp_path / "scaling", "mmfree-d64")
    assert run.train == [(1000, 6.1), (2000, 5.6)]
    assert run.val == [(1000, 6.0), (2000, 5.5)]
    assert (run.final_val_loss, run.tokens, run.num_params) == (5.5, 2000, 500_000)
    assert scaling.read_run(tmp_path / "scaling", "transformerpp-d64") is None


def test_bad_metrics_line_names_file_and_line(tmp_path):
    d = write_run(tmp_path, "mmfree-d64", [(1000, 6.0)], params=1)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "tokens": "x", "val_loss": 1}\n')
    with pytest.raises(MulfreeError, match=r"metrics.jsonl:3: not a metrics row"):
        scaling.read_run(tmp_path / "scaling", "mmfree-d64")


def test_gap_and_trend(tmp_path):
    fixture_tree(tmp_path)
    runs = {n: scaling.read_run(tmp_path / "scaling", n)
            for _, a, b in scaling.SIZES for n in (a, b)}  # fmt: skip
    rows = scaling.gap_rows(runs)
    # d64: 5.5 - 5.0; d96: 5.0 - 4.8; d128 lacks its Transformer++ run.
    assert [r["gap"] for r in rows] == pytest.approx([0.5, 0.2])
    assert rows[0]["ppl_ratio"] == pytest.approx(math.exp(0.5))
    assert scaling.trend_verdict(rows) == (V.AGREES, "narrows")
    rows[1]["gap"] = 0.7
    assert scaling.trend_verdict(rows) == (V.DIFFERS, "widens")
    assert scaling.trend_verdict(rows[:1]) == (V.NOT_MEASURED, V.NOT_MEASURED)


def test_different_token_counts_are_reported(tmp_path):
    write_run(tmp_path, "mmfree-d64", [(1000, 6.0), (2000, 5.5)], params=1)
    write_run(tmp_path, "transformerpp-d64", [(1000, 5.5)], params=1)
    a, b = (scaling.read_run(tmp_path / "scaling", n) for n in ("mmfree-d64", "transformerpp-d64"))
    assert scaling.same_training(a, b) == "tokens differ (2,000 vs 1,000)"
    write_run(tmp_path, "transformerpp-d64", [(1000, 5.5), (2000, 5.0)], params=1,
              fingerprint="other")  # fmt: skip
    b = scaling.read_run(tmp_path / "scaling", "transformerpp-d64")
    assert scaling.same_training(a, b) == "the corpora differ (data fingerprints)"


def test_section_on_partial_tree(tmp_path):
    fixture_tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    s = scaling.section(Context(results=tmp_path, out=out, repo=None))
    body = s.body
    assert "- **Missing:** run transformerpp-d128 (no metrics.jsonl). Produce it with " \
           "`bash docs/results/scaling/run.sh transformerpp-d128`." in body  # fmt: skip
    assert "- **Unfinished:** run mmfree-d128" in body
    assert "| d64 (2 layers) | 500,000 | 600,000 | 2,000 | 5.5000 (244.7) | 5.0000 (148.4) " \
           "| +0.5000 | ×1.649 |" in body  # fmt: skip
    assert "the gap **narrows**; verdict **agrees**" in body
    assert s.verdicts == [{"claim": "the MatMul-free − Transformer++ gap narrows with size",
                           "verdict": V.AGREES}]  # fmt: skip
    assert (out / "scaling.png").stat().st_size > 1000
    assert "Needs both mmfree-d128-lmul and mmfree-d128" in body


def test_fully_multiplication_free_subsection(tmp_path):
    write_run(tmp_path, "mmfree-d128", [(1000, 5.0), (2000, 4.5)], params=2_000_000)
    write_run(tmp_path, "mmfree-d128-lmul", [(1000, 5.1), (2000, 4.6)], params=2_000_000)
    out = tmp_path / "out"
    out.mkdir()
    s = scaling.section(Context(results=tmp_path, out=out, repo=None))
    assert "Difference (L-Mul − exact): +0.1000 in loss, perplexity ×1.105." in s.body
    assert "| mmfree-d128-lmul | 2,000,000 | 2,000 | 4.6000 | 99.5 |" in s.body
    assert (out / "mulfree_model.png").is_file()
