"""lm-evaluation-harness's `local-completions` model scores multiple choice against the server.

lm-eval asks /v1/completions for `echo` + `logprobs` with token-id prompts (several per request)
and sums each continuation's token logprobs; the oracle here is the backend's own prefill of the
same tokens, so the log-likelihoods must agree exactly (the same float32 rows, summed in the same
order) and so must the accuracy. The task is a tiny local JSON file (no hub download)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.serve.conftest import MODEL_ID, make_server

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")

ITEMS = [
    {"question": "The quick brown", "choices": [" fox", " dog", " weights"], "answer": 0},
    {"question": "Ternary weights replace", "choices": [" multiplications", " the fox"],
     "answer": 0},
    {"question": "Hello", "choices": [" world", " state", " tiny tokenizer"], "answer": 1},
    {"question": "A recurrent state of", "choices": [" constant size", " lazy"], "answer": 0},
]  # fmt: skip

TASK = """task: mulfree_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def write_task(tmp_path) -> str:
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    (tmp_path / "mulfree_tiny_mc.yaml").write_text(TASK.format(data=data))
    return str(tmp_path)


def oracle(backend, ids: list[int], n_cont: int) -> float:
    _, logits = backend.start(ids, all_logits=True)  # [T, V]
    lp = torch.log_softmax(logits.float(), -1)
    return sum(float(lp[i - 1, ids[i]]) for i in range(len(ids) - n_cont, len(ids)))


def test_lm_eval_local_completions_scores_multiple_choice(backend, model_dir, tmp_path,
                                                          monkeypatch):  # fmt: skip
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    with make_server(backend) as s:
        lm = LocalCompletionsAPI(
            model=MODEL_ID,
            base_url=s.url + "/v1/completions",
            tokenizer=str(model_dir),
            tokenizer_backend="huggingface",
            batch_size=3,  # several prompts per request
            max_retries=1,
        )
        out = simple_evaluate(
            model=lm,
            tasks=["mulfree_tiny_mc"],
            task_manager=TaskManager(include_path=write_task(tmp_path)),
            log_samples=True,
        )
    samples = out["samples"]["mulfree_tiny_mc"]
    assert len(samples) == len(ITEMS)
    correct = 0
    for smp in samples:
        doc = smp["doc"]
        got = [r[0][0] for r in smp["resps"]]  # (loglikelihood, is_greedy) per choice
        want = []
        for args in smp["arguments"]:  # (context, continuation) strings, as lm-eval built them
            ctx, cont = lm._encode_pair(*args)
            want.append(oracle(backend, ctx + cont, len(cont)))
        assert got == want
        correct += max(range(len(want)), key=want.__getitem__) == doc["answer"]
    acc = out["results"]["mulfree_tiny_mc"]["acc,none"]
    assert math.isclose(acc, correct / len(ITEMS), rel_tol=0, abs_tol=1e-12)
