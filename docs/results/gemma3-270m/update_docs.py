"""Copy the Gemma 3 270M results into docs/eval.md (the sections between its <!-- NAME --> markers).

    python docs/results/gemma3-270m/update_docs.py "session 3, 22 Nov 2026"   # after run.sh
    python docs/results/gemma3-270m/update_docs.py "..." --claims              # after mulfree report

1. runs tables.sh (attention.md / linear.md from the results JSON) and copies both tables in;
2. writes the STATUS table: items per (configuration, task), "partial" for unfinished runs;
3. with --claims, copies the claims table of report/README.md section 2 (run `mulfree report`
   first), keeping the hand-written "Notes." paragraph that follows it in docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DOC = ROOT / "docs" / "eval.md"
CONFIGS = ["fp32", "bf16", "fp8_e4m3", "fp8_e5m2", "lmul_full", "lmul_k4", "lmul_k3", "lmul_k2",
           "linear_full", "linear_k4", "linear_k3", "linear_k2"]  # fmt: skip
TASKS = ["lambada", "piqa", "arc_easy", "winogrande", "hellaswag"]
STATUS_TAIL = """Two `run.sh` workers share the list (each takes a pair by creating `<json>.lock`);
`bash docs/results/gemma3-270m/run.sh W lambada,piqa,arc_easy,winogrande,hellaswag CONFIGS 500`
continues where they stopped: finished pairs are skipped and a `<task>.json.partial` is resumed
(`mulfree eval --resume`: the items it holds are kept, the rest scored); remove stale `*.lock`
directories of killed workers first. `python docs/results/gemma3-270m/update_docs.py LABEL`
rebuilds the tables here from whatever exists.
"""
SLOW = """
The linear-layer runs (every product of the model but the output layer an L-Mul) are the slow
ones: ~1.2 s per LAMBADA item and ~3.5 s per HellaSwag item on one core, hours per
configuration and task on this 2-core machine. """
UNFINISHED = """They run at 500 items like the rest and are resumed
across sessions, so until they finish their rows hold fewer items (marked partial). The fp32
row of that table covers 500 items; compare through the paired table, which uses the items
both runs have.
"""
FINISHED = """Every (configuration, task) pair above has its 500 items.
"""


def splice(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
    i, j = text.index(start) + len(start), text.index(end)
    return text[:i] + body.rstrip("\n") + "\n" + text[j:]


def items(config: str, task: str) -> str:
    for name, partial in ((f"{task}.json", False), (f"{task}.json.partial", True)):
        path = HERE / config / name
        if path.is_file():
            m = json.loads(path.read_text())["tasks"].get(task)
            if m is None:
                return "—"
            return f"partial, {m['n']}" if partial or m.get("partial") else str(m["n"])
    return "—"


def claims_section() -> str:
    report = (ROOT / "report" / "README.md").read_text()
    s2 = report.index("## 2. Gemma")
    sec = report[report.index("### The paper's claims beside ours", s2) : report.index("## 3.", s2)]
    sec = sec.split("\n", 1)[1].strip()
    return sec[: sec.index("###")].strip() if "###" in sec else sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("label", help="when the tables were made, e.g. 'session 3, 22 Nov 2026'")
    ap.add_argument("--claims", action="store_true", help="also copy report/README.md's claims")
    args = ap.parse_args()
    subprocess.run(["bash", str(HERE / "tables.sh")], check=True)
    text = DOC.read_text()
    text = splice(text, "ATTENTION_TABLE", (HERE / "attention.md").read_text())
    text = splice(text, "LINEAR_TABLE", (HERE / "linear.md").read_text())
    rows = ["| configuration | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    cells = {(c, t): items(c, t) for c in CONFIGS for t in TASKS}
    rows += [f"| {c} | " + " | ".join(cells[c, t] for t in TASKS) + " |" for c in CONFIGS]
    done = all(v == "500" for v in cells.values())
    text = splice(
        text,
        "STATUS",
        f"Items evaluated per (configuration, task) when these tables were made ({args.label};\n"
        '"partial" = a run stopped part-way, its rows are marked in the tables):\n\n'
        + "\n".join(rows) + "\n\n" + STATUS_TAIL + SLOW + (FINISHED if done else UNFINISHED),
    )  # fmt: skip
    if args.claims:
        old = text[text.index("<!-- CLAIMS -->") : text.index("<!-- /CLAIMS -->")]
        notes = old[old.index("Notes.") :] if "Notes." in old else ""
        text = splice(
            text,
            "CLAIMS",
            "Computed by `mulfree report` from the results above ([report/README.md]"
            "(../report/README.md), section 2), copied here when the tables were made:\n\n"
            + claims_section() + "\n\n" + notes,
        )  # fmt: skip
    DOC.write_text(text)
    print(f"updated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
