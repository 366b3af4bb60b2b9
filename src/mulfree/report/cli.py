"""`mulfree report`: the fidelity report, a thin wrapper over `mulfree.report.build_report`."""

from __future__ import annotations

import shlex


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="the fidelity report: the papers' claims beside our measurements (report/)",
        description=(
            "Write report/README.md (+ PNGs, report.json): L-Mul error, Gemma 3 270M with exact / "
            "fp8 / L-Mul attention, MatMul-free vs Transformer++ scaling, energy per token, "
            "benchmark tables. Stored results are read from --results; missing ones are listed "
            "with the command that makes them."
        ),
    )
    a = p.add_argument
    a("--out", default="report", help="output folder (default: report)")
    a("--results", help="stored results folder (default: the checkout's docs/results)")
    a("--refresh", action="store_true", help="re-run the Gemma evaluations into --results first")
    a("--limit", type=int, help="with --refresh: items per task (default 500)")
    a("--configs", type=_names, help="with --refresh: only these configurations (comma-separated)")
    a("--tasks", type=_names, help="with --refresh: only these tasks (comma-separated)")
    a("--lmul-n", type=int, default=200_000, help="operand pairs per source, L-Mul error section")
    a("--energy-context", type=int, default=64, help="prompt tokens before the counted step")
    a("--no-progress", action="store_true")
    p.set_defaults(func=cmd_report)


def _command(args) -> str:
    """The command line these options amount to (defaults left out)."""
    parts = ["mulfree", "report"]
    for flag, value, default in (
        ("--out", args.out, "report"),
        ("--results", args.results, None),
        ("--limit", args.limit, None),
        ("--configs", ",".join(args.configs or ()), ""),
        ("--tasks", ",".join(args.tasks or ()), ""),
        ("--lmul-n", args.lmul_n, 200_000),
        ("--energy-context", args.energy_context, 64),
    ):
        if value != default:
            parts += [flag, str(value)]
    if args.refresh:
        parts.append("--refresh")
    return " ".join(shlex.quote(p) for p in parts)


def cmd_report(args) -> int:
    from mulfree.errors import MulfreeError
    from mulfree.report import build_report

    if not args.refresh and (args.limit or args.configs or args.tasks):
        raise MulfreeError("--limit/--configs/--tasks apply to --refresh only")
    out = build_report(
        args.out,
        refresh=args.refresh,
        results_dir=args.results,
        limit=args.limit,
        configs=args.configs,
        tasks=args.tasks,
        progress=not args.no_progress,
        lmul_n=args.lmul_n,
        energy_context=args.energy_context,
        command=_command(args),
    )
    print(f"wrote {out}/README.md")
    return 0
