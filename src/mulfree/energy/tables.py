"""Energy tables (data files with inline sources) and the pricing of counted operations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mulfree.errors import MulfreeError

DEFAULT_TABLE = "horowitz_45nm"
_WIDTHS = (8, 16, 32, 64)


@dataclass
class EnergyTable:
    name: str
    ops_pj: dict[str, float]  # "fp_mul_32" -> pJ
    memory_pj_per_byte: dict[str, float]  # "dram" -> pJ per byte
    weights_memory: str
    activations_memory: str
    composites: dict[str, dict[str, float]]
    raw: dict

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_TABLE) -> EnergyTable:
        """A bundled table by name (e.g. "horowitz_45nm") or a user's JSON file of the same shape."""
        p = Path(name_or_path)
        if p.suffix == ".json" or p.exists():
            if not p.is_file():
                raise MulfreeError(f"energy table {name_or_path!r} does not exist")
            text = p.read_text()
        else:
            try:
                text = (
                    resources.files("mulfree.energy")
                    .joinpath(f"tables/{name_or_path}.json")
                    .read_text()
                )
            except FileNotFoundError:
                raise MulfreeError(
                    f"unknown energy table {name_or_path!r}; bundled: {DEFAULT_TABLE}"
                ) from None
        try:
            raw = json.loads(text)
            ops = {k: float(v["pJ"]) for k, v in raw["ops_pJ"].items()}
            mem = {k: float(v["pJ"]) / 8.0 for k, v in raw["memory_pJ_per_64bit"].items()}
            model = raw["memory_model"]
            comps = {k: v for k, v in raw.get("composites", {}).items() if isinstance(v, dict)}
            table = cls(
                raw.get("name", str(name_or_path)),
                ops,
                mem,
                model["weights"],
                model["activations"],
                comps,
                raw,
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise MulfreeError(
                f"malformed energy table {name_or_path!r}: {type(e).__name__}: {e}"
            ) from None
        for need in ("fp_add", "fp_mul", "int_add", "int_mul"):
            if not any(k.startswith(need + "_") for k in ops):
                raise MulfreeError(f"energy table {name_or_path!r} lacks any {need}_<bits> entry")
        for where in (table.weights_memory, table.activations_memory):
            if where not in mem:
                raise MulfreeError(
                    f"energy table {name_or_path!r}: memory level {where!r} is not defined"
                )
        return table

    def basic(self, kind: str, bits: int) -> float:
        """pJ of one basic op (fp_add / fp_mul / int_add / int_mul) of a width."""
        key = f"{kind}_{bits}"
        if key in self.ops_pj:
            return self.ops_pj[key]
        wider = [w for w in _WIDTHS if w >= bits and f"{kind}_{w}" in self.ops_pj]
        if not wider:
            raise MulfreeError(f"energy table {self.name!r} has no {kind} of {bits} bits or wider")
        return self.ops_pj[f"{kind}_{wider[0]}"]  # price an odd width as the next wider unit

    def op_pj(self, kind: str, bits: int) -> float:
        """pJ of one counted op (kind as in mulfree.energy.counter)."""
        if kind in ("fp_add", "fp_mul", "int_add", "int_mul"):
            return self.basic(kind, bits)
        if kind in ("lmul", "ternary_add"):
            # L-Mul is one integer add of the operands' width (Luo & Sun 2024, Sec. 3); a ternary
            # product is an add or subtract of the activation into an integer accumulator.
            return self.basic("int_add", bits)
        if kind == "cmp":
            return self.basic("fp_add", bits)
        if kind in self.composites:
            rule = self.composites[kind]
            return sum(
                n * self.basic(k, bits)
                for k, n in rule.items()
                if k in ("fp_add", "fp_mul", "int_add", "int_mul")
            )
        raise MulfreeError(f"energy table {self.name!r} cannot price op kind {kind!r}")


def price(counts: dict[tuple[str, int], int], bytes_: dict[str, int], table: EnergyTable) -> dict:
    """Energy in pJ: per (kind, bits), compute total, memory by class, total."""
    per_op = {(k, b): n * table.op_pj(k, b) for (k, b), n in counts.items() if n}
    compute = sum(per_op.values())
    w = bytes_.get("weight_read", 0) * table.memory_pj_per_byte[table.weights_memory]
    a = (bytes_.get("act_read", 0) + bytes_.get("act_write", 0)) * table.memory_pj_per_byte[
        table.activations_memory
    ]
    return {
        "per_op_pJ": per_op,
        "compute_pJ": compute,
        "memory_weights_pJ": w,
        "memory_activations_pJ": a,
        "memory_pJ": w + a,
        "total_pJ": compute + w + a,
    }
