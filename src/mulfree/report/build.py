"""`build_report`: every section into a temporary folder, then one rename into place."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mulfree._io import atomic_write_text
from mulfree.errors import MulfreeError
from mulfree.report import (
    benchmarks,
    carbon_section,
    energy_section,
    gemma,
    hw_section,
    lmul_section,
    scaling,
)
from mulfree.report.common import Context, Section

REPORT_FORMAT = "mulfree-report"
REPORT_VERSION = 1
SECTIONS = (lmul_section, gemma, scaling, energy_section, benchmarks, carbon_section, hw_section)
KNOWN_RESULTS = ("gemma3-270m", "scaling", "benchmarks", "hw")


def source_checkout() -> Path | None:
    """The repository this package runs from (src/mulfree/ -> repo), or None if installed."""
    import mulfree

    root = Path(mulfree.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "docs").is_dir() else None


def resolve_results(results_dir: str | Path | None) -> Path:
    """The results folder (MulfreeError, one line, if it is not one)."""
    if results_dir is None:
        repo = source_checkout()
        if repo is None or not (repo / "docs" / "results").is_dir():
            raise MulfreeError(
                "no results folder: mulfree is not running from a checkout with docs/results; "
                "pass --results DIR"
            )
        return repo / "docs" / "results"
    p = Path(results_dir)
    if not p.is_dir():
        raise MulfreeError(f"--results {p}: not a directory")
    if not any((p / k).is_dir() for k in KNOWN_RESULTS):
        raise MulfreeError(
            f"--results {p}: not a results folder (it has none of {', '.join(KNOWN_RESULTS)}/)"
        )
    return p


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier report."""
    if out.exists() and not out.is_dir():
        raise MulfreeError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "report.json"
        try:
            ok = json.loads(meta.read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise MulfreeError(
                f"--out {out}: not empty and not an earlier mulfree report (no report.json); "
                "refusing to replace it"
            )


def _git(repo: Path | None, *args: str) -> str | None:
    if repo is None or not (repo / ".git").exists():
        return None
    try:
        r = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(repo: Path | None, command: str) -> dict:
    """What the header states: commit, date, machine, versions, command."""
    import torch

    import mulfree

    commit = _git(repo, "rev-parse", "HEAD")
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "uncommitted_changes": bool(dirty) if dirty is not None else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mulfree": mulfree.__version__,
        "command": command,
    }


def _header(env: dict, sections: list[Section]) -> str:
    commit = env["commit"] or "not a git checkout"
    if env["commit"] and env["uncommitted_changes"]:
        commit += " (with uncommitted changes)"
    lines = [
        "# mulfree fidelity report",
        "",
        "The papers' claims beside our measurements: L-Mul (Luo & Sun 2024, arXiv 2410.00907) and "
        "MatMul-free language models (Zhu et al. 2024, arXiv 2406.02528). Every verdict word is "
        "computed from the numbers by `mulfree/report/verdict.py`; a section whose results are "
        "missing says so and gives the command that makes them.",
        "",
        f"- command: `{env['command']}`",
        f"- commit: `{commit}`",
        f"- date: {env['date']}",
        f"- machine: {env['cpu']}, {env['cores']} cores (1-minute load {env['load_1min']} when "
        "the report was made)",
        f"- software: mulfree {env['mulfree']}, torch {env['torch']}, Python {env['python']}",
        "",
        "## Verdicts",
        "",
        "| section | claim | verdict |",
        "|---|---|---|",
    ]
    for i, s in enumerate(sections, 1):
        for v in s.verdicts:
            lines.append(f"| {i} | {v['claim']} | **{v['verdict']}** |")
    lines += ["", "## Sections", ""]
    lines += [f"{i}. [{s.title}](#{i}-{_anchor(s.title)})" for i, s in enumerate(sections, 1)]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor (lower case, punctuation dropped, spaces to dashes)."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def build_report(
    out_dir: str | Path = "report",
    *,
    refresh: bool = False,
    results_dir: str | Path | None = None,
    limit: int | None = None,
    configs: tuple[str, ...] | None = None,
    tasks: tuple[str, ...] | None = None,
    progress: bool = True,
    lmul_n: int = 200_000,
    lmul_model: str | None = "auto",
    energy_context: int = 64,
    command: str = "mulfree report",
) -> Path:
    """Write the fidelity report (README.md, report.json, PNGs) to `out_dir`; return its path.

    results_dir: stored results (default: the checkout's docs/results). refresh: first re-run
    the Gemma evaluations into it (`configs`/`tasks` to restrict, `limit` items per task).
    lmul_n: operand pairs per source of the L-Mul error section; lmul_model: "auto" (Gemma 3
    270M when it is cached), a model name/folder, or None. energy_context: prompt tokens before
    the counted decode step. The folder appears whole or not at all: it is built beside
    `out_dir` and renamed into place; an existing `out_dir` must be an earlier report.
    """
    out = Path(out_dir)
    results = resolve_results(results_dir)
    _check_out_dir(out)
    if lmul_n < 1000:
        raise MulfreeError(f"lmul_n={lmul_n} is too small (need >= 1000)")
    if energy_context < 1:
        raise MulfreeError(f"energy_context must be >= 1, got {energy_context}")
    if limit is not None and limit < 1:
        raise MulfreeError(f"--limit must be positive, got {limit}")
    note = "no model was asked for (lmul_model=None); only synthetic operands are shown."
    if lmul_model == "auto":
        from mulfree.hub import is_cached

        lmul_model = "gemma3-270m" if is_cached("gemma3-270m") else None
        note = (
            "Gemma 3 270M is not in the local model cache (`mulfree models get gemma3-270m`), "
            "so only the synthetic operand sources are shown."
        )
    repo = source_checkout()
    if refresh:
        gemma.refresh(
            results,
            configs=configs or (*gemma.ATTENTION_CONFIGS, *gemma.LINEAR_CONFIGS),
            tasks=tasks or gemma.TASKS,
            limit=limit,
            progress=progress,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the report's mode
    try:
        ctx = Context(
            results=results, out=tmp, repo=repo, progress=progress, lmul_n=lmul_n,
            lmul_model=lmul_model, lmul_model_note=note, energy_context=energy_context,
            refreshed=refresh, limit=limit,
        )  # fmt: skip
        sections = [mod.section(ctx) for mod in SECTIONS]
        env = environment(repo, command)
        parts = [_header(env, sections)]
        for i, s in enumerate(sections, 1):
            parts.append(f"## {i}. {s.title}\n\n{s.body.rstrip()}")
        atomic_write_text(tmp / "README.md", "\n\n".join(parts) + "\n")
        meta = {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "environment": env,
            "results": str(results),
            "sections": [
                {"key": s.key, "title": s.title, "files": s.files, "verdicts": s.verdicts}
                for s in sections
            ],
        }
        atomic_write_text(tmp / "report.json", json.dumps(meta, indent=1) + "\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames (the old report is removed only once the new is in)."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
