"""Grid carbon intensity (gCO2e/kWh) over time, and the emissions of energy spent in an interval.

Three sources, one interface (`mean(t0, t1)`, `grams(joules, t0, t1)`):
- a constant (`--grid-intensity 350`);
- a country code (`--grid-intensity FRA` or `FR`): the yearly average of CodeCarbon's bundled
  `data/private_infra/global_energy_mix.json` (its `carbon_intensity` field, with the year);
- a time series file: CSV with a header (default columns `timestamp,gco2_per_kwh`, ISO 8601
  timestamps with a UTC offset), or the JSON of common carbon-intensity services (the UK
  National Grid ESO API's `data[].from/intensity`, Electricity Maps' `forecast[]`/`history[]`
  `datetime/carbonIntensity`, WattTime's `data[].point_time/value` in lbs/MWh).

A series is a step function: each value holds from its timestamp to the next one (the services
publish averages per period, e.g. the UK API's half hours). The points must be evenly spaced;
a gap or a bad row is an error naming the line.
"""

from __future__ import annotations

import abc
import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mulfree.errors import MulfreeError

J_PER_KWH = 3.6e6  # 1 kWh = 1000 W x 3600 s
# WattTime reports lbs CO2 per MWh: 1 lb = 0.45359237 kg exactly (international yard and pound
# agreement, 1959), so 1 lb/MWh = 453.59237 g / 1000 kWh.
G_PER_KWH_PER_LB_PER_MWH = 0.45359237


class Intensity(abc.ABC):
    """gCO2e per kWh as a function of time."""

    label = ""

    @abc.abstractmethod
    def mean(self, t0: datetime, t1: datetime) -> float:
        """Implemented by each kind."""

    def grams(self, joules: float, t0: datetime, t1: datetime) -> float:
        """Emissions of `joules` spent evenly over [t0, t1]."""
        return joules / J_PER_KWH * self.mean(t0, t1)


@dataclass
class ConstantIntensity(Intensity):
    g_per_kwh: float
    label: str = ""

    def __post_init__(self):
        if not (math.isfinite(self.g_per_kwh) and self.g_per_kwh >= 0):
            raise MulfreeError(f"grid intensity must be >= 0 gCO2e/kWh, got {self.g_per_kwh}")
        self.label = self.label or f"{self.g_per_kwh:g} gCO2e/kWh (constant)"

    def mean(self, t0, t1):
        return self.g_per_kwh


class Series(Intensity):
    """Evenly spaced points; point i holds over [times[i], times[i] + step)."""

    def __init__(self, times: list[datetime], values: list[float], step: timedelta, label: str):
        if len(times) != len(values) or not times:
            raise MulfreeError(f"{label}: no data points")
        self.times, self.values, self.step, self.label = times, values, step, label
        self.tz = times[0].tzinfo

    @property
    def start(self) -> datetime:
        return self.times[0]

    @property
    def end(self) -> datetime:
        return self.times[-1] + self.step

    def boundaries(self) -> list[datetime]:
        return [*self.times, self.end]

    def integral(self, t0: datetime, t1: datetime) -> float:
        """gCO2e/kWh x seconds over [t0, t1]; outside the series the nearest value holds."""
        if t1 <= t0:
            return 0.0
        total = 0.0
        if t0 < self.start:
            total += self.values[0] * (min(t1, self.start) - t0).total_seconds()
        if t1 > self.end:
            total += self.values[-1] * (t1 - max(t0, self.end)).total_seconds()
        for t, v in zip(self.times, self.values, strict=True):
            a, b = max(t0, t), min(t1, t + self.step)
            if b > a:
                total += v * (b - a).total_seconds()
        return total

    def mean(self, t0, t1):
        if t1 <= t0:
            return self.at(t0)
        return self.integral(t0, t1) / (t1 - t0).total_seconds()

    def at(self, t: datetime) -> float:
        if t < self.start:
            return self.values[0]
        i = min(len(self.values) - 1, int((t - self.start) / self.step))
        return self.values[i]


def parse_time(text: str, what: str = "time") -> datetime:
    """An ISO 8601 time with a UTC offset ("2026-03-01T18:00:00+01:00", "...Z")."""
    try:
        t = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise MulfreeError(f"{what} {text!r} is not an ISO 8601 time") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise MulfreeError(
            f"{what} {text!r} has no UTC offset (write e.g. {text}Z or {text}+01:00)"
        )
    return t


def _number(text, where: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise MulfreeError(f"{where}: intensity {text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise MulfreeError(f"{where}: intensity {text!r} must be a finite number >= 0")
    return v


def _series(points: list[tuple[datetime, float, str]], label: str) -> Series:
    """Check order and spacing; `points` are (time, value, where-for-messages)."""
    if len(points) < 2:
        raise MulfreeError(f"{label}: needs at least 2 data points, found {len(points)}")
    points = sorted(points, key=lambda p: p[0])
    diffs = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False)]
    for d, (_a, b) in zip(diffs, zip(points, points[1:], strict=False), strict=True):
        if d == timedelta(0):
            raise MulfreeError(f"{label}: {b[2]} repeats the time {b[0].isoformat()}")
    step = Counter(diffs).most_common(1)[0][0]
    for d, a, b in zip(diffs, points, points[1:], strict=False):
        if d > step:
            raise MulfreeError(
                f"{label}: gap in the series between {a[0].isoformat()} and {b[0].isoformat()} "
                f"({b[2]}); points are every {_fmt_td(step)} elsewhere"
            )
        if d != step:
            raise MulfreeError(
                f"{label}: uneven spacing at {b[2]} ({_fmt_td(d)} after the previous point, "
                f"{_fmt_td(step)} elsewhere)"
            )
    return Series([p[0] for p in points], [p[1] for p in points], step, label)


def _fmt_td(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


def load_series(
    path: str | Path, time_column: str = "timestamp", value_column: str = "gco2_per_kwh"
) -> Series:
    """A carbon-intensity series from a CSV (with a header) or a service's JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MulfreeError(f"no such forecast file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MulfreeError(f"cannot read forecast file {path}: {e}") from None
    label = path.name
    if text.lstrip().startswith(("{", "[")):
        return _series(_json_points(text, label), label)
    rows = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(rows)]
    except StopIteration:
        raise MulfreeError(f"{label}: empty file") from None
    for col in (time_column, value_column):
        if col not in header:
            raise MulfreeError(
                f"{label}: no column {col!r} in the header ({', '.join(header)}); "
                "choose columns with --time-column / --value-column"
            )
    ti, vi = header.index(time_column), header.index(value_column)
    points = []
    for n, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"line {n}"
        if len(row) != len(header):
            raise MulfreeError(f"{label}: {where} has {len(row)} fields, the header {len(header)}")
        points.append(
            (
                parse_time(row[ti], f"{label}: {where}: timestamp"),
                _number(row[vi], f"{label}: {where}"),
                where,
            )
        )
    return _series(points, label)


def _json_points(text: str, label: str) -> list[tuple[datetime, float, str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MulfreeError(f"{label}: not valid JSON ({e.msg} at line {e.lineno})") from None
    scale = 1.0
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        items = doc["data"]
        units = str((doc.get("meta") or {}).get("units", "")).lower()
        if "lbs" in units:  # WattTime
            scale = G_PER_KWH_PER_LB_PER_MWH
    elif isinstance(doc, dict) and isinstance(doc.get("forecast"), list):
        items = doc["forecast"]
    elif isinstance(doc, dict) and isinstance(doc.get("history"), list):
        items = doc["history"]
    elif isinstance(doc, list):
        items = doc
    else:
        raise MulfreeError(
            f"{label}: JSON not recognised (expected a 'data', 'forecast' or 'history' list)"
        )
    points = []
    for i, it in enumerate(items):
        where = f"item {i}"
        if not isinstance(it, dict):
            raise MulfreeError(f"{label}: {where} is not an object")
        t = it.get("from") or it.get("datetime") or it.get("point_time") or it.get("timestamp")
        if "intensity" in it and isinstance(it["intensity"], dict):  # UK National Grid ESO
            iv = it["intensity"]
            v = iv.get("actual") if iv.get("actual") is not None else iv.get("forecast")
        else:
            v = next((it[k] for k in ("carbonIntensity", "value", "gco2_per_kwh") if k in it), None)
        if t is None or v is None:
            raise MulfreeError(f"{label}: {where} has no time or no intensity")
        points.append(
            (
                parse_time(t, f"{label}: {where}: time"),
                _number(v, f"{label}: {where}") * scale,
                where,
            )
        )
    return points


def country_intensity(code: str) -> ConstantIntensity:
    """The yearly average intensity of a country (ISO 3166 alpha-3 or alpha-2 code) from
    CodeCarbon's bundled energy-mix data."""
    from mulfree.energy.meter import codecarbon_data

    path = codecarbon_data("private_infra/global_energy_mix.json")
    if path is None:
        raise MulfreeError(
            f"a region code ({code!r}) needs CodeCarbon's bundled data: pip install "
            "'mulfree[energy]', or give --grid-intensity as gCO2e/kWh or a forecast file"
        )
    mix = json.loads(path.read_text(encoding="utf-8"))
    key = code.strip().upper()
    if len(key) == 2:
        by2 = {}
        try:
            import pycountry

            for c in pycountry.countries:
                by2[c.alpha_2] = c.alpha_3
        except ImportError:
            pass
        key = by2.get(key, key)
    if key not in mix:
        raise MulfreeError(
            f"unknown region {code!r}: not an ISO 3166 country code in CodeCarbon's energy mix "
            f"({len(mix)} countries, e.g. FRA, DEU, USA, GBR)"
        )
    row = mix[key]
    return ConstantIntensity(
        float(row["carbon_intensity"]),
        f"{row.get('country_name', key)} {row.get('year', '')} average, "
        f"{float(row['carbon_intensity']):g} gCO2e/kWh (CodeCarbon's energy-mix data)",
    )


def parse_intensity(
    spec: str, time_column: str = "timestamp", value_column: str = "gco2_per_kwh"
) -> Intensity:
    """`--grid-intensity`: a number (gCO2e/kWh), an existing file (a series), or a country code."""
    s = str(spec).strip()
    try:
        value = float(s)
    except ValueError:
        value = None
    if value is not None:
        return ConstantIntensity(value)
    if Path(s).is_file():
        return load_series(s, time_column, value_column)
    if s.isalpha() and len(s) in (2, 3):
        return country_intensity(s)
    raise MulfreeError(
        f"--grid-intensity {spec!r} is neither gCO2e/kWh, a file, nor a country code (e.g. FRA)"
    )
