"""The meter's backends against a fake powercap tree and a fake NVML; the TDP estimate."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from mulfree.energy.meter import TdpMeter, lookup_tdp, open_meter
from mulfree.errors import MulfreeError


def _zone(d: Path, name: str, uj: int, max_uj: int) -> Path:
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def _tree(root: Path) -> Path:
    pkg = _zone(root / "intel-rapl:0", "package-0", 5_000_000, 10_000_000)
    _zone(pkg / "intel-rapl:0:0", "core", 1_000_000, 10_000_000)
    _zone(pkg / "intel-rapl:0:1", "dram", 9_000_000, 10_000_000)
    _zone(root / "intel-rapl:1", "package-1", 100, 10_000_000)
    return root


def _set(path: Path, uj: int) -> None:
    (path / "energy_uj").write_text(f"{uj}\n")


def test_rapl_meter_sums_packages_keeps_subzones_and_undoes_wraps(tmp_path):
    root = _tree(tmp_path / "powercap")
    meter, reasons = open_meter("rapl", powercap_root=root)
    assert meter.name == "rapl" and not meter.estimate
    assert "package-0" in meter.describe() and "package-1" in meter.describe()
    assert meter.joules() == 0.0
    _set(root / "intel-rapl:0", 7_500_000)  # +2.5 J
    _set(root / "intel-rapl:1", 1_000_100)  # +1 J
    assert meter.joules() == pytest.approx(3.5)
    # Package 0 wraps: 7.5 J -> 0.25 J is +2.750001 J (the counter rolls over at max + 1).
    _set(root / "intel-rapl:0", 250_000)
    assert meter.joules() == pytest.approx(3.5 + 2.750001)
    # The cumulative total keeps growing across several wraps, read by read.
    for _ in range(3):
        _set(root / "intel-rapl:0", 9_250_000)  # +9 J
        meter.joules()
        _set(root / "intel-rapl:0", 250_000)  # wraps: +1.000001 J
        meter.joules()
    assert meter.joules() == pytest.approx(3.5 + 2.750001 + 3 * 10.000001)
    # dram wraps too (9 J -> 0.5 J); core reads +2 J. Sub-zones are not added to the total.
    _set(root / "intel-rapl:0" / "intel-rapl:0:0", 3_000_000)
    _set(root / "intel-rapl:0" / "intel-rapl:0:1", 500_000)
    b = meter.breakdown()
    assert b["intel-rapl:0/core"] == pytest.approx(2.0)
    assert b["intel-rapl:0/dram"] == pytest.approx(1.500001)


def test_unreadable_rapl_counter_says_permission_denied(tmp_path, monkeypatch):
    root = _tree(tmp_path / "powercap")
    real = Path.read_text

    def read_text(self, *a, **k):  # tests run as root, where chmod 000 does not stop a read
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(MulfreeError, match="permission denied"):
        open_meter("rapl", powercap_root=root)
    meter, reasons = open_meter("auto", powercap_root=root, cpu_tdp_w=100.0, use_nvml=False)
    assert meter.estimate and any("permission denied" in r for r in reasons)


def test_missing_tree_falls_back_to_a_labelled_estimate(tmp_path):
    meter, reasons = open_meter(
        "auto", powercap_root=tmp_path / "none", cpu_tdp_w=120.0, use_nvml=False
    )
    assert isinstance(meter, TdpMeter) and meter.estimate
    assert "estimate" in meter.describe() and "120 W" in meter.describe()
    assert any("no powercap tree" in r for r in reasons)


def test_tdp_estimate_is_tdp_times_cpu_share():
    cpu = {"t": 10.0}
    m = TdpMeter(200.0, "given", cpus=4, cpu_time=lambda: cpu["t"])
    cpu["t"] += 8.0  # 8 CPU-seconds on a 4-CPU machine: 2 s of the whole package
    assert m.joules() == pytest.approx(400.0)
    with pytest.raises(MulfreeError, match="positive"):
        TdpMeter(0, "given")


def test_fake_nvml_meter(monkeypatch, tmp_path):
    state = {"mj": [1000, 5000]}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: state["mj"][h],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter, _ = open_meter("nvml", powercap_root=tmp_path / "none")
    state["mj"] = [3000, 5500]
    assert meter.joules() == pytest.approx(2.5)
    # With a RAPL tree as well, auto adds both: a GPU's energy is not in the CPU package.
    root = _tree(tmp_path / "powercap")
    both, _ = open_meter("auto", powercap_root=root)
    assert both.name == "rapl+nvml"
    _set(root / "intel-rapl:1", 2_000_100)
    state["mj"] = [4000, 5500]
    assert both.joules() == pytest.approx(2.0 + 1.0)


def test_named_meter_unavailable_and_unknown_kind(tmp_path):
    with pytest.raises(MulfreeError, match="no RAPL zones"):
        open_meter("rapl", powercap_root=tmp_path)
    with pytest.raises(MulfreeError, match="no powercap tree"):
        open_meter("rapl", powercap_root=tmp_path / "absent")
    with pytest.raises(MulfreeError, match="unknown meter"):
        open_meter("wattmeter")


def test_tdp_table_lookup():
    if importlib.util.find_spec("codecarbon") is None:  # its data, not its import (slow, noisy)
        pytest.skip("codecarbon (mulfree[energy]) is not installed")
    assert lookup_tdp("AMD EPYC 4124P") == 65.0  # rows of CodeCarbon's cpu_power.csv
    assert lookup_tdp("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz") == 150.0
    assert lookup_tdp("no such cpu 9000") is None
