"""Prompts and metrics as lm-evaluation-harness builds them, on records like the real ones."""

from __future__ import annotations

import math

import pytest

from mulfree.eval.tasks import TASKS, Request, load_items, mean_stderr, score_items, task_sources
from tests.eval.helpers import RECORDS


def _item(task: str, rel: str, i: int = 0):
    return TASKS[task].build(RECORDS[rel][i])


def test_piqa_prompt():
    it = _item("piqa", "hf_datasets/piqa/plain_text/validation")
    assert it.requests == [
        Request("Question: How do I open a jar?\nAnswer:", " Twist the lid."),
        Request("Question: How do I open a jar?\nAnswer:", " Eat the lid."),
    ]
    assert it.gold == 0 and it.choices == ["Twist the lid.", "Eat the lid."]


def test_arc_gold_is_the_index_of_the_answer_key():
    it = _item("arc_easy", "hf_datasets/ai2_arc/ARC-Easy/validation", 1)  # labels "1", "2"
    assert it.gold == 0
    assert it.requests[0] == Request("Question: What do plants need?\nAnswer:", " light")


def test_hellaswag_prompt_and_cleanup():
    it = _item("hellaswag", "hf_datasets/hellaswag/none/validation")
    ctx = "Roof shingle removal: A man is sitting on a roof. He"
    assert {r.context for r in it.requests} == {ctx}
    assert it.choices[1] == "starts pulling up roofing. on a roof."  # " [title]" -> ". "
    assert it.gold == 1


def test_winogrande_partial_scoring():
    it = _item("winogrande", "hf_datasets/winogrande/winogrande_xl/validation")
    assert [r.context for r in it.requests] == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert {r.continuation for r in it.requests} == {" always got the easier cases."}
    assert it.gold == 1


def test_boolq_obqa_mmlu_prompts():
    b = _item("boolq", "hf_datasets/boolq/none/validation", 1)
    assert b.requests[1] == Request(
        "The cat sat on the mat.\nQuestion: is the cat a dog?\nAnswer:", " yes"
    )
    assert b.gold == 0
    o = _item("openbookqa", "hf_datasets/openbookqa/main/validation")
    assert o.requests[0] == Request("The sun is a", " star")
    m = _item("mmlu", "hf_datasets/hails/mmlu_no_train/anatomy/test")
    assert m.requests[0].context == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Which bone is in the arm?\nA. femur\nB. humerus\nC. tibia\nD. skull\nAnswer:"
    )
    assert [r.continuation for r in m.requests] == [" A", " B", " C", " D"] and m.gold == 1


def test_lambada_from_olmo_requests_and_from_text():
    lam = TASKS["lambada"]
    it = lam.build({"request": {"context": "The cat sat on the", "continuation": " mat"}})
    assert it.requests == [Request("The cat sat on the", " mat")]
    it = lam.build({"text": "The cat sat on the mat"})  # EleutherAI/lambada_openai records
    assert it.requests == [Request("The cat sat on the", " mat")]


def test_limit_counts_mmlu_items_round_robin_over_subjects(data_dir):
    task = TASKS["mmlu"]
    src = task_sources(task, data_dir)
    assert len(load_items(task, src, limit=1)) == 1  # N items in all, not N per subject
    two = load_items(task, src, limit=2)  # anatomy 1 + astronomy 1 (of 2)
    assert [it.requests[0].context.split(" about ")[1][:7] for it in two] == ["anatomy", "astrono"]
    assert len(load_items(task, src, limit=3)) == 3 == len(load_items(task, src))


def test_mean_stderr_is_sample_stderr():
    mu, se = mean_stderr([1.0, 0.0, 1.0, 1.0])
    assert mu == 0.75
    assert se == pytest.approx(math.sqrt(0.75 * 0.25 * 4 / 3 / 4))


def test_acc_and_acc_norm_by_hand():
    task = TASKS["piqa"]
    items = [
        TASKS["piqa"].build({"goal": "g", "sol1": "a", "sol2": "bbbb", "label": 1}),
        TASKS["piqa"].build({"goal": "g", "sol1": "aa", "sol2": "b", "label": 0}),
    ]
    # item 0: raw picks 0 (-1 > -2), per char picks 1 (-2/4 > -1/1): acc 0, acc_norm 1
    # item 1: raw picks 0 (-3 > -4), per char too (-3/2 > -4/1): both pick gold 0
    results = [[(-1.0, False), (-2.0, False)], [(-3.0, False), (-4.0, False)]]
    m = score_items(task, items, results)
    assert (m["acc"], m["acc_norm"], m["n"]) == (0.5, 1.0, 2)
    assert m["per_item"] == {"acc": [0, 1], "acc_norm": [1, 1], "choice": [0, 0],
                             "choice_norm": [1, 0],
                             "loglikelihoods": [[-1.0, -2.0], [-3.0, -4.0]]}  # fmt: skip


def test_lambada_metrics_by_hand():
    task = TASKS["lambada"]
    items = [task.build({"text": "a b"}), task.build({"text": "c d"})]
    m = score_items(task, items, [[(-1.0, True)], [(-3.0, False)]])
    assert m["acc"] == 0.5 and m["ppl"] == pytest.approx(math.exp(2.0))
    assert m["ppl_stderr"] == pytest.approx(math.exp(2.0) * mean_stderr([-1.0, -3.0])[1])
