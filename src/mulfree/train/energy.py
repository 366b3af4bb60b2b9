"""Energy and carbon for the training phase: budgets, a power cap, and carbon-aware windows.

`PhaseEnergy` is asked before each optimizer step whether to run (`before_step`) and told after
it (`after_step`), which reads the meter. It keeps the run's totals in a dict that the trainer
checkpoints, so totals and budgets carry across `--resume`:

- `--energy-budget WH` / `--carbon-budget G` stop before the step that would exceed the budget
  (the next step is predicted to cost the mean measured step so far), with a checkpoint;
- `--power-cap W` sleeps after a step whenever the session's mean measured power (energy /
  wall time, sleeps included) is above the cap: duty cycling;
- `--carbon-forecast FILE [--deadline T]` runs only inside the lowest-intensity windows that
  fit the remaining work (estimated from the measured time per step) before the deadline;
  outside them it checkpoints and sleeps until the next window, or with
  `--exit-between-windows` returns so the caller exits with the next start printed.

Time comes from a `Clock` so tests can drive it; the meter is a `mulfree.energy.meter.Meter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mulfree.energy.carbon import load_series, parse_intensity, parse_time
from mulfree.energy.meter import Meter, open_meter
from mulfree.energy.schedule import Plan, interruptible_windows
from mulfree.errors import MulfreeError

J_PER_WH = 3600.0  # 1 Wh = 1 W x 3600 s


class Clock:
    """Wall time (aware, UTC) and sleeping."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class Stop:
    """Why the loop must stop now; `next_start` is set when it should continue later."""

    reason: str  # "energy-budget" | "carbon-budget" | "window"
    message: str
    next_start: datetime | None = None


def new_state() -> dict:
    # Totals over every session of the run (checkpointed with the trainer's log state).
    return {"joules": 0.0, "gco2e": 0.0, "seconds": 0.0, "steps": 0}


class PhaseEnergy:
    def __init__(self, cfg, state: dict | None = None, meter: Meter | None = None, clock=None):
        self.cfg, self.clock = cfg, clock or Clock()
        self.state = state if state is not None else new_state()
        needs = [
            f for f, v in (
                ("--energy-budget", cfg.energy_budget_wh),
                ("--carbon-budget", cfg.carbon_budget_g),
                ("--power-cap", cfg.power_cap_w),
            ) if v is not None
        ]  # fmt: skip
        reasons: list[str] = []
        if meter is None:
            meter, reasons = open_meter(
                cfg.meter, powercap_root=cfg.powercap_root, cpu_tdp_w=cfg.cpu_tdp_w
            )
        if meter is None and needs:
            raise MulfreeError(
                f"{' and '.join(needs)} need(s) an energy meter and none is available here: "
                + "; ".join(reasons)
            )
        self.meter = meter
        self.series = None
        if cfg.carbon_forecast:
            self.series = load_series(cfg.carbon_forecast)
            self.intensity = self.series
        elif cfg.grid_intensity is not None:
            self.intensity = parse_intensity(cfg.grid_intensity)
        else:
            self.intensity = None
        if cfg.carbon_budget_g is not None and self.intensity is None:
            raise MulfreeError(
                "--carbon-budget needs a grid intensity: --grid-intensity G_PER_KWH|COUNTRY|FILE "
                "or --carbon-forecast FILE"
            )
        self.deadline = parse_time(cfg.deadline, "--deadline") if cfg.deadline else None
        if self.deadline is not None and self.series is None:
            raise MulfreeError("--deadline applies to --carbon-forecast scheduling only")
        self.plan: Plan | None = None
        self._dropped = False
        self.notes: list[str] = []  # one-line messages for the user (printed by the trainer)
        self._session_j = self._session_s = 0.0
        self.mark()

    # --- readings -----------------------------------------------------------------------
    def mark(self) -> None:
        """Start the next reading from here (time spent waiting between windows is not the
        job's, so it is left out of the totals)."""
        self._last_t = self.clock.now()
        self._last_j = self.meter.joules() if self.meter else 0.0

    def describe(self) -> str:
        parts = [self.meter.describe() if self.meter else "no energy meter"]
        if self.intensity is not None:
            parts.append(f"grid {self.intensity.label}")
        return "; ".join(parts)

    def after_step(self) -> dict:
        """Read the meter after a step; apply the power cap. Returns fields for metrics.jsonl."""
        t = self.clock.now()
        dt = (t - self._last_t).total_seconds()
        s = self.state
        s["seconds"] += dt
        s["steps"] += 1
        self._session_s += dt
        if self.meter is not None:
            j = self.meter.joules()
            dj = j - self._last_j
            s["joules"] += dj
            self._session_j += dj
            if self.intensity is not None:
                s["gco2e"] += self.intensity.grams(dj, self._last_t, t)
            self._last_j = j
        self._last_t = t
        cap = self.cfg.power_cap_w
        if cap is not None and self._session_s > 0 and self._session_j / self._session_s > cap:
            # Sleep until the session's mean power is at the cap, assuming the idle draw is
            # small against it; the next reading includes what the sleep really cost.
            self.clock.sleep(self._session_j / cap - self._session_s)
        return self.fields()

    def fields(self) -> dict:
        if self.meter is None:
            return {}
        s = self.state
        out = {
            "energy_j": s["joules"],
            "energy_wh": s["joules"] / J_PER_WH,
            "meter": self.meter.name + (" (estimate)" if self.meter.estimate else ""),
        }
        if self._session_s > 0:
            out["power_w"] = self._session_j / self._session_s
        if self.intensity is not None:
            out["gco2e"] = s["gco2e"]
        return out

    def spent(self) -> str:
        s = self.state
        if self.meter is None:
            return "energy not measured"
        text = f"{s['joules'] / J_PER_WH:.4g} Wh ({self.meter.name}"
        text += ", estimate)" if self.meter.estimate else ")"
        if self.intensity is not None:
            text += f", {s['gco2e']:.4g} gCO2e"
        return text

    # --- decisions ----------------------------------------------------------------------
    def before_step(self, step: int, max_steps: int) -> Stop | None:
        s = self.state
        n = s["steps"]
        if n and self.cfg.energy_budget_wh is not None:
            budget = self.cfg.energy_budget_wh * J_PER_WH
            if s["joules"] + s["joules"] / n > budget:
                return Stop(
                    "energy-budget",
                    f"energy budget of {self.cfg.energy_budget_wh:g} Wh reached at step {step}: "
                    f"spent {self.spent()}",
                )
        if n and self.cfg.carbon_budget_g is not None:
            if s["gco2e"] + s["gco2e"] / n > self.cfg.carbon_budget_g:
                return Stop(
                    "carbon-budget",
                    f"carbon budget of {self.cfg.carbon_budget_g:g} gCO2e reached at step "
                    f"{step}: spent {self.spent()}",
                )
        if self.series is None or not n or self._dropped:
            return None  # no schedule, or the first step (it measures the time per step)
        now = self.clock.now()
        if self.plan is None or not any(w.end > now for w in self.plan.windows):
            self._replan(now, step, max_steps)
        if self.plan is None:
            return None
        for w in self.plan.windows:
            if w.start <= now < w.end:
                return None
        # Outside the windows: plan again with what was learned, then wait for the next one.
        self._replan(now, step, max_steps)
        if self.plan is None:
            return None
        nxt = next((w for w in self.plan.windows if w.end > now), None)
        if nxt is None or nxt.start <= now:
            return None
        return Stop("window", f"paused at step {step} until the next low-carbon window", nxt.start)

    def _replan(self, now: datetime, step: int, max_steps: int) -> None:
        s = self.state
        remaining = timedelta(seconds=(max_steps - step) * s["seconds"] / s["steps"])
        if remaining <= timedelta(0):
            self.plan = None
            return
        try:
            self.plan = interruptible_windows(self.series, remaining, now, self.deadline)
        except MulfreeError as e:
            # Not enough time left in the forecast before the deadline: finish now rather than
            # miss it, and say so once.
            self.notes.append(f"carbon schedule dropped, running to the end: {e}")
            self._dropped, self.plan = True, None

    def wait_until(self, t: datetime) -> None:
        self.clock.sleep((t - self.clock.now()).total_seconds())
        self.mark()
