"""What carbon-aware scheduling and multiplication-free arithmetic save, for one stated job.

`compare_schedules` prices a job of known energy and duration on an intensity series three
ways — start now and run through, start at the best time (`best_start`), and run interruptibly
in the cleanest windows (`interruptible_windows`) — and `synthetic_diurnal_trace` makes the
clearly labelled trace the report uses when no real one is given. No package on PyPI that we
could find ships a real carbon-intensity time series (CodeCarbon bundles yearly country
averages, CATS only zone names), so the report's trace is synthetic; `mulfree schedule
--forecast FILE` runs the same comparison on a user's file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from mulfree.energy.carbon import J_PER_KWH, Series
from mulfree.energy.schedule import Plan, best_start, interruptible_windows

SYNTHETIC_LABEL = "synthetic diurnal trace (not measured data)"


def synthetic_diurnal_trace(
    start: datetime,
    days: int = 2,
    step: timedelta = timedelta(minutes=30),
    level: float = 300.0,
    night_swing: float = 80.0,
    solar_dip: float = 120.0,
) -> Series:
    """A made-up but typical shape of a grid with gas at the evening peak and solar at noon:
    `level` gCO2e/kWh, +-`night_swing` with the maximum at 19:00, minus a `solar_dip` bell around
    13:00 (sd 2.5 h). Every parameter is a stated shape choice, not a measurement."""
    times, values = [], []
    t = start
    while t < start + timedelta(days=days):
        h = t.hour + t.minute / 60
        v = level + night_swing * math.cos(2 * math.pi * (h - 19) / 24)
        v -= solar_dip * math.exp(-0.5 * ((h - 13) / 2.5) ** 2)
        times.append(t)
        values.append(round(v, 1))
        t += step
    return Series(times, values, step, SYNTHETIC_LABEL)


@dataclass
class ScheduleComparison:
    plans: dict[str, Plan]  # "start now", "best start", "interruptible"
    job_energy_j: dict[str, float]  # arithmetic variant -> joules of the whole job

    def grams(self, strategy: str, variant: str) -> float:
        return self.job_energy_j[variant] / J_PER_KWH * self.plans[strategy].mean

    def rows(self) -> list[dict]:
        base = self.plans["start now"].mean
        out = []
        for name, plan in self.plans.items():
            row = {
                "strategy": name,
                "start": plan.start,
                "windows": len(plan.windows),
                "mean_g_per_kwh": plan.mean,
                "saving_percent": 100 * (1 - plan.mean / base) if base else None,
            }
            for v in self.job_energy_j:
                row[f"gco2e_{v}"] = self.grams(name, v)
            out.append(row)
        return out


def compare_schedules(
    series: Series,
    duration: timedelta,
    now: datetime,
    deadline: datetime,
    job_energy_j: dict[str, float],
) -> ScheduleComparison:
    """The three strategies for a job of `duration` that must end by `deadline`."""
    run_through = Plan(
        [best_start(series, duration, now, now + duration).windows[0]],
        duration,
        series.mean(now, now + duration),
        series.mean(now, now + duration),
    )
    return ScheduleComparison(
        {
            "start now": run_through,
            "best start": best_start(series, duration, now, deadline),
            "interruptible": interruptible_windows(series, duration, now, deadline),
        },
        dict(job_energy_j),
    )
