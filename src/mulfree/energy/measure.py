"""Measured energy, where the machine exposes it: Linux RAPL (powercap sysfs) and NVIDIA NVML.

`measure(fn)` runs `fn()` and returns the joules the available meters saw, or a one-line reason
why nothing could be measured (no powercap tree, no permission, no NVML).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_POWERCAP = "/sys/class/powercap"


@dataclass
class RaplDomain:
    name: str  # e.g. "package-0", "dram"
    path: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


class RaplReader:
    """Package-level RAPL domains under a powercap tree (`intel-rapl:N`, AMD's share the name)."""

    def __init__(self, root: str | Path = DEFAULT_POWERCAP):
        self.root = Path(root)
        self.domains: list[RaplDomain] = []
        self.reason: str | None = None
        if not self.root.is_dir():
            self.reason = f"no powercap tree at {self.root} (RAPL not exposed here)"
            return
        # Sub-zones (intel-rapl:0:0 "core", intel-rapl:0:1 "dram", ...) are reported apart:
        # a package's own counter already includes its cores, so only top-level zones are summed.
        self.subdomains: list[RaplDomain] = []
        for d in sorted(self.root.glob("intel-rapl:*")):
            if d.name.count(":") != 1 or not (d / "energy_uj").exists():
                continue
            for s in sorted(d.glob("intel-rapl:*")):
                try:
                    name = (s / "name").read_text().strip() if (s / "name").exists() else s.name
                    sub_max = int((s / "max_energy_range_uj").read_text().strip())
                    int((s / "energy_uj").read_text().strip())
                except (OSError, ValueError):
                    continue  # a sub-zone we cannot read only loses its breakdown line
                self.subdomains.append(RaplDomain(f"{d.name}/{name}", s, sub_max))
            try:
                name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
                max_range = int((d / "max_energy_range_uj").read_text().strip())
                int((d / "energy_uj").read_text().strip())
            except PermissionError:
                self.reason = (
                    f"RAPL counters under {self.root} are not readable (permission denied)"
                )
                return
            except (OSError, ValueError) as e:
                self.reason = f"unreadable RAPL zone {d}: {e}"
                return
            self.domains.append(RaplDomain(name, d, max_range))
        if not self.domains and self.reason is None:
            self.reason = f"no RAPL zones under {self.root}"

    def available(self) -> bool:
        return bool(self.domains)

    def snapshot(self) -> list[int]:
        return [d.read_uj() for d in self.domains]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        """Energy between two snapshots, allowing each counter to wrap once."""
        total = 0
        for d, b, a in zip(self.domains, before, after, strict=True):
            delta = a - b
            if delta < 0:
                delta += d.max_range_uj + 1
            total += delta
        return total / 1e6


class NvmlReader:
    """Total energy of every NVIDIA GPU (NVML's nvmlDeviceGetTotalEnergyConsumption, mJ)."""

    def __init__(self):
        self.handles = []
        self.reason: str | None = None
        try:
            import pynvml
        except ImportError:
            self.reason = "NVML not available (pynvml not installed / no NVIDIA GPU)"
            return
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            self.handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception as e:  # NVMLError has many subclasses; any of them means "no reading"
            self.reason = f"NVML failed: {e}"
            self.handles = []
        if not self.handles and self.reason is None:
            self.reason = "NVML found no GPU"

    def available(self) -> bool:
        return bool(self.handles)

    def snapshot(self) -> list[int]:
        return [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]

    @staticmethod
    def joules_between(before: list[int], after: list[int]) -> float:
        return sum(a - b for a, b in zip(after, before, strict=True)) / 1e3


@dataclass
class Measurement:
    joules: dict[str, float]  # meter -> joules ("rapl", "nvml")
    seconds: float
    unavailable: list[str]  # one line per meter that could not read

    def summary(self) -> str:
        if not self.joules:
            return "measured energy: unavailable here (" + "; ".join(self.unavailable) + ")"
        parts = [f"{k} {v:.3f} J" for k, v in self.joules.items()]
        return f"measured energy: {', '.join(parts)} over {self.seconds:.3f} s"


def measure(
    fn, *, powercap_root: str | Path = DEFAULT_POWERCAP, use_nvml: bool = True
) -> Measurement:
    """Run fn() once and return what the available meters measured."""
    meters = {"rapl": RaplReader(powercap_root)}
    if use_nvml:
        meters["nvml"] = NvmlReader()
    live = {k: m for k, m in meters.items() if m.available()}
    before = {k: m.snapshot() for k, m in live.items()}
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    joules = {k: m.joules_between(before[k], m.snapshot()) for k, m in live.items()}
    return Measurement(joules, dt, [m.reason for k, m in meters.items() if k not in live])
