"""The server's measured energy against a fake RAPL tree: /metrics, per-request usage, budget 503."""

from tests.serve.conftest import make_server, request, request_json


def _tree(root, uj):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text("262143328850\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    return z / "energy_uj"


def _metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_measured_energy_metrics_usage_and_budget_503(backend, tmp_path):
    counter = _tree(tmp_path / "powercap", 1_000_000)
    s = make_server(backend, meter="rapl", powercap_root=str(tmp_path / "powercap"),
                    energy_budget_wh=2.0, grid_intensity="400")  # fmt: skip
    try:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}
        status, _, out = request_json(s.url + "/v1/completions", "POST", body)
        assert status == 200, out
        assert out["usage"]["completion_tokens"] == 4
        assert out["usage"]["energy_joules"] == 0.0  # the fake counter did not move meanwhile
        counter.write_text(f"{1_000_000 + 3_600_000_000}\n")  # +3600 J = 1 Wh
        status, _, raw = request(s.url + "/metrics")
        text = raw.decode()
        assert _metric(text, "mulfree_energy_measured_joules_total") == 3600.0
        assert _metric(text, "mulfree_energy_measured_joules_per_token") == 900.0
        assert (
            _metric(text, "mulfree_emissions_grams_total") == 0.4
        )  # 1 Wh = 0.001 kWh at 400 g/kWh
        assert _metric(text, "mulfree_energy_budget_joules") == 7200.0
        assert 'meter="rapl",estimate="false"' in text
        status, _, out = request_json(s.url + "/v1/completions", "POST", body)
        assert status == 200  # 1 Wh of 2 spent
        counter.write_text(f"{1_000_000 + 7_300_000_000}\n")
        status, _, out = request_json(s.url + "/v1/completions", "POST", body)
        assert status == 503
        assert out["error"]["code"] == "energy_budget_exhausted"
        assert "2 Wh" in out["error"]["message"]
    finally:
        s.stop()
