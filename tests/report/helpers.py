"""Small hand-made result trees for the report's tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mulfree.eval.tasks import mean_stderr


def eval_result(label: str, task: str, acc: list[int], ll: list[float] | None = None) -> dict:
    """A `mulfree eval` results dict for one task from per-item values."""
    m: dict = {"n": len(acc), "seconds": 1.0, "seconds_per_item": 0.01}
    m["acc"], m["acc_stderr"] = mean_stderr([float(a) for a in acc])
    m["per_item"] = {"acc": list(acc)}
    if task == "lambada":
        mu, se = mean_stderr(ll)
        m.update(ppl=math.exp(-mu), ppl_stderr=math.exp(-mu) * se)
        m["per_item"]["ll"] = list(ll)
    else:
        m["acc_norm"], m["acc_norm_stderr"] = m["acc"], m["acc_stderr"]
        m["per_item"]["acc_norm"] = list(acc)
    return {
        "format": "mulfree-eval",
        "version": 1,
        "label": label,
        "model": "gemma3-270m",
        "attention": None,
        "limit": len(acc),
        "tasks": {task: m},
        "text": {},
    }


def write_eval(root: Path, label: str, task: str, acc, ll=None, partial=False) -> Path:
    res = eval_result(label, task, acc, ll)
    if partial:
        res["tasks"][task]["partial"] = True
    path = root / "gemma3-270m" / label / (f"{task}.json" + (".partial" if partial else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return path


def write_run(root: Path, name: str, val: list[tuple[int, float]], params: int,
              finished: bool = True, fingerprint: str = "abc") -> Path:  # fmt: skip
    """A scaling run: train rows at every val point (loss + 0.1) and the held-out rows."""
    d = root / "scaling" / name
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for tokens, loss in val:
        rows.append({"step": tokens // 4096, "tokens": tokens, "loss": loss + 0.1, "lr": 1e-3})
        rows.append({"step": tokens // 4096, "tokens": tokens, "val_loss": loss,
                     "val_ppl": math.exp(loss)})  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        info = {
            "format": "mulfree-trained-model",
            "version": 1,
            "tokens_seen": val[-1][0],
            "num_params": params,
            "final_val_loss": val[-1][1],
            "final_val_ppl": math.exp(val[-1][1]),
            "data_fingerprint": fingerprint,
        }
        (d / "training_info.json").write_text(json.dumps(info))
    return d


def fixture_tree(root: Path) -> Path:
    """A results tree with finished, partial and missing entries in every section."""
    n = 100
    ref_acc = [1] * 60 + [0] * 40
    ref_ll = [-2.0] * n
    write_eval(root, "fp32", "lambada", ref_acc, ref_ll)
    write_eval(root, "fp32", "piqa", ref_acc)
    write_eval(root, "lmul_k3", "lambada", ref_acc, ref_ll)  # identical: within error
    write_eval(root, "lmul_k4", "lambada", [0] * 30 + ref_acc[30:], [-2.5] * n)  # clearly worse
    write_eval(root, "fp8_e5m2", "lambada", ref_acc, ref_ll)
    write_eval(root, "fp8_e4m3", "lambada", ref_acc, ref_ll)
    write_eval(root, "fp8_e5m2", "piqa", ref_acc[:40], partial=True)  # still running
    write_eval(root, "linear_k3", "lambada", ref_acc, ref_ll)
    write_run(root, "mmfree-d64", [(1000, 6.0), (2000, 5.5)], params=500_000)
    write_run(root, "transformerpp-d64", [(1000, 5.5), (2000, 5.0)], params=600_000)
    write_run(root, "mmfree-d96", [(1000, 5.5), (2000, 5.0)], params=900_000)
    write_run(root, "transformerpp-d96", [(1000, 5.2), (2000, 4.8)], params=1_000_000)
    write_run(root, "mmfree-d128", [(1000, 5.0), (2000, 4.6)], params=2_000_000, finished=False)
    bench = root / "benchmarks"
    bench.mkdir(parents=True)
    (bench / "bench_decode.md").write_text("# Decode\n\n`python benchmarks/bench_decode.py`\n\n"
                                           "| threads | tok/s |\n|---|---:|\n| 1 | 123.4 |\n")  # fmt: skip
    return root
