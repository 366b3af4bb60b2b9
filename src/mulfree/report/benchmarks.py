"""Section 5: kernel and decode speed tables, as the benchmarks stored them (never run here).

Each `<results>/benchmarks/<name>.md` is written by `bash docs/results/benchmarks/run.sh <name>`:
the command, commit and machine, then the benchmark's output (its method first). It is included
as written, headings nested.
"""

from __future__ import annotations

from mulfree.report.common import Context, Section, demote_headings, missing_line

BENCHMARKS = (
    "bench_startup",
    "bench_ternary_linear",
    "bench_decode",
    "bench_lmatmul",
    "bench_lmul_elementwise",
    "bench_attention",
    "bench_serve",
    "bench_train",
    "bench_mmfree_torch",
)


def command(name: str) -> str:
    return f"bash docs/results/benchmarks/run.sh {name}"


def section(ctx: Context) -> Section:
    root = ctx.results / "benchmarks"
    lines = [
        "Command: `bash docs/results/benchmarks/run.sh [<name> ...]` (each stored file starts "
        "with its command, commit and machine, then the benchmark's method). The report includes the stored "
        "outputs and never runs a benchmark: timings depend on the machine and its load when "
        "they were made.",
        "",
    ]
    missing = []
    for name in BENCHMARKS:
        path = root / f"{name}.md"
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            lines += [f"### {name}", "", demote_headings(text, 3), ""]
        else:
            missing.append(missing_line(f"{name} (no {name}.md)", command(name)))
    if missing:
        lines = lines[:2] + missing + [""] + lines[2:]
    return Section(
        key="benchmarks",
        title="Kernel and decode speed (stored benchmark outputs)",
        body="\n".join(lines).rstrip(),
        verdicts=[],
    )
