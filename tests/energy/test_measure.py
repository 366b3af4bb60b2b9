"""RAPL / NVML readers against fakes (no real meters are needed)."""

import sys
import types

from mulfree.energy.measure import RaplReader, measure


def _fake_rapl(root, zones):
    for i, (name, uj, max_uj) in enumerate(zones):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
        sub = root / f"intel-rapl:{i}:0"  # a sub-zone: already included in its parent
        sub.mkdir()
        (sub / "energy_uj").write_text("5\n")
        (sub / "max_energy_range_uj").write_text("100\n")
    return root


def test_rapl_delta_and_wraparound(tmp_path):
    root = _fake_rapl(
        tmp_path / "powercap",
        [("package-0", 1_000_000, 10_000_000), ("package-1", 9_999_000, 10_000_000)],
    )
    r = RaplReader(root)
    assert [d.name for d in r.domains] == ["package-0", "package-1"]

    def work():  # package-0 +2.5 J; package-1 wraps: 9.999 J -> 0.5 J is +0.501001 J
        (root / "intel-rapl:0" / "energy_uj").write_text("3500000\n")
        (root / "intel-rapl:1" / "energy_uj").write_text("500000\n")

    m = measure(work, powercap_root=root, use_nvml=False)
    assert abs(m.joules["rapl"] - (2.5 + 0.501001)) < 1e-9
    assert "rapl" in m.summary()


def test_no_meters_says_why_in_one_line(tmp_path):
    m = measure(lambda: None, powercap_root=tmp_path / "missing", use_nvml=False)
    assert m.joules == {}
    line = m.summary()
    assert "unavailable" in line and "\n" not in line


def test_nvml_fake(monkeypatch, tmp_path):
    state = {"mj": 1000}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: "gpu0",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: state["mj"],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def work():
        state["mj"] += 4200

    m = measure(work, powercap_root=tmp_path / "none")
    assert m.joules == {"nvml": 4.2}
