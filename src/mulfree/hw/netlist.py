"""Evaluate a synthesized gate netlist (Yosys JSON) on many input vectors at once.

Two uses: the mapped netlists are checked against the references like the Amaranth circuits
(so synthesis is verified too, not trusted), and each gate's output transitions between
consecutive operations are counted for the energy estimate (`mulfree.hw.energy`).

Zero-delay evaluation: every gate settles once per operation, so glitches (transient toggles
while carries ripple) are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_OPS = {
    "$_AND_": lambda a, b: a & b,
    "$_OR_": lambda a, b: a | b,
    "$_XOR_": lambda a, b: a ^ b,
    "$_NAND_": lambda a, b: ~(a & b),
    "$_NOT_": lambda a: ~a,
    "$_MUX_": lambda a, b, s: np.where(s, b, a),  # Yosys: Y = S ? B : A
}


@dataclass
class Evaluation:
    outputs: dict[str, list[int]]  # output port -> one integer per vector
    toggles: np.ndarray  # per gate: output transitions over the whole vector sequence
    fanout: np.ndarray  # per gate: how many gate inputs or output-port bits its output drives


def _top(netlist: dict) -> dict:
    tops = [m for m in netlist["modules"].values() if int(m.get("attributes", {}).get("top", 0))]
    if len(tops) != 1:
        raise ValueError("netlist does not have exactly one top module")
    return tops[0]


def evaluate(netlist: dict, inputs: dict[str, Sequence[int]]) -> Evaluation:
    """Drive the netlist's input ports with integer values (one per vector)."""
    mod = _top(netlist)
    n = len(next(iter(inputs.values())))
    val: dict = {"0": np.zeros(n, bool), "1": np.ones(n, bool), "x": np.zeros(n, bool)}
    for name, port in mod["ports"].items():
        if port["direction"] != "input":
            continue
        words = np.asarray([int(v) for v in inputs[name]], dtype=object)
        for i, bit in enumerate(port["bits"]):
            val[bit] = np.asarray((words >> i) & 1, dtype=bool)
    cells = list(mod["cells"].values())
    for c in cells:
        if c["type"] not in _OPS:
            raise ValueError(f"netlist has a cell outside the gate set: {c['type']}")
    # Topological order (Kahn): a cell is ready when all its input bits have values.
    pending = {i: [b for p, bs in c["connections"].items() if p != "Y" for b in bs]
               for i, c in enumerate(cells)}  # fmt: skip
    readers: dict = {}
    for i, bits in pending.items():
        for b in bits:
            readers.setdefault(b, []).append(i)
    missing = {i: sum(1 for b in bits if b not in val) for i, bits in pending.items()}
    ready = [i for i, k in missing.items() if k == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        c = cells[i]
        conn = c["connections"]
        args = [val[conn[p][0]] for p in ("A", "B", "S") if p in conn]
        y = conn["Y"][0]
        val[y] = _OPS[c["type"]](*args)
        for r in readers.get(y, ()):
            missing[r] -= 1
            if missing[r] == 0:
                ready.append(r)
    if len(order) != len(cells):
        raise ValueError("netlist has a combinational loop or an undriven gate input")
    outputs = {}
    drive_count: dict = {}
    for bits in pending.values():
        for b in bits:
            drive_count[b] = drive_count.get(b, 0) + 1
    for name, port in mod["ports"].items():
        if port["direction"] == "output":
            total = np.zeros(n, dtype=object)
            for i, bit in enumerate(port["bits"]):
                total = total + (val[bit].astype(object) << i)
                drive_count[bit] = drive_count.get(bit, 0) + 1
            outputs[name] = [int(v) for v in total]
    ys = [c["connections"]["Y"][0] for c in cells]
    toggles = np.array([np.count_nonzero(val[y][1:] != val[y][:-1]) for y in ys], dtype=np.int64)
    fanout = np.array([drive_count.get(y, 0) for y in ys], dtype=np.int64)
    return Evaluation(outputs, toggles, fanout)
