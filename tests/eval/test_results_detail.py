"""--limit counts items (MMLU round robin over subjects) and says when a task is smaller; the
results keep each item's choice and per-choice log-likelihoods; bad arguments are refused
before torch loads; the accuracy table as a PNG with error bars."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mulfree.cli import main
from mulfree.eval import EvalConfig, evaluate
from mulfree.eval.scorer import loglikelihoods
from mulfree.eval.tasks import TASKS, load_items, select_items, task_sources


@pytest.mark.parametrize(
    "sizes, limit, want",
    [
        ([5], 3, [(0, 0), (0, 1), (0, 2)]),
        ([2, 3, 1], 4, [(0, 0), (0, 1), (1, 0), (2, 0)]),
        ([1, 3], 3, [(0, 0), (1, 0), (1, 1)]),  # a subject that runs out leaves room to others
        ([2, 1], 10, [(0, 0), (0, 1), (1, 0)]),  # a smaller task: all of it
        ([2, 1], None, [(0, 0), (0, 1), (1, 0)]),
    ],
    ids=["one-source", "round-robin", "runs-out", "above-size", "no-limit"],
)
def test_limit_counts_items_round_robin_over_sources(sizes, limit, want):
    assert select_items([[None] * n for n in sizes], limit) == want


def test_results_keep_choices_and_loglikelihoods(model, tok, data_dir, capsys):
    cfg = EvalConfig(tasks=("arc_easy", "piqa"), limit=1000, data_dir=str(data_dir),
                     progress=False)  # fmt: skip
    res = evaluate(model, tok, cfg)
    err = capsys.readouterr().err
    for t in ("arc_easy", "piqa"):
        m = res["tasks"][t]
        assert f"{t}: --limit 1000 but the data hold {m['available']} items" in err
        assert m["n"] == m["available"]
        task = TASKS[t]
        items = load_items(task, task_sources(task, data_dir))
        per = m["per_item"]
        for i, it in enumerate(items):
            lls = [ll for ll, _ in loglikelihoods(model, tok, it.requests)]
            assert per["loglikelihoods"][i] == lls
            assert per["choice"][i] == lls.index(max(lls))
            assert per["acc"][i] == int(per["choice"][i] == it.gold)
        if "acc_norm" in task.metrics:
            assert len(per["choice_norm"]) == m["n"]


@pytest.mark.parametrize(
    "args, message",
    [(["--tasks", "nope"], "unknown task 'nope'"),
     (["--tasks", "piqa", "--mantissa-bits", "7"], "expected 2, 3, 4 or full"),
     ([], "nothing to evaluate")],  # fmt: skip
    ids=["task", "mantissa-bits", "nothing"],
)
def test_bad_arguments_are_refused_before_torch_loads(args, message):
    code = (
        "import sys\nfrom mulfree.cli import main\n"
        f"try:\n    rc = main(['eval', '--model', 'x', *{args!r}])\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False", "False"], r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_accuracy_png_with_error_bars(model, tok, data_dir, tmp_path):
    import matplotlib.image

    a = evaluate(model, tok, EvalConfig(tasks=("piqa", "arc_easy"), data_dir=str(data_dir),
                                        progress=False, label="a"))  # fmt: skip
    for name, r in (("a", a), ("b", {**a, "label": "b"})):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    png = tmp_path / "acc.png"
    assert main(["eval-table", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--png", str(png)]) == 0  # fmt: skip
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    from mulfree.eval.plot import accuracy_png

    with pytest.raises(Exception, match="nothing to plot"):
        accuracy_png([{"tasks": {}}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
