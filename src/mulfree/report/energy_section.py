"""Section 4: energy per generated token under each option, beside the L-Mul paper's 95 % / 80 %.

Counted fresh with `mulfree.energy.report.energy_report` (what `mulfree energy` runs) on the
bundled MatMul-free model and on the Transformer++ of the same shape (random weights: the counts
do not depend on the weight values), so that the L-Mul attention options apply too.
"""

from __future__ import annotations

from mulfree.report import verdict as V
from mulfree.report.common import Context, Section, demote_headings

BUNDLED = "src/mulfree/assets/mmfree-shakespeare-tiny"
TWIN = "transformerpp:tiny"  # the Transformer++ matched to the bundled model's preset
# Luo & Sun 2024, abstract: "reduce 95% energy cost by element-wise floating point tensor
# multiplications and 80% energy cost of dot products".
PAPER_PER_MULTIPLY = 95.0
PAPER_PER_DOT = 80.0


def paper_arithmetic(table) -> dict[str, float]:
    """The paper's per-op savings (%) recomputed from the energy table it cites (Horowitz)."""
    fp_mul, fp_add = table.basic("fp_mul", 32), table.basic("fp_add", 32)
    lmul = table.op_pj("lmul", 32)  # one int32 add (Luo & Sun 2024, Sec. 3)
    return {
        "fp_mul_32": fp_mul,
        "fp_add_32": fp_add,
        "lmul_32": lmul,
        "per_multiply": 100 * (1 - lmul / fp_mul),
        "per_dot": 100 * (1 - (lmul + fp_add) / (fp_mul + fp_add)),
    }


def savings(rep, variant: str, base: str = "fp32") -> dict[str, float] | None:
    """% of compute and of total energy that `variant` saves against `base` (None if absent)."""
    rows = {r.name: r.energy for r in rep.rows}
    if variant not in rows or base not in rows:
        return None
    v, b = rows[variant], rows[base]
    return {
        "compute": 100 * (1 - v["compute_pJ"] / b["compute_pJ"]),
        "total": 100 * (1 - v["total_pJ"] / b["total_pJ"]),
        "memory_share_base": 100 * b["memory_pJ"] / b["total_pJ"],
    }


def _ratio_table(rep) -> list[str]:
    base = next(r.energy for r in rep.rows if r.name == rep.rows[0].name)
    lines = [
        f"| {rep.model_name} variant | compute vs {rep.rows[0].name} | total vs "
        f"{rep.rows[0].name} | memory share of its total |",
        "|---|---:|---:|---:|",
    ]
    for r in rep.rows:
        e = r.energy
        lines.append(
            f"| {r.name} | {e['compute_pJ'] / base['compute_pJ']:.3f}x | "
            f"{e['total_pJ'] / base['total_pJ']:.3f}x | {100 * e['memory_pJ'] / e['total_pJ']:.1f} % |"
        )
    return lines


def section(ctx: Context) -> Section:
    from tqdm.auto import tqdm

    from mulfree.energy.cli import load_model
    from mulfree.energy.report import energy_report
    from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable

    bundled = ctx.repo / BUNDLED if ctx.repo else None
    if bundled is None or not bundled.is_dir():
        from importlib import resources

        bundled = resources.files("mulfree").joinpath("assets/mmfree-shakespeare-tiny")
    reports = {}
    for key, spec in tqdm(
        (("mmfree", str(bundled)), ("transformerpp", TWIN)), desc="energy", disable=not ctx.progress
    ):
        model, name = load_model(spec)
        reports[key] = (energy_report(model, model_name=name, context=ctx.energy_context), spec)
    table = EnergyTable.load(DEFAULT_TABLE)
    p = paper_arithmetic(table)
    lines = []
    files = []
    for key, (rep, spec) in reports.items():
        cmd = f"mulfree energy --model {BUNDLED if key == 'mmfree' else spec} --context {ctx.energy_context}"
        png = f"energy_{key}.png"
        rep.plot(ctx.out / png)
        files.append(png)
        md = demote_headings(rep.to_markdown(command=cmd), 2)
        lines += [
            md,
            "",
            *_ratio_table(rep),
            "",
            f"![energy per token, {rep.model_name}]({png})",
            "",
        ]
    rows = [
        ("95 % less energy per multiply (an L-Mul for an fp32 multiply)",
         f"Horowitz table: int32 add {p['lmul_32']} pJ vs fp32 multiply {p['fp_mul_32']} pJ",
         PAPER_PER_MULTIPLY, p["per_multiply"]),
        ("80 % less energy per dot product (per multiply-add)",
         f"({p['lmul_32']} + {p['fp_add_32']}) / ({p['fp_mul_32']} + {p['fp_add_32']}) pJ",
         PAPER_PER_DOT, p["per_dot"]),
    ]  # fmt: skip
    tpp, mmf = reports["transformerpp"][0], reports["mmfree"][0]
    for rep, variant, base in ((tpp, "lmul-attn", "fp32"), (tpp, "lmul-all", "fp32"),
                               (mmf, "mulfree", "ternary")):  # fmt: skip
        s = savings(rep, variant, base)
        if s is None:
            continue
        for what in ("compute", "total"):
            rows.append(
                ("80 % less energy per dot product",
                 f"whole token, {rep.model_name}: {variant} vs {base}, {what} energy",
                 PAPER_PER_DOT, s[what])
            )  # fmt: skip
    lines += [
        "### The paper's figures beside ours",
        "",
        f"Savings computed from the counts and the `{table.name}` table; a figure agrees when "
        f"within {V.PERCENT_TOLERANCE:g} percentage points of the paper's (which are rounded).",
        "",
        "| paper (Luo & Sun 2024) | ours: what | paper | ours | verdict |",
        "|---|---|---:|---:|---|",
    ]
    verdicts = []
    for claim, what, paper, ours in rows:
        v = V.percent_close(ours, paper)
        verdicts.append({"claim": f"{claim} [{what}]", "verdict": v})
        side = "" if v != V.DIFFERS else (" (ours lower)" if ours < paper else " (ours higher)")
        lines.append(f"| {claim} | {what} | {paper:.0f} % | {ours:.1f} % | {V.bold(v)}{side} |")
    lines += [
        "",
        "The per-op figures hold by the table's arithmetic; a whole token also pays for what L-Mul "
        "does not touch — weight and activation traffic (priced from DRAM and a 1 MB cache), "
        "additions, nonlinear ops — so the whole-model savings are what a user of these models "
        "gets from each option.",
    ]
    return Section(
        key="energy",
        title="Energy per token for each option (the L-Mul paper's 95 % / 80 %)",
        body="\n".join(lines),
        files=files,
        verdicts=verdicts,
    )
