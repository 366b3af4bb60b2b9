"""Verdict words computed from numbers: a paper's claim against our measured differences.

The words are never written by hand about a result; they come from these rules:

- a paired difference is *measured* when it lies beyond `Z` standard errors of zero
  (two-sided, about 95 %); otherwise it is *within error*;
- "X loses nothing against Y" (lossless, as accurate as or better): **agrees** when no difference
  is measured against X, **differs** when at least one is;
- "X ≈ Y": **agrees** when no difference is measured in either direction, else **differs**;
- "X beats Y": **agrees** when some difference is measured in X's favour and none against it,
  **within error** when none is measured, **differs** when one is measured against X;
- a deterministic figure (energy from a table) against a paper's percentage: **agrees** within
  `PERCENT_TOLERANCE` points, else **differs**.

Differences are signed so that positive is better for X (accuracies, per-item log-likelihoods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two standard errors: a 95 % two-sided interval for a normal mean.
Z = 2.0
# Percentage points within which a computed saving "agrees" with a paper's rounded percentage
# (the papers quote 95 % and 80 %, round figures).
PERCENT_TOLERANCE = 5.0

AGREES = "agrees"
DIFFERS = "differs"
WITHIN = "within error"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Difference:
    """A mean difference (positive = better for the tested configuration) and its error."""

    mean: float
    se: float
    n: int
    label: str = ""

    def sign(self, z: float = Z) -> int:
        """+1 / -1 when the difference is beyond z standard errors, 0 when within error."""
        if self.n < 2 or not math.isfinite(self.se) or not math.isfinite(self.mean):
            return 0
        if abs(self.mean) <= z * self.se:
            return 0
        return 1 if self.mean > 0 else -1

    def word(self, z: float = Z) -> str:
        """'better', 'worse' or 'within error'."""
        return {1: "better", -1: "worse", 0: WITHIN}[self.sign(z)]


def no_worse(diffs: list[Difference], z: float = Z) -> str:
    """Verdict on "X loses nothing against Y" from X-minus-Y differences."""
    if not diffs:
        return NOT_MEASURED
    return DIFFERS if any(d.sign(z) < 0 for d in diffs) else AGREES


def equal(diffs: list[Difference], z: float = Z) -> str:
    """Verdict on "X ≈ Y": any measured difference, in either direction, differs."""
    if not diffs:
        return NOT_MEASURED
    return DIFFERS if any(d.sign(z) != 0 for d in diffs) else AGREES


def better(diffs: list[Difference], z: float = Z) -> str:
    """Verdict on "X beats Y"."""
    if not diffs:
        return NOT_MEASURED
    signs = [d.sign(z) for d in diffs]
    if any(s < 0 for s in signs):
        return DIFFERS
    return AGREES if any(s > 0 for s in signs) else WITHIN


def percent_close(ours: float, paper: float, tol: float = PERCENT_TOLERANCE) -> str:
    """Verdict on a paper's percentage against ours (both in %)."""
    if not math.isfinite(ours):
        return NOT_MEASURED
    return AGREES if abs(ours - paper) <= tol else DIFFERS


def monotone_trend(values: list[float]) -> str:
    """'narrows' if every next value is smaller, 'widens' if every next is larger, else 'mixed'."""
    steps = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    if not steps:
        return NOT_MEASURED
    if all(s < 0 for s in steps):
        return "narrows"
    if all(s > 0 for s in steps):
        return "widens"
    return "mixed"


def bold(word: str) -> str:
    return f"**{word}**"
