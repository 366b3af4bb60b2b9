"""Section 2: Gemma 3 270M with exact, fp8 and L-Mul attention (paper Tables 2/5).

Reads the stored `mulfree eval` results `<results>/gemma3-270m/<config>/<task>.json` (a
`.json.partial` — a run not finished — is used when no `.json` exists, and its rows are marked
partial), shows them with `mulfree.eval.comparison_table`, and checks the L-Mul paper's claims with
paired differences on the same items. `refresh` re-runs the evaluations as
`docs/results/gemma3-270m/run.sh` does.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections import Counter
from pathlib import Path

from mulfree.errors import MulfreeError
from mulfree.report import verdict as V
from mulfree.report.common import Context, Section, display_path, missing_line

MODEL = "gemma3-270m"
TASKS = ("lambada", "piqa", "arc_easy", "hellaswag", "winogrande")
ATTENTION_CONFIGS = (
    "fp32", "bf16", "fp8_e4m3", "fp8_e5m2", "lmul_full", "lmul_k4", "lmul_k3", "lmul_k2",
)  # fmt: skip
LINEAR_CONFIGS = ("linear_full", "linear_k4", "linear_k3", "linear_k2")
REFERENCE = "fp32"
DEFAULT_LIMIT = 500  # items per task of the stored attention runs (docs/eval.md)

# `mulfree eval` flags per configuration: the same as `flags()` in
# docs/results/gemma3-270m/run.sh (a test keeps the two equal).
CONFIG_FLAGS = {
    "fp32": "--attention model --label fp32",
    "bf16": "--attention exact --attn-dtype bfloat16 --label bf16",
    "fp8_e4m3": "--attention fp8_e4m3 --label fp8_e4m3",
    "fp8_e5m2": "--attention fp8_e5m2 --label fp8_e5m2",
    "lmul_k4": "--attention lmul --mantissa-bits 4 --label lmul_k4",
    "lmul_k3": "--attention lmul --mantissa-bits 3 --label lmul_k3",
    "lmul_k2": "--attention lmul --mantissa-bits 2 --label lmul_k2",
    "lmul_full": "--attention lmul --mantissa-bits full --label lmul_full",
    "linear_k4": "--attention lmul --mantissa-bits 4 --linear --label linear_k4",
    "linear_k3": "--attention lmul --mantissa-bits 3 --linear --label linear_k3",
    "linear_k2": "--attention lmul --mantissa-bits 2 --linear --label linear_k2",
    "linear_full": "--attention lmul --mantissa-bits full --linear --label linear_full",
}
RUN_SH = "docs/results/gemma3-270m/run.sh"


# --- reading the stored results ------------------------------------------------------------


def result_path(root: Path, config: str, task: str) -> Path | None:
    """The finished run's JSON, else the one still being written, else None (as tables.sh)."""
    done = root / config / f"{task}.json"
    if done.is_file():
        return done
    partial = root / config / f"{task}.json.partial"
    return partial if partial.is_file() else None


def load_runs(root: Path, configs, tasks=TASKS) -> tuple[list[dict], list[tuple[str, str]]]:
    """(runs in config order, missing (config, task) pairs) from a results tree."""
    from mulfree.eval.harness import read_results

    runs, missing = [], []
    for cfg in configs:
        for task in tasks:
            path = result_path(root, cfg, task)
            if path is None:
                missing.append((cfg, task))
                continue
            try:
                run = read_results(path)
            except MulfreeError:
                if not path.name.endswith(".partial"):
                    raise
                # The run finished (.partial renamed to .json) between finding and reading it.
                run = read_results(result_path(root, cfg, task))
            if run.get("label") != cfg:
                raise MulfreeError(
                    f"{path}: its label is {run.get('label')!r}, not {cfg!r} (the folder's "
                    "configuration); the results tree is mixed up"
                )
            if task not in run.get("tasks", {}):
                missing.append((cfg, task))
                continue
            run = {**run, "tasks": {task: dict(run["tasks"][task])}}
            if path.name.endswith(".partial"):
                # A run that did not finish (still running, or stopped): whatever its metrics
                # say, they are not the whole task.
                run["tasks"][task]["partial"] = True
            runs.append(run)
    return runs, missing


def _columns(runs: list[dict]) -> list[tuple[str, str]]:
    from mulfree.eval import TASKS as EVAL_TASKS

    present = {t for r in runs for t in r["tasks"]}
    return [(t, m) for t in TASKS if t in present for m in EVAL_TASKS[t].metrics]


def differences(runs: list[dict], label: str, ref: str, columns) -> list[V.Difference]:
    """`label` minus `ref` for every (task, metric) both have, paired on the same items."""
    from mulfree.eval.harness import merge_runs, paired_difference

    merged = merge_runs(runs)
    a, b = merged.get(label, {}), merged.get(ref, {})
    out = []
    for task, metric in columns:
        d = paired_difference(a.get(task), b.get(task), metric)
        if d is not None and d[2] > 0:
            out.append(V.Difference(*d, label=f"{task} {metric}"))
    return out


def _diff_cell(diffs: list[V.Difference]) -> str:
    from mulfree.eval.harness import format_difference

    if not diffs:
        return "no paired items"
    return "<br>".join(
        f"{d.label} {format_difference(d.label.split()[-1], d.mean, d.se, d.n)} ({d.word()})"
        for d in diffs
    )


def _limit_for(runs: list[dict], task: str) -> int:
    """The item count to ask for: this task's usual limit, else the table's, else 500."""
    for pick in (lambda r: task in r["tasks"], lambda r: True):
        limits = Counter(r["limit"] for r in runs if pick(r) and r.get("limit"))
        if limits:
            return limits.most_common(1)[0][0]
    return DEFAULT_LIMIT


def _missing_lines(runs, missing, results_arg: str) -> list[str]:
    lines = []
    for task in TASKS:
        cfgs = [c for c, t in missing if t == task]
        if cfgs:
            cmd = f"bash {RUN_SH} report {task} {','.join(cfgs)} {_limit_for(runs, task)}"
            lines.append(missing_line(f"{task} for {', '.join(cfgs)}", cmd))
    for r in runs:
        for task, m in r["tasks"].items():
            if m.get("partial"):
                lines.append(
                    f"- **Partial:** {task} for {r['label']} ({m['n']} items so far; the run is "
                    f"going on or was stopped: `{results_arg}/{r['label']}/{task}.json.partial`)."
                )
    return lines


# --- claims ---------------------------------------------------------------------------------

CLAIM_LOSSLESS = "L-Mul attention is almost lossless (no accuracy loss vs exact attention)"
CLAIM_E5M2 = "3-bit-mantissa L-Mul is as accurate as, or better than, fp8 e5m2"
CLAIM_E4M3 = "4-bit-mantissa L-Mul ≈ fp8 e4m3"
CLAIM_LINEAR = (
    "3-bit L-Mul for all float multiplications ≈ fp8 e4m3 precision (fine-tuning and inference)"
)


def claims(runs: list[dict], linear_runs: list[dict]) -> list[dict]:
    """Every claim checked: {"claim", "comparison", "diffs", "context", "verdict"}."""
    cols = _columns(runs)
    out = []
    for cfg in ("lmul_full", "lmul_k4", "lmul_k3", "lmul_k2"):
        d = differences(runs, cfg, REFERENCE, cols)
        out.append(dict(claim=CLAIM_LOSSLESS, comparison=f"{cfg} − fp32", diffs=d,
                        context="", verdict=V.no_worse(d)))  # fmt: skip
    for cfg, fp8, claim, rule in (
        ("lmul_k3", "fp8_e5m2", CLAIM_E5M2, V.no_worse),
        ("lmul_k4", "fp8_e4m3", CLAIM_E4M3, V.equal),
    ):
        d = differences(runs, cfg, fp8, cols)
        ctx = "; ".join(
            f"{c} − fp32: " + ", ".join(f"{x.label} {x.word()}" for x in dd)
            for c in (cfg, fp8)
            if (dd := differences(runs, c, REFERENCE, cols))
        )
        out.append(dict(claim=claim, comparison=f"{cfg} − {fp8}", diffs=d, context=ctx,
                        verdict=rule(d)))  # fmt: skip
    d = differences(linear_runs, "linear_k3", REFERENCE, _columns(linear_runs))
    out.append(dict(claim=CLAIM_LINEAR, comparison="linear_k3 − fp32 (inference only)",
                    diffs=d, context="", verdict=V.no_worse(d)))  # fmt: skip
    return out


def _table(runs: list[dict]) -> str:
    from mulfree.eval.harness import comparison_table, merge_runs

    if not runs:
        return ""
    ref = REFERENCE if REFERENCE in merge_runs(runs) else None
    return comparison_table(runs, _columns(runs), reference=ref)


def section(ctx: Context) -> Section:
    root = ctx.results / MODEL
    rel = display_path(ctx, root)
    att_runs, att_missing = load_runs(root, ATTENTION_CONFIGS)
    ref_runs = [r for r in att_runs if r["label"] == REFERENCE]
    lin_runs, lin_missing = load_runs(root, LINEAR_CONFIGS)
    lin_all = ref_runs + lin_runs
    lines = [
        "Commands: each configuration's results come from `mulfree eval --model gemma3-270m "
        f"--tasks TASK --limit N --threads 1 FLAGS` as `bash {RUN_SH} WORKER TASKS CONFIGS "
        "LIMIT` runs it (flags below); `mulfree report --refresh [--limit N]` re-runs them. "
        f"Stored results: `{rel}/<config>/<task>.json`.",
        "",
    ]
    if ctx.refreshed:
        lines += [
            f"Re-run by this report (`--refresh`, {ctx.limit or DEFAULT_LIMIT} items per task).",
            "",
        ]
    lines += [
        "| configuration | `mulfree eval` flags |",
        "|---|---|",
        *(f"| {c} | `{CONFIG_FLAGS[c]}` |" for c in (*ATTENTION_CONFIGS, *LINEAR_CONFIGS)),
        "",
        "Accuracies in %, LAMBADA perplexity as is, ± one standard error, (items). "
        "Paired differences are on the same items: accuracy points, and for perplexity the "
        "ratio exp(−mean Δ log-likelihood).",
        "",
    ]
    for title, shown, runs, missing in (
        ("Attention only (paper Tables 2/5)", att_runs, att_runs, att_missing),
        ("L-Mul in the linear layers too", lin_all, lin_runs, lin_missing),
    ):
        lines += [f"### {title}", "", _table(shown) if runs else "No stored results."]
        lines += [*_missing_lines(runs, missing, rel), ""]
    rows = claims(att_runs, lin_all)
    lines += [
        "",
        "### The paper's claims beside ours",
        "",
        "Luo & Sun 2024 (arXiv 2410.00907) on Llama, Mistral and Gemma; ours on Gemma 3 270M. "
        f"A paired difference beyond {V.Z:g} standard errors is *better* / *worse*, else "
        '*within error*; a "no loss" claim differs as soon as one difference is worse, '
        'a "≈" claim as soon as one is better or worse (`mulfree/report/verdict.py`).',
        "",
        "| paper's claim | our comparison | paired differences (items) | verdict |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cell = _diff_cell(r["diffs"]) + (f"<br>*{r['context']}*" if r["context"] else "")
        lines.append(f"| {r['claim']} | {r['comparison']} | {cell} | {V.bold(r['verdict'])} |")
    lines += [
        "",
        "The last claim is not tested as the paper states it: we run inference only (no "
        "fine-tuning) and have no fp8-e4m3 linear-layer run, so its row compares against fp32; "
        "the other mantissa widths are in the linear-layer table above.",
    ]
    return Section(
        key="gemma",
        title="Gemma 3 270M: exact, fp8 and L-Mul attention (paper Tables 2/5)",
        body="\n".join(lines),
        verdicts=[
            {"claim": f"{r['claim']} [{r['comparison']}]", "verdict": r["verdict"]} for r in rows
        ],
    )


# --- refresh --------------------------------------------------------------------------------


def config_flags(config: str):
    """(LMulConfig or None, label) for a configuration, parsed by `mulfree eval`'s own parser."""
    from mulfree.eval.cli import lmul_config_from_args, register

    if config not in CONFIG_FLAGS:
        raise MulfreeError(f"unknown configuration {config!r}; known: {', '.join(CONFIG_FLAGS)}")
    parser = argparse.ArgumentParser(prog="mulfree")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", MODEL, *shlex.split(CONFIG_FLAGS[config])])
    return lmul_config_from_args(args), args.label


def refresh(
    results: Path,
    *,
    configs=(*ATTENTION_CONFIGS, *LINEAR_CONFIGS),
    tasks=TASKS,
    limit: int | None = None,
    model=MODEL,
    tokenizer=None,
    data_dir: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Re-run every (task, config) pair as run.sh does; return the JSONs written.

    Each pair writes `<results>/gemma3-270m/<config>/<task>.json.partial` while it runs (metrics
    after every chunk) and renames it to `.json` when done, replacing the stored result.
    model: a registered name / folder (loaded once) or a loaded model (then pass `tokenizer`).
    """
    from tqdm.auto import tqdm

    from mulfree.eval import EvalConfig, evaluate, load_model

    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise MulfreeError(f"unknown task(s) {', '.join(bad)}; the report's: {', '.join(TASKS)}")
    plan = [(c, *config_flags(c)) for c in configs]  # validates every name before running
    if isinstance(model, (str, Path)):
        model, tokenizer = load_model(model)
    root = Path(results) / MODEL
    written = []
    pairs = [(t, p) for t in tasks for p in plan]
    for task, (cfg, lmul, label) in tqdm(pairs, desc="refresh", disable=not progress):
        out = root / cfg / f"{task}.json"
        partial = out.with_name(out.name + ".partial")
        ecfg = EvalConfig(
            tasks=(task,), limit=limit or DEFAULT_LIMIT, label=label, data_dir=data_dir,
            progress=progress,
        )  # fmt: skip
        # force: a .partial left by a stopped refresh is this command's own working file
        evaluate(model, tokenizer, ecfg, lmul=lmul, out_json=partial, force=True)
        os.replace(partial, out)
        written.append(out)
    return written
