"""Energy accounting: count what runs (ops by kind and width, bytes), price it with a cited table.

from mulfree.energy import EnergyCounter, EnergyTable, price
with EnergyCounter(model) as c:
    model(input_ids)
energy = price(c.counts, c.bytes, EnergyTable.load())
"""

from mulfree.energy.counter import (
    EnergyCounter,
    counting,
    opaque,
    record,
    record_bytes,
    record_io,
)
from mulfree.energy.tables import EnergyTable, price

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
