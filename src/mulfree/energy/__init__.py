"""Energy accounting: count what runs (ops by kind and width, bytes), price it with a cited table.

with EnergyCounter(model) as c:
    model(input_ids)
energy = price(c.counts, c.bytes, EnergyTable.load())
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
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "EnergyCounter",
    "EnergyTable",
    "counting",
    "opaque",
    "price",
    "record",
    "record_bytes",
    "record_io",
]
