"""Carbon-aware scheduling over an intensity series (a step function, `carbon.Series`).

- `best_start`: the start minimising the mean intensity over a job of fixed duration that must
  finish by a deadline (what CATS computes). The mean over [s, s + D] of a step function is
  piecewise linear in s, with corners where s or s + D crosses a step boundary, so the minimum
  is at one of those candidates (or at the ends of the allowed range): an exact search over
  O(n) candidates, not a scan of a time grid.
- `interruptible_windows`: for work that can pause (a training run that checkpoints), the
  cheapest set of time adding up to D before the deadline. Choosing time by lowest intensity
  first is optimal here (a fractional knapsack: every second of work costs the same energy, so
  the emissions are the integral of intensity over the chosen time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from mulfree.energy.carbon import Series
from mulfree.errors import MulfreeError


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    mean: float  # gCO2e/kWh over the window

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class Plan:
    """A schedule and what it saves against starting now and running straight through."""

    windows: list[Window]
    duration: timedelta
    mean: float  # gCO2e/kWh over the chosen time
    now_mean: float | None  # over [now, now + duration]; None if the series does not cover it

    @property
    def start(self) -> datetime:
        return self.windows[0].start

    @property
    def saving_percent(self) -> float | None:
        if self.now_mean is None or self.now_mean == 0:
            return None
        return 100.0 * (1.0 - self.mean / self.now_mean)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s)", re.IGNORECASE)
_UNIT = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """ "3h", "90m", "1h30m", "45s", "2d" (a bare number is minutes, as in CATS)."""
    s = str(text).strip()
    try:
        minutes = float(s)
    except ValueError:
        minutes = None
    if minutes is not None:
        total = minutes * 60
    else:
        parts = _DURATION.findall(s)
        if not parts or _DURATION.sub("", s).strip():
            raise MulfreeError(f"duration {text!r} is not like 3h, 90m, 1h30m or 45s")
        total = sum(float(n) * _UNIT[u.lower()] for n, u in parts)
    if not total > 0:
        raise MulfreeError(f"duration {text!r} must be positive")
    return timedelta(seconds=total)


def _range(series: Series, duration: timedelta, now: datetime, deadline: datetime | None):
    lo = max(now, series.start)
    hi = series.end if deadline is None else min(deadline, series.end)
    if series.end <= now:
        raise MulfreeError(
            f"the series ends at {series.end.isoformat()}, before now ({now.isoformat()}): "
            "give a newer forecast (or --now)"
        )
    if hi - lo < duration:
        cover = f"{lo.isoformat()} .. {hi.isoformat()}"
        why = "the deadline" if deadline is not None and deadline < series.end else "the series"
        raise MulfreeError(
            f"a job of {duration} cannot run between {cover}: {why} leaves "
            f"{max(hi - lo, timedelta(0))}"
        )
    return lo, hi


def _now_mean(series: Series, duration: timedelta, now: datetime) -> float | None:
    if now < series.start or now + duration > series.end:
        return None
    return series.mean(now, now + duration)


def best_start(
    series: Series, duration: timedelta, now: datetime, deadline: datetime | None = None
) -> Plan:
    """The start in [now, deadline - duration] with the lowest mean intensity (earliest on ties)."""
    lo, hi = _range(series, duration, now, deadline)
    last = hi - duration
    cands = {lo, last}
    for b in series.boundaries():
        for s in (b, b - duration):
            if lo <= s <= last:
                cands.add(s)
    best = min(sorted(cands), key=lambda s: series.mean(s, s + duration))
    w = Window(best, best + duration, series.mean(best, best + duration))
    return Plan([w], duration, w.mean, _now_mean(series, duration, now))


def interruptible_windows(
    series: Series, duration: timedelta, now: datetime, deadline: datetime | None = None
) -> Plan:
    """The lowest-intensity time adding up to `duration` in [now, deadline], as merged windows
    in time order (ties go to the earlier slot; a partly used slot is used from its start)."""
    lo, hi = _range(series, duration, now, deadline)
    slots = []
    for t, v in zip(series.times, series.values, strict=True):
        a, b = max(t, lo), min(t + series.step, hi)
        if b > a:
            slots.append((v, a, b))
    need = duration.total_seconds()
    chosen = []
    for v, a, b in sorted(slots, key=lambda s: (s[0], s[1])):
        if need <= 1e-9:
            break
        take = min(need, (b - a).total_seconds())
        chosen.append((a, a + timedelta(seconds=take), v))
        need -= take
    chosen.sort()
    merged: list[list] = []
    for a, b, _ in chosen:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    windows = [Window(a, b, series.mean(a, b)) for a, b in merged]
    total = sum(w.seconds for w in windows)
    mean = sum(w.mean * w.seconds for w in windows) / total
    return Plan(windows, duration, mean, _now_mean(series, duration, now))


def draw_plan(ax, series: Series, plans: dict[str, Plan]) -> None:
    """Draw the intensity series on `ax` with each plan's windows shaded."""
    xs = series.boundaries()
    ax.step(xs, [*series.values, series.values[-1]], where="post", color="k", lw=1.2,
            label=f"intensity ({series.label})")  # fmt: skip
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    for (name, plan), c in zip(plans.items(), colors, strict=False):
        for i, w in enumerate(plan.windows):
            ax.axvspan(w.start, w.end, color=c, alpha=0.25,
                       label=f"{name}: mean {plan.mean:.0f} g/kWh" if i == 0 else None)  # fmt: skip
    ax.set_ylabel("gCO2e / kWh")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_plan(series: Series, plans: dict[str, Plan], path, title: str = "") -> None:
    """The intensity series with each plan's windows shaded; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    draw_plan(ax, series, plans)
    ax.set_title(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
