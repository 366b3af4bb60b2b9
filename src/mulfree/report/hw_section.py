"""Section 7: the multipliers and accumulators as circuits — gates and energy per operation.

Read from a stored `mulfree hw` result (`<results>/hw/hw.json`; making one needs the `hw`
extra and minutes of simulation and synthesis). Every comparison with the L-Mul paper's gate
count (325 vs 157 for fp8) and energy claims (95 % per multiply, 80 % per dot product), and
with the Horowitz table our energy model uses, is recomputed here from hw.json, and its verdict
word comes from `mulfree.report.verdict`.
"""

from __future__ import annotations

import json

from mulfree.report import verdict as V
from mulfree.report.common import Context, Section, display_path, missing_line

COMMAND = "mulfree hw --format all --out docs/results/hw"
PNG = "hw_circuits.png"
TITLE = "Circuits: gates and energy per operation"
# The report's verdict list gets every claim the paper makes, and the table comparisons for
# these formats (the section's own table has them all).
HEADER_TABLE_FORMATS = ("float32", "int8")


def load(ctx: Context) -> list[dict] | None:
    """The stored hw.json rows, or None when there are none (MulfreeError on a broken file)."""
    from mulfree.errors import MulfreeError
    from mulfree.hw.run import HW_JSON_FIELDS

    path = ctx.results / "hw" / "hw.json"
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("not a list of objects")
        for r in rows:
            missing = [k for k in HW_JSON_FIELDS if k not in r]
            if missing:
                raise ValueError(f"a row lacks {', '.join(missing)}")
    except ValueError as e:
        raise MulfreeError(f"{path}: not a mulfree hw result ({e})") from None
    return rows


def _plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mulfree._io import save_figure
    from mulfree.hw.table import SHORT

    fmts = [f for f in dict.fromkeys(r["format"] for r in rows) if f != "int8"]
    ix = {(r["circuit"], r["format"]): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    groups = (
        ("multiply: gates", ("lmul_bare", "lmul", "ieee_mul"), "gates", axes[0]),
        ("multiply: pJ per operation", ("lmul_bare", "lmul", "ieee_mul"), "energy_pj", axes[1]),
        ("dot-product step: pJ (product + fp32 add)", ("lmul_mac", "ieee_mac"), "energy_pj",
         axes[2]),
    )  # fmt: skip
    for title, circuits, key, ax in groups:
        width = 0.8 / len(circuits)
        for j, c in enumerate(circuits):
            xs = [i + (j - (len(circuits) - 1) / 2) * width for i in range(len(fmts))]
            ys = [ix[(c, f)][key] if (c, f) in ix else float("nan") for f in fmts]
            ax.bar(xs, ys, width, label=c)
        ax.set_xticks(range(len(fmts)), [SHORT.get(f, f) for f in fmts])
        if any((c, f) in ix for c in circuits for f in fmts):
            ax.set_yscale("log")  # gates and pJ span two orders of magnitude
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if ("ternary_acc", "int8") in ix and ("int8_mac", "int8") in ix:
        t, m = ix[("ternary_acc", "int8")], ix[("int8_mac", "int8")]
        axes[2].axhline(t["energy_pj"], color="k", ls="--", lw=1, label="ternary acc (int32)")
        axes[2].axhline(m["energy_pj"], color="grey", ls=":", lw=1, label="int8 MAC")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def section(ctx: Context) -> Section:
    from mulfree.hw.table import SHORT, comparisons, main_table

    path = ctx.results / "hw" / "hw.json"
    rows = load(ctx)
    if rows is None:
        body = missing_line(f"gate-level results ({display_path(ctx, path)})", COMMAND)
        return Section("hw", TITLE, body)
    _plot(rows, ctx.out / PNG)
    verdicts, lines = [], []
    comp = comparisons(rows)
    cmp_lines = ["| claim | format | ours (gate level) | paper | verdict vs paper | "
                 "Horowitz table | verdict vs table |", "|---|---|---:|---:|---|---:|---|"]  # fmt: skip
    for c in comp:
        vp = V.percent_close(c["ours"], c["paper"]) if c["paper"] is not None else None
        vt = V.percent_close(c["ours"], c["table"]) if c["table"] is not None else None
        f = SHORT.get(c["format"], c["format"])
        if vp is not None:
            verdicts.append({"claim": f"{c['claim']}, {f}: paper {c['paper']:.1f} %, ours "
                             f"{c['ours']:.1f} % (gate level)", "verdict": vp})  # fmt: skip
        if vt is not None and c["format"] in HEADER_TABLE_FORMATS:
            verdicts.append({"claim": f"{c['claim']}, {f}: Horowitz table {c['table']:.1f} %, "
                             f"ours {c['ours']:.1f} % (gate level)", "verdict": vt})  # fmt: skip
        cmp_lines.append(
            f"| {c['claim']} | {f} | {c['ours']:.1f} % | "
            + (f"{c['paper']:.1f} % | {V.bold(vp)} |" if vp else "— | — |")
            + (f" {c['table']:.1f} % | {V.bold(vt)} |" if vt else " — | — |")
        )
    bad = sum(r["sim_mismatches"] for r in rows)
    lines += [
        f"From `{display_path(ctx, path)}` (made by `{COMMAND}`). Each circuit is built in "
        "Amaranth HDL, simulated bit for bit against mulfree's reference "
        f"({sum(r['sim_vectors'] for r in rows):,} vectors in all, {bad} mismatches), "
        "synthesized by Yosys to AND/OR/XOR/MUX/NOT gates (`depth`: the longest path in gates), "
        "and priced by the switching energy of its NAND2 netlist on a random dot-product "
        "stream (45 nm, Nangate Open Cell Library capacitances at 1.1 V; no glitches, no "
        "leakage). The Horowitz column is what `mulfree energy` charges for the same operation "
        "(L-Mul as one integer add of the format's width).",
        "",
        *main_table(rows),
        "",
        f"![gates and energy per operation]({PNG})",
        "",
        "Verdicts: a percentage **agrees** within "
        f"{V.PERCENT_TOLERANCE:g} points, else **differs**. The paper's 157/325 is its count "
        "of gate-level operations for fp8; `lmul_bare` is the paper's add alone, `lmul` ours "
        "with IEEE special values, flush and saturation.",
        "",
        *cmp_lines,
    ]
    return Section("hw", TITLE, "\n".join(lines), files=[PNG], verdicts=verdicts)
