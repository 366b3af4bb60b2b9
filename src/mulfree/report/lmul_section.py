"""Section 1: L-Mul's error against exact k-bit and fp8 multiplication (paper Table 7 / Fig. 4).

Measured fresh with `mulfree.report.lmul_error` (its tables print the paper's Table 7 beside ours);
this section adds the paper's two precision claims with computed verdicts.
"""

from __future__ import annotations

import math

from mulfree.report import verdict as V
from mulfree.report.common import Context, Section, demote_headings

KS = (1, 2, 3, 4, 5, 6, 7)
# Luo & Sun 2024 (arXiv 2410.00907), abstract.
CLAIMS = (
    (4, "fp8_e4m3", "L-Mul with 4-bit mantissa achieves comparable precision as float8_e4m3",
     V.no_worse),
    (3, "fp8_e5m2", "L-Mul with 3-bit mantissa outperforms float8_e5m2", V.better),
)  # fmt: skip


def command(ctx: Context) -> str:
    """The standalone `mulfree lmul error` run that measures the same numbers."""
    cmd = f"mulfree lmul error --n {ctx.lmul_n} --k 1-7 --sources uniform,gaussian"
    return cmd + (f" --model {ctx.lmul_model}" if ctx.lmul_model else "")


def claim_rows(res) -> list[dict]:
    """One verdict per (claim, operand source, L-Mul semantics), from mean errors ± SE."""
    rows = []
    for k, fp8, claim, rule in CLAIMS:
        for src, per in res.rows.items():
            f = per[fp8][""]
            for mode in ("lmul_int", "lmul_eq1"):
                if k not in per[mode]:
                    continue
                s = per[mode][k]
                # fp8's error minus L-Mul's: positive when L-Mul is more precise. The two means
                # come from the same operands; combining their SEs as if independent is
                # conservative.
                d = V.Difference(
                    f["mean"] - s["mean"], math.hypot(s.get("se", math.nan), f.get("se", math.nan)),
                    res.n,
                )  # fmt: skip
                rows.append(
                    {
                        "claim": claim,
                        "source": src,
                        "mode": mode,
                        "lmul": s["mean"],
                        "fp8": f["mean"],
                        "fp8_name": fp8,
                        "diff": d,
                        "verdict": rule([d]),
                    }
                )
    return rows


def section(ctx: Context) -> Section:
    from mulfree.report.lmul_error import ErrorConfig, measure, plot, to_markdown

    cfg = ErrorConfig(
        ks=KS,
        n=ctx.lmul_n,
        sources=("uniform", "gaussian"),
        model=ctx.lmul_model,
        out_dir=ctx.out,
    )
    res = measure(cfg, progress=ctx.progress)
    plot(res, ctx.out / "lmul_error.png")
    rows = claim_rows(res)
    lines = [
        f"Command: `mulfree report` measures this fresh; the same numbers standalone: "
        f"`{command(ctx)}`.",
        "",
    ]
    if not ctx.lmul_model:
        lines += [f"Real operands: none — {ctx.lmul_model_note}", ""]
    lines += [
        "### The paper's claims beside ours",
        "",
        "Mean relative error of one product; the difference is fp8's minus L-Mul's "
        f"(positive: L-Mul is more precise), ± {V.Z:g} combined standard errors decide "
        "(see `mulfree/report/verdict.py`).",
        "",
        "| paper (Luo & Sun 2024) | operands | L-Mul form | L-Mul mean | fp8 mean | fp8 − L-Mul "
        "| verdict |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        d = r["diff"]
        lines.append(
            f"| {r['claim']} | {r['source']} | {r['mode'].removeprefix('lmul_')} | "
            f"{r['lmul']:.4f} | {r['fp8']:.4f} ({r['fp8_name']}) | {d.mean:+.4f} ± {d.se:.4f} | "
            f"{V.bold(r['verdict'])} |"
        )
    lines += ["", "![L-Mul error vs mantissa bits](lmul_error.png)", ""]
    lines.append(demote_headings(to_markdown(res), 2).split("\n", 1)[1].lstrip())
    return Section(
        key="lmul_error",
        title="L-Mul error vs mantissa bits, vs fp8 e4m3 / e5m2 (paper Table 7 / Fig. 4)",
        body="\n".join(lines),
        files=["lmul_error.png"],
        verdicts=[
            {"claim": f"{r['claim']} ({r['source']}, {r['mode']})", "verdict": r["verdict"]}
            for r in rows
        ],
    )
