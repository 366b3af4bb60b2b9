"""One energy meter with backends: `open_meter("auto")` -> a `Meter` whose `joules()` only grows.

Backends, in the order "auto" tries them:
- **rapl**: Linux powercap sysfs (`intel-rapl:N`, which AMD's driver also uses). Top-level
  package zones are summed; core/dram sub-zones are kept as a breakdown. Each counter wraps at
  its `max_energy_range_uj`; a wrap between two readings is undone, so the meter must be read
  more often than one wrap period (minutes at full load on a server package; every training
  step reads it).
- **nvml**: NVIDIA GPUs' total energy counters (`pynvml`).
- **tdp** (an *estimate*, and it says so): CPU power = TDP x this process's CPU utilisation,
  TDP from `--cpu-tdp` or CodeCarbon's bundled CPU power table (`codecarbon/data/hardware/
  cpu_power.csv`, read as a data file; CodeCarbon's tracker is not run). This is CodeCarbon's
  fallback model applied to our process alone: energy = TDP x CPU-seconds / logical CPUs.

Every backend reads local files or local libraries only; nothing is sent anywhere.
"""

from __future__ import annotations

import abc
import csv
import importlib.util
import os
import re
import time
from pathlib import Path

from mulfree.energy.measure import DEFAULT_POWERCAP, NvmlReader, RaplReader
from mulfree.errors import MulfreeError

METER_KINDS = ("auto", "rapl", "nvml", "tdp")


class Meter(abc.ABC):
    """Cumulative energy since the meter was opened. `estimate` is True when nothing was read
    from a hardware counter."""

    name = "meter"
    estimate = False

    @abc.abstractmethod
    def joules(self) -> float:
        """Implemented by each kind."""

    def describe(self) -> str:
        return self.name


class _CounterMeter(Meter):
    """Accumulates the deltas of a reader's counters, one wrap undone per domain per read."""

    def __init__(self, reader, name: str):
        self.reader, self.name = reader, name
        self._last = reader.snapshot()
        self._total = 0.0

    def joules(self) -> float:
        now = self.reader.snapshot()
        self._total += self.reader.joules_between(self._last, now)
        self._last = now
        return self._total


class RaplMeter(_CounterMeter):
    def __init__(self, reader: RaplReader):
        super().__init__(reader, "rapl")
        self._sub_last = [d.read_uj() for d in reader.subdomains]
        self._sub_total = [0.0] * len(reader.subdomains)

    def breakdown(self) -> dict[str, float]:
        """Joules per sub-zone (core, dram, ...) since opening; read with `joules()`."""
        for i, d in enumerate(self.reader.subdomains):
            now = d.read_uj()
            delta = now - self._sub_last[i]
            if delta < 0:
                delta += d.max_range_uj + 1
            self._sub_total[i] += delta / 1e6
            self._sub_last[i] = now
        return {d.name: j for d, j in zip(self.reader.subdomains, self._sub_total, strict=True)}

    def describe(self) -> str:
        names = ", ".join(d.name for d in self.reader.domains)
        return f"rapl ({names}) under {self.reader.root}"


class NvmlMeter(_CounterMeter):
    def __init__(self, reader: NvmlReader):
        super().__init__(reader, "nvml")

    def describe(self) -> str:
        return f"nvml ({len(self.reader.handles)} GPU(s))"


class SumMeter(Meter):
    """RAPL and NVML together: a GPU's energy is not in the CPU package counter."""

    def __init__(self, meters: list[Meter]):
        self.meters = meters
        self.name = "+".join(m.name for m in meters)
        self.estimate = any(m.estimate for m in meters)

    def joules(self) -> float:
        return sum(m.joules() for m in self.meters)

    def describe(self) -> str:
        return " + ".join(m.describe() for m in self.meters)


class TdpMeter(Meter):
    """Estimate: TDP x (this process's CPU seconds / logical CPUs)."""

    name = "tdp-estimate"
    estimate = True

    def __init__(self, tdp_w: float, source: str, cpus: int | None = None, cpu_time=None):
        if not (tdp_w > 0):
            raise MulfreeError(f"CPU TDP must be a positive number of watts, got {tdp_w!r}")
        self.tdp_w, self.source = float(tdp_w), source
        self.cpus = cpus or os.cpu_count() or 1
        self._cpu_time = cpu_time or time.process_time  # user + system time of all threads
        self._t0 = self._cpu_time()

    def joules(self) -> float:
        return self.tdp_w * (self._cpu_time() - self._t0) / self.cpus

    def describe(self) -> str:
        return (
            f"estimate: CPU TDP {self.tdp_w:g} W ({self.source}) x this process's utilisation "
            f"of {self.cpus} logical CPU(s); no energy counter was read"
        )


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def codecarbon_data(relative: str) -> Path | None:
    """A file of CodeCarbon's bundled data, located without importing codecarbon (its import
    starts logging and loads pandas; we only want the data)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / relative
    return path if path.is_file() else None


def _normalise_cpu(name: str) -> str:
    name = re.sub(r"\((R|TM|tm|r)\)", "", name)
    name = re.sub(r"\bCPU\b|\bProcessor\b|@.*$|\d+-Core", "", name)
    return " ".join(name.split()).lower()


def lookup_tdp(model: str) -> float | None:
    """TDP in watts of `model` from CodeCarbon's CPU power table (exact name after dropping
    (R)/(TM)/"CPU"/clock); None when the table is missing or has no such CPU."""
    path = codecarbon_data("hardware/cpu_power.csv")
    if path is None or not model:
        return None
    want = _normalise_cpu(model)
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if _normalise_cpu(row.get("Name", "")) == want:
                try:
                    return float(row["TDP"])
                except (KeyError, ValueError):
                    return None
    return None


def open_meter(
    kind: str = "auto",
    *,
    powercap_root: str | Path = DEFAULT_POWERCAP,
    cpu_tdp_w: float | None = None,
    use_nvml: bool = True,
) -> tuple[Meter | None, list[str]]:
    """The best meter of `kind`, and one line per backend that could not be used.

    "auto": RAPL and/or NVML counters if any can be read, else the TDP estimate if a TDP is
    known (given, or the CPU is in CodeCarbon's table), else None. A named kind that cannot be
    opened raises MulfreeError with the reason.
    """
    if kind not in METER_KINDS:
        raise MulfreeError(f"unknown meter {kind!r}; choose one of {', '.join(METER_KINDS)}")
    reasons: list[str] = []
    counters: list[Meter] = []
    if kind in ("auto", "rapl"):
        r = RaplReader(powercap_root)
        if r.available():
            counters.append(RaplMeter(r))
        else:
            reasons.append(r.reason)
    if kind in ("auto", "nvml") and use_nvml:
        n = NvmlReader()
        if n.available():
            counters.append(NvmlMeter(n))
        else:
            reasons.append(n.reason)
    if counters:
        return (counters[0] if len(counters) == 1 else SumMeter(counters)), reasons
    if kind in ("rapl", "nvml"):
        raise MulfreeError(f"--meter {kind}: {'; '.join(reasons)}")
    if kind in ("auto", "tdp"):
        if cpu_tdp_w is not None:
            return TdpMeter(cpu_tdp_w, "given"), reasons
        model = cpu_model_name()
        tdp = lookup_tdp(model or "")
        if tdp is not None:
            return TdpMeter(tdp, f"CodeCarbon's table for {model!r}"), reasons
        if codecarbon_data("hardware/cpu_power.csv") is None:
            reasons.append("no TDP: pass --cpu-tdp W (or install mulfree[energy] for a table)")
        else:
            reasons.append(f"no TDP for CPU {model!r} in CodeCarbon's table: pass --cpu-tdp W")
        if kind == "tdp":
            raise MulfreeError(f"--meter tdp: {reasons[-1]}")
    return None, reasons
