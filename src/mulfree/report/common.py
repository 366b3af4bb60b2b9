"""What every report section shares: its inputs (`Context`) and its output (`Section`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Context:
    """Inputs of the sections. out: the (temporary) folder the PNGs are written to."""

    results: Path
    out: Path
    repo: Path | None  # the checkout the results came from (commands are run from there)
    progress: bool = True
    lmul_n: int = 200_000
    lmul_model: str | None = None  # a model to sample real operands from, or None
    lmul_model_note: str = "no model was asked for; only synthetic operands are shown."
    energy_context: int = 64
    refreshed: bool = False
    limit: int | None = None


@dataclass
class Section:
    """One report section: a title, a Markdown body and what it checked (for report.json)."""

    key: str
    title: str
    body: str
    files: list[str] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)  # {"claim", "verdict"} per claim


def demote_headings(md: str, levels: int = 2) -> str:
    """Push Markdown headings down `levels` levels, so a document nests under a section."""
    out, fence = [], False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


def missing_line(what: str, command: str) -> str:
    """The one line a section prints for results that are not there."""
    return f"- **Missing:** {what}. Produce it with `{command}`."


def display_path(ctx: Context, path: Path) -> str:
    """`path` relative to the checkout when it is inside it (the commands run from there)."""
    if ctx.repo is not None:
        try:
            return str(path.resolve().relative_to(ctx.repo.resolve()))
        except ValueError:
            pass
    return str(path)
