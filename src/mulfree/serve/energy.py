"""Measured energy and emissions of a server, an energy budget, and per-request accounting.

`ServeEnergy` reads a `mulfree.energy.meter` meter (RAPL/NVML counters, or the labelled TDP
estimate) whenever it is asked: the totals are what the machine's counters saw since the server
started, idle time included, since that is what serving costs. Emissions accumulate reading by
reading with the grid intensity of each interval.

A request is charged the energy measured while it ran, times its share of the tokens generated
meanwhile (batched requests share the steps they decode together). Once the budget is spent,
new generation requests get HTTP 503; requests already running finish.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from mulfree.energy.carbon import Intensity, parse_intensity
from mulfree.energy.meter import Meter, open_meter
from mulfree.errors import MulfreeError

J_PER_WH = 3600.0  # 1 Wh = 1 W x 3600 s


class ServeEnergy:
    def __init__(
        self,
        meter: Meter,
        intensity: Intensity | None = None,
        budget_wh: float | None = None,
        clock=None,
    ):
        self.meter, self.intensity, self.budget_wh = meter, intensity, budget_wh
        self._now = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._joules = self._grams = 0.0
        self._last_t, self._last_j = self._now(), meter.joules()

    @classmethod
    def from_config(cls, config) -> ServeEnergy | None:
        """None when nothing was asked for and no meter is available."""
        asked = config.energy_budget_wh is not None or config.meter != "auto"
        meter, reasons = open_meter(
            config.meter, powercap_root=config.powercap_root, cpu_tdp_w=config.cpu_tdp_w
        )
        if meter is None:
            if asked:
                raise MulfreeError(
                    "--energy-budget needs an energy meter and none is available here: "
                    + "; ".join(reasons)
                )
            return None
        intensity = parse_intensity(config.grid_intensity) if config.grid_intensity else None
        return cls(meter, intensity, config.energy_budget_wh)

    def read(self) -> tuple[float, float]:
        """(joules, gCO2e) since the server started."""
        with self._lock:
            t, j = self._now(), self.meter.joules()
            dj = j - self._last_j
            self._joules += dj
            if self.intensity is not None:
                self._grams += self.intensity.grams(dj, self._last_t, t)
            self._last_t, self._last_j = t, j
            return self._joules, self._grams

    def exhausted(self) -> str | None:
        """The 503 message once the budget is spent, else None."""
        if self.budget_wh is None:
            return None
        j, _ = self.read()
        if j < self.budget_wh * J_PER_WH:
            return None
        return (
            f"the server's energy budget of {self.budget_wh:g} Wh is spent "
            f"({j / J_PER_WH:.4g} Wh measured, {self.meter.name}); it takes no new requests"
        )

    def mark(self, tokens_so_far: int) -> tuple[float, float, int]:
        j, g = self.read()
        return j, g, tokens_so_far

    def charge(self, start: tuple[float, float, int], tokens_so_far: int, mine: int) -> dict:
        """This request's share of what was measured since `start` (from `mark`)."""
        j, g = self.read()
        j0, g0, t0 = start
        share = mine / max(tokens_so_far - t0, mine, 1)
        out = {"energy_joules": (j - j0) * share}
        if self.intensity is not None:
            out["gco2e"] = (g - g0) * share
        return out

    def render(self, generated_tokens: int, model: str) -> str:
        """Prometheus text-format lines (HELP/TYPE and samples)."""
        j, g = self.read()
        lab = f'{{model="{model}",meter="{self.meter.name}",estimate="{str(self.meter.estimate).lower()}"}}'
        lines = []

        def metric(name, kind, help_, value):
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{lab} {value!r}"])

        metric("mulfree_energy_measured_joules_total", "counter",
               "Energy the meter read since the server started (idle time included).", float(j))  # fmt: skip
        if generated_tokens:
            metric("mulfree_energy_measured_joules_per_token", "gauge",
                   "Measured energy over generated tokens since the server started.",
                   j / generated_tokens)  # fmt: skip
        if self.intensity is not None:
            metric("mulfree_emissions_grams_total", "counter",
                   "gCO2e of the measured energy at the grid intensity of each interval.", float(g))  # fmt: skip
            if generated_tokens:
                metric("mulfree_emissions_grams_per_token", "gauge",
                       "gCO2e over generated tokens since the server started.", g / generated_tokens)  # fmt: skip
        if self.budget_wh is not None:
            metric("mulfree_energy_budget_joules", "gauge", "The server's energy budget.",
                   self.budget_wh * J_PER_WH)  # fmt: skip
        return "\n".join(lines) + "\n"
