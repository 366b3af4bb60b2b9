"""Energy per operation of a synthesized circuit, from its gates' output transitions.

Model: dynamic switching energy only. Each output transition of a gate charges or discharges
the capacitance it drives, dissipating 1/2 C V^2 (C V^2 per charge-discharge cycle). The
capacitance of a net is one NAND2 input per gate input it drives (its fanout, read from the
netlist), plus one more for the driving gate's own output and the local wire (an assumption,
stated here and in docs/hw.md). Transitions are counted by evaluating the NAND2/NOT netlist on a
stream of random operations (`mulfree.hw.netlist`, zero-delay: glitches are not counted, so this
is a lower bound on a real gate's dynamic energy; leakage is left out).

The node is 45 nm, as in the Horowitz table the L-Mul paper (and `mulfree.energy`) prices with.
"""

from __future__ import annotations

import numpy as np

# Nangate 45 nm Open Cell Library, NangateOpenCellLibrary_typical.lib (typical corner,
# nom_voltage 1.10 V, 25 C): NAND2_X1 input pin capacitances A1 = 1.599032 fF, A2 = 1.664199 fF.
NAND2_INPUT_CAP_FF = (1.599032 + 1.664199) / 2
SUPPLY_V = 1.10  # the same library's nominal voltage
# Assumption: a gate's own output (drain) capacitance plus its local wire is about one more
# NAND2 input.
SELF_LOAD_INPUTS = 1
NODE = "45 nm (Nangate 45 nm Open Cell Library, typical corner, 1.10 V)"
SOURCE = (
    "Nangate 45 nm Open Cell Library (NangateOpenCellLibrary_typical.lib), NAND2_X1 input "
    "capacitance 1.60/1.66 fF at 1.10 V; E = 1/2 C V^2 per output transition, C = (fanout + 1) "
    "NAND2 inputs"
)


def transition_energy_fj(fanout: np.ndarray | int) -> np.ndarray | float:
    """fJ dissipated by one output transition of a gate driving `fanout` gate inputs."""
    c_ff = (np.asarray(fanout) + SELF_LOAD_INPUTS) * NAND2_INPUT_CAP_FF
    return 0.5 * c_ff * SUPPLY_V**2


def energy_per_op_pj(toggles: np.ndarray, fanout: np.ndarray, operations: int) -> float:
    """pJ per operation: sum over gates of transitions x transition energy, per operation.

    toggles: per gate, transitions counted over `operations` consecutive operations (the
    evaluation of operations + 1 input vectors)."""
    if operations < 1:
        raise ValueError("need at least two vectors (one transition) to count toggles")
    fj = float(np.sum(toggles * transition_energy_fj(fanout)))
    return fj / operations / 1000.0
