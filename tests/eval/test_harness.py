"""evaluate() end to end on tiny data and a tiny model; CLI errors are one line."""

from __future__ import annotations

import json

import pytest
import torch

from mulfree.attention import LMulConfig
from mulfree.cli import main
from mulfree.errors import MulfreeError
from mulfree.eval import TASKS, EvalConfig, comparison_table, evaluate, read_results
from mulfree.eval.scorer import loglikelihoods
from mulfree.eval.tasks import load_items, task_sources


def test_evaluate_every_task(model, tok, data_dir, tmp_path):
    cfg = EvalConfig(tasks=tuple(TASKS), limit=2, data_dir=str(data_dir), progress=False)
    res = evaluate(model, tok, cfg, out_json=tmp_path / "r.json", out_md=tmp_path / "r.md")
    assert set(res["tasks"]) == set(TASKS)
    for name, m in res["tasks"].items():
        assert 0.0 <= m["acc"] <= 1.0 and m["n"] >= 1
        assert m["acc_stderr"] == m["acc_stderr"] or m["n"] == 1  # nan only for one item
        for metric in TASKS[name].metrics:
            assert metric in m
    # --limit counts items in all: MMLU takes one item of each of its 2 subjects
    assert res["tasks"]["piqa"]["n"] == 2 and res["tasks"]["mmlu"]["n"] == 2
    assert res["attention"] is None and res["attn_implementation"] == "eager"
    assert read_results(tmp_path / "r.json")["tasks"].keys() == res["tasks"].keys()
    assert "| piqa | acc_norm |" in (tmp_path / "r.md").read_text()


def test_accuracy_comes_from_the_scorer(model, tok, data_dir):
    """acc recomputed from loglikelihoods() by hand equals what evaluate() reports."""
    task = TASKS["arc_easy"]
    items = load_items(task, task_sources(task, data_dir))
    correct = []
    for it in items:
        lls = [ll for ll, _ in loglikelihoods(model, tok, it.requests)]
        correct.append(float(lls.index(max(lls)) == it.gold))
    res = evaluate(
        model, tok, EvalConfig(tasks=("arc_easy",), data_dir=str(data_dir), progress=False)
    )
    assert res["tasks"]["arc_easy"]["acc"] == sum(correct) / len(correct)


def test_evaluate_with_lmul_applies_and_restores(model, tok, data_dir):
    cfg = EvalConfig(tasks=("lambada",), data_dir=str(data_dir), progress=False)
    exact = evaluate(model, tok, cfg)
    lmul = evaluate(model, tok, cfg, lmul=LMulConfig(mantissa_bits=2))
    assert lmul["attention"]["mantissa_bits"] == 2
    assert lmul["attn_implementation"] == LMulConfig(mantissa_bits=2).name
    assert model.config._attn_implementation == "eager"  # removed after the run
    assert lmul["tasks"]["lambada"]["per_item"]["ll"] != exact["tasks"]["lambada"]["per_item"]["ll"]


def test_matmul_free_model_evaluates(tok, data_dir):
    from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

    torch.manual_seed(0)
    mm = HGRNBitForCausalLM(
        HGRNBitConfig.from_name("tiny", vocab_size=len(tok), num_hidden_layers=1)
    )
    cfg = EvalConfig(tasks=("lambada", "piqa"), data_dir=str(data_dir), progress=False)
    res = evaluate(mm.eval(), tok, cfg)
    assert res["tasks"]["lambada"]["n"] == 3 and res["tasks"]["piqa"]["n"] == 3
    assert res["tasks"]["lambada"]["ppl"] > 1


def test_text_file_perplexity(model, tok, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The cat sat on the mat. " * 5)
    res = evaluate(model, tok, EvalConfig(text_files=(str(f),), text_window=16, progress=False))
    m = res["text"][str(f)]
    assert m["ppl"] > 1 and m["tokens"] == len(tok.encode(f.read_text())) - 1 and m["window"] == 16


def test_comparison_table_pairs_items():
    def run(label, acc):
        return {"label": label, "tasks": {"piqa": {
            "n": 4, "acc": sum(acc) / 4, "acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1,
            "per_item": {"acc": acc, "acc_norm": [1, 0, 1, 0]}}}}  # fmt: skip

    table = comparison_table([run("ref", [1, 1, 0, 0]), run("x", [1, 0, 0, 0])], reference="ref")
    assert "| ref | 50.0 ± 10.0 (4) | 50.0 ± 10.0 (4) |" in table
    assert "| x | -25.0 ± 25.0 (4) | +0.0 ± 0.0 (4) |" in table
    with pytest.raises(MulfreeError, match="reference 'nope'"):
        comparison_table([run("ref", [1, 1, 0, 0])], reference="nope")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tasks=("piqa", "nope")), "unknown task 'nope'"),
        (dict(), "nothing to evaluate"),
        (dict(tasks=("piqa",), limit=0), "limit must be a positive integer"),
        (dict(tasks=("piqa",), task_data={"nope": "x"}), "unknown task 'nope'"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(MulfreeError, match=message):
        EvalConfig(**kwargs)


def test_missing_and_bad_data(model, tok, tmp_path, data_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MulfreeError, match="no data for task 'piqa' under"):
        evaluate(model, tok, EvalConfig(tasks=("piqa",), data_dir=str(empty), progress=False))
    with pytest.raises(MulfreeError, match="eval data folder not found"):
        evaluate(model, tok, EvalConfig(tasks=("piqa",), data_dir=str(tmp_path / "x")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(MulfreeError, match="does not look like piqa data"):
        evaluate(
            model, tok, EvalConfig(tasks=("piqa",), task_data={"piqa": str(bad)}, progress=False)
        )
    with pytest.raises(MulfreeError, match="pass the tokenizer"):
        evaluate(model, None, EvalConfig(tasks=("piqa",), data_dir=str(data_dir)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tok):
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_cli_eval_writes_results(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main([
        "eval", "--model", str(model_dir), "--tasks", "piqa,lambada", "--limit", "2",
        "--data-dir", str(data_dir), "--attention", "lmul", "--mantissa-bits", "3",
        "--no-progress", "--no-fetch", "--threads", "1", "--label", "k3", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["label"] == "k3" and res["attention"]["mantissa_bits"] == 3
    assert "| piqa | acc |" in capsys.readouterr().out
    assert main(["eval-table", str(out), str(out)]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--tasks", "piqa", "--model-dir-missing"], "unrecognized arguments"),
        (["--tasks", "piqa", "--mantissa-bits", "3"], "need --attention"),
        (
            ["--tasks", "piqa", "--attention", "lmul", "--mantissa-bits", "5"],
            "expected 2, 3, 4 or full",
        ),
        (["--tasks", "piqa", "--task-data", "piqa"], "--task-data expects TASK=PATH"),
        (["--tasks", "piqa", "--resume"], "resume needs the results file"),
    ],
)
def test_cli_bad_input_is_one_line(model_dir, data_dir, capsys, args, message):
    argv = ["eval", "--model", str(model_dir), "--data-dir", str(data_dir), "--no-progress", *args]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit from inside the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_missing_model_and_data(tmp_path, data_dir, capsys):
    rc = main(
        ["eval", "--model", str(tmp_path / "nope"), "--tasks", "piqa", "--data-dir", str(data_dir)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "is neither a local folder nor a known model" in err
    assert len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["eval", "--model", "x", "--tasks", "hellaswag", "--data-dir", str(empty)])
    err = capsys.readouterr().err
    assert rc == 2 and "no data for task 'hellaswag'" in err and len(err.strip().splitlines()) == 1
    rc = main(["eval-table", str(tmp_path / "missing.json")])
    assert rc == 2 and "cannot read results" in capsys.readouterr().err


def test_chunks_write_partial_results_and_match_one_chunk(
    model, tok, data_dir, tmp_path, monkeypatch
):
    import mulfree.eval.harness as harness

    writes, real = [], harness._write_json

    def spy(path, results):
        writes.append({t: (m["n"], m.get("partial", False)) for t, m in results["tasks"].items()})
        real(path, results)

    monkeypatch.setattr(harness, "_write_json", spy)
    cfg = dict(tasks=("piqa",), data_dir=str(data_dir), progress=False)
    chunked = evaluate(model, tok, EvalConfig(**cfg, chunk_items=2), out_json=tmp_path / "c.json")
    assert writes[0] == {"piqa": (2, True)} and writes[-1] == {"piqa": (3, False)}
    whole = evaluate(model, tok, EvalConfig(**cfg))
    assert chunked["tasks"]["piqa"]["per_item"] == whole["tasks"]["piqa"]["per_item"]
    assert "partial" not in chunked["tasks"]["piqa"]


def _cut(results: dict, task: str, n: int) -> dict:
    """`results` as a run stopped after the first n items of `task` would have written them."""
    cut = json.loads(json.dumps(results))
    m = cut["tasks"][task]
    m["per_item"] = {k: v[:n] for k, v in m["per_item"].items()}
    m.update(n=n, partial=True)
    cut.pop("finished", None)
    return cut


@pytest.mark.parametrize("task", ["piqa", "lambada"])
def test_resume_continues_a_stopped_run(model, tok, data_dir, tmp_path, monkeypatch, task):
    import mulfree.eval.scorer as scorer

    cfg = EvalConfig(tasks=(task,), data_dir=str(data_dir), progress=False)
    whole = evaluate(model, tok, cfg)
    out = tmp_path / "r.json"
    out.write_text(json.dumps(_cut(whole, task, 1)))
    scored, real = [], scorer.loglikelihoods

    def spy(model_, tok_, reqs, **kw):
        scored.extend(reqs)
        return real(model_, tok_, reqs, **kw)

    monkeypatch.setattr(scorer, "loglikelihoods", spy)
    resumed = evaluate(model, tok, cfg, out_json=out, resume=True)
    items = load_items(TASKS[task], task_sources(TASKS[task], data_dir))
    assert scored == [r for it in items[1:] for r in it.requests]  # item 0 is not scored again
    got, want = resumed["tasks"][task], whole["tasks"][task]
    assert got["per_item"] == want["per_item"] and got["n"] == len(items) > 1
    assert "partial" not in got
    for key in TASKS[task].metrics:
        assert got[key] == want[key]
    assert len(resumed["resumed"]) == 1
    assert json.loads(out.read_text())["tasks"][task]["n"] == len(items)
    # a finished run resumes to itself without scoring anything
    scored.clear()
    again = evaluate(model, tok, cfg, out_json=out, resume=True)
    assert scored == [] and again["tasks"][task]["per_item"] == want["per_item"]


def test_resume_refuses_another_run(model, tok, data_dir, tmp_path):
    cfg = EvalConfig(tasks=("piqa",), data_dir=str(data_dir), progress=False)
    out = tmp_path / "r.json"
    evaluate(model, tok, cfg, out_json=out)
    before = out.read_text()
    with pytest.raises(MulfreeError, match="its attention is None"):
        evaluate(model, tok, cfg, out_json=out, resume=True, lmul=LMulConfig(mantissa_bits=3))
    assert model.config._attn_implementation == "eager"  # L-Mul removed after the refusal
    with pytest.raises(MulfreeError, match="its limit is None, this run's is 1"):
        evaluate(model, tok, EvalConfig(**{**cfg.__dict__, "limit": 1}), out_json=out, resume=True)
    bad = json.loads(before)
    bad["tasks"]["piqa"]["per_item"]["acc"].append(1)
    out.write_text(json.dumps(bad))
    with pytest.raises(MulfreeError, match="per-item values are malformed"):
        evaluate(model, tok, cfg, out_json=out, resume=True)
    out.write_text("{not json")
    with pytest.raises(MulfreeError, match="cannot resume from"):
        evaluate(model, tok, cfg, out_json=out, resume=True)
    with pytest.raises(MulfreeError, match="resume needs the results file"):
        evaluate(model, tok, cfg, resume=True)


def test_resume_with_lmul_in_the_linear_layers(model, tok, data_dir, tmp_path):
    # LMulConfig holds tuples (linear_skip) that the JSON file stores as lists: a stopped
    # linear-layer run must still be recognised as the same run.
    lmul = LMulConfig(mantissa_bits=3, linear=True)
    cfg = EvalConfig(tasks=("piqa",), data_dir=str(data_dir), progress=False)
    whole = evaluate(model, tok, cfg, lmul=lmul)
    assert isinstance(whole["attention"]["linear_skip"], tuple)
    out = tmp_path / "r.json"
    out.write_text(json.dumps(_cut(whole, "piqa", 1)))
    resumed = evaluate(model, tok, cfg, out_json=out, resume=True, lmul=lmul)
    assert resumed["tasks"]["piqa"]["per_item"] == whole["tasks"]["piqa"]["per_item"]
