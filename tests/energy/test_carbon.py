"""Carbon intensity: parsing forecast files (with clear errors), countries, and the integral."""

import importlib.util
import json
from datetime import UTC, datetime, timedelta

import pytest

from mulfree.energy.carbon import (
    G_PER_KWH_PER_LB_PER_MWH,
    ConstantIntensity,
    load_series,
    parse_intensity,
    parse_time,
)
from mulfree.errors import MulfreeError

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _csv(tmp_path, rows, header="timestamp,gco2_per_kwh"):
    p = tmp_path / "f.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_csv_series_is_a_step_function_over_its_periods(tmp_path):
    p = _csv(tmp_path, ["2026-06-01T00:00:00+02:00,100", "2026-06-01T00:30:00+02:00,300",
                        "2026-06-01T01:00:00+02:00,200"])  # fmt: skip
    s = load_series(p)
    assert s.step == timedelta(minutes=30) and s.tz.utcoffset(None) == timedelta(hours=2)
    t = s.start
    assert s.mean(t, t + timedelta(minutes=30)) == 100
    assert s.mean(t + timedelta(minutes=15), t + timedelta(minutes=45)) == pytest.approx(200)
    # 1 kWh over the first hour: half at 100, half at 300 g/kWh.
    assert s.grams(3.6e6, t, t + timedelta(hours=1)) == pytest.approx(200)
    # Outside the series the nearest value holds.
    assert s.mean(t - timedelta(hours=1), t) == 100
    assert s.at(s.end + timedelta(hours=5)) == 200


def test_other_column_names(tmp_path):
    p = _csv(tmp_path, ["x,2026-06-01T00:00Z,5", "y,2026-06-01T01:00Z,7"], header="zone,when,ci")
    s = load_series(p, time_column="when", value_column="ci")
    assert s.values == [5.0, 7.0]
    with pytest.raises(MulfreeError, match="no column 'timestamp'.*--time-column"):
        load_series(p)


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ["2026-06-01T00:00Z,1", "2026-06-01T01:00Z,2", "2026-06-01T03:00Z,3"],
            "gap in the series",
        ),
        (
            [
                "2026-06-01T00:00Z,1",
                "2026-06-01T01:00Z,2",
                "2026-06-01T01:20Z,3",
                "2026-06-01T02:00Z,3",
            ],
            "uneven spacing",
        ),  # fmt: skip
        (["2026-06-01T00:00Z,1", "yesterday,2"], "line 3: timestamp 'yesterday' is not an ISO"),
        (["2026-06-01T00:00,1", "2026-06-01T01:00,2"], "has no UTC offset"),
        (["2026-06-01T00:00Z,1", "2026-06-01T01:00Z,high"], "line 3: intensity 'high'"),
        (["2026-06-01T00:00Z,1", "2026-06-01T01:00Z,-4"], "must be a finite number >= 0"),
        (["2026-06-01T00:00Z,1", "2026-06-01T01:00Z"], "line 3 has 1 fields"),
        (["2026-06-01T00:00Z,1", "2026-06-01T00:00Z,2"], "repeats the time"),
        (["2026-06-01T00:00Z,1"], "at least 2 data points"),
    ],
    ids=[
        "gap",
        "uneven",
        "bad-time",
        "naive-time",
        "bad-value",
        "negative",
        "short-row",
        "duplicate",
        "one-point",
    ],  # fmt: skip
)
def test_bad_files_give_one_clear_line(tmp_path, rows, message):
    with pytest.raises(MulfreeError, match=message) as e:
        load_series(_csv(tmp_path, rows))
    assert "\n" not in str(e.value) and "f.csv" in str(e.value)


def test_service_json_formats(tmp_path):
    uk = {"data": [
        {"from": "2026-06-01T00:00Z", "to": "2026-06-01T00:30Z",
         "intensity": {"forecast": 180, "actual": None, "index": "moderate"}},
        {"from": "2026-06-01T00:30Z", "to": "2026-06-01T01:00Z",
         "intensity": {"forecast": 170, "actual": 150, "index": "moderate"}},
    ]}  # fmt: skip
    em = {"zone": "DE", "forecast": [
        {"datetime": "2026-06-01T00:00:00.000Z", "carbonIntensity": 300},
        {"datetime": "2026-06-01T01:00:00.000Z", "carbonIntensity": 250},
    ]}  # fmt: skip
    wt = {"data": [{"point_time": "2026-06-01T00:00:00+00:00", "value": 1000},
                   {"point_time": "2026-06-01T00:05:00+00:00", "value": 500}],
          "meta": {"units": "lbs_co2_per_mwh"}}  # fmt: skip
    for name, doc, values in [
        ("uk.json", uk, [180, 150]),  # the actual value where there is one
        ("em.json", em, [300, 250]),
        ("wt.json", wt, [1000 * G_PER_KWH_PER_LB_PER_MWH, 500 * G_PER_KWH_PER_LB_PER_MWH]),
    ]:
        p = tmp_path / name
        p.write_text(json.dumps(doc))
        assert load_series(p).values == pytest.approx(values), name
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"from": "2026-06-01T00:00Z"}]}')
    with pytest.raises(MulfreeError, match="item 0 has no time or no intensity"):
        load_series(bad)
    bad.write_text("{not json")
    with pytest.raises(MulfreeError, match="not valid JSON"):
        load_series(bad)


def test_grid_intensity_specs(tmp_path):
    assert parse_intensity("350").mean(T0, T0) == 350
    assert isinstance(parse_intensity("0"), ConstantIntensity)
    for bad, msg in [
        ("-3", ">= 0"),
        ("nan", ">= 0"),
        ("3.5kg", "neither"),
        ("ZZZ", "unknown region"),
    ]:
        if bad == "ZZZ" and importlib.util.find_spec("codecarbon") is None:
            continue
        with pytest.raises(MulfreeError, match=msg):
            parse_intensity(bad)
    with pytest.raises(MulfreeError, match="no such forecast file"):
        load_series(tmp_path / "missing.csv")
    with pytest.raises(MulfreeError, match="no UTC offset"):
        parse_time("2026-06-01T00:00", "--deadline")


def test_country_codes_from_codecarbon_data():
    if importlib.util.find_spec("codecarbon") is None:
        pytest.skip("codecarbon (mulfree[energy]) is not installed")
    fra = parse_intensity("FRA")
    assert parse_intensity("fr").g_per_kwh == fra.g_per_kwh  # alpha-2 through pycountry
    assert 0 < fra.g_per_kwh < parse_intensity("POL").g_per_kwh  # nuclear vs coal-heavy grid
    assert "France" in fra.label and "CodeCarbon" in fra.label
