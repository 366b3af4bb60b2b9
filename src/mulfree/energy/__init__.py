"""Energy accounting: count what runs (ops by kind and width, bytes), price it with a cited table.

with EnergyCounter(model) as c:
    model(input_ids)
energy = price(c.counts, c.bytes, EnergyTable.load())

Measured energy and carbon (docs/energy.md):
meter, why_not = open_meter("auto")          # RAPL / NVML counters, else a labelled TDP estimate
series = load_series("forecast.csv")         # or parse_intensity("FRA" | "350" | FILE)
plan = best_start(series, parse_duration("3h"), now, deadline)   # or interruptible_windows
"""

from mulfree._lazy import attach

_NAMES = {
    "EnergyCounter": "mulfree.energy.counter",
    "EnergyTable": "mulfree.energy.tables",
    "price": "mulfree.energy.tables",
    "counting": "mulfree.energy.counter",
    "opaque": "mulfree.energy.counter",
    "record": "mulfree.energy.counter",
    "record_bytes": "mulfree.energy.counter",
    "record_io": "mulfree.energy.counter",
    "Meter": "mulfree.energy.meter",
    "open_meter": "mulfree.energy.meter",
    "load_series": "mulfree.energy.carbon",
    "parse_intensity": "mulfree.energy.carbon",
    "best_start": "mulfree.energy.schedule",
    "interruptible_windows": "mulfree.energy.schedule",
    "parse_duration": "mulfree.energy.schedule",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "EnergyCounter",
    "EnergyTable",
    "Meter",
    "best_start",
    "counting",
    "interruptible_windows",
    "load_series",
    "opaque",
    "open_meter",
    "parse_duration",
    "parse_intensity",
    "price",
    "record",
    "record_bytes",
    "record_io",
]
