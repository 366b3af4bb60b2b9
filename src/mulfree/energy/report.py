"""Energy per generated token of one model under each option, as a table and a stacked-bar PNG.

For every variant we build a transformed copy of the model, run a prompt of `context` tokens
with the model's cache, and count (mulfree.energy.EnergyCounter) exactly one further decode step:
the cost of generating one token at that context length. The counts are priced with an energy
table (default: Horowitz 45 nm, as in the L-Mul paper). Variants:

  fp32        the model in float32 (for a MatMul-free model: the official method, BitLinear
              fake-quantization + float32 F.linear)
  bf16        the model in bfloat16
  lmul-attn   L-Mul attention (mulfree.apply_lmul_, k = --lmul-bits) — transformers only
  lmul-all    L-Mul in attention and in every linear layer
  ternary     MatMul-free model with packed ternary weights (add-only kernels)
  mulfree     ternary + every elementwise multiply of the mixers through L-Mul

A variant that does not apply to the model (e.g. lmul-attn on a recurrent model) is skipped
with a one-line reason.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mulfree._io import atomic_write_text, output_dir, save_figure
from mulfree.energy.counter import EnergyCounter
from mulfree.energy.measure import measure
from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable, price
from mulfree.energy.variants import ALL_VARIANTS
from mulfree.errors import MulfreeError
from mulfree.models.hf_compat import cache_kwargs, output_cache

# Groups of counted op kinds shown as the stacked bars.
GROUPS = {
    "float multiply": ("fp_mul",),
    "float add": ("fp_add",),
    "integer multiply": ("int_mul",),
    "integer add": ("int_add",),
    "L-Mul (int add)": ("lmul",),
    "ternary add/sub": ("ternary_add",),
    "nonlinear (exp, div, rsqrt, ...)": ("exp", "log", "div", "rsqrt", "sqrt", "tanh", "cmp"),
}


class VariantNotApplicable(Exception):
    """Raised by a variant builder when the option does not apply to this model."""


def _is_mmfree(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "hgrn_bit"


def _is_packed(model) -> bool:
    """A model loaded from the packed format (mulfree.engine): its projections are ternary."""
    from mulfree.engine.bitnet_model import PackedBitNetForCausalLM
    from mulfree.engine.model import PackedHGRNBitForCausalLM

    return isinstance(model, (PackedHGRNBitForCausalLM, PackedBitNetForCausalLM))


_PACKED = "a packed model's projections are ternary already (the float variants need its checkpoint)"


def _fp32(model):
    if _is_packed(model):
        raise VariantNotApplicable(_PACKED)
    return model.float()


def _bf16(model):
    if _is_packed(model):
        raise VariantNotApplicable(_PACKED)
    return model.to(torch.bfloat16)


def _lmul_attn(model, bits, linear=False):
    if _is_mmfree(model):
        raise VariantNotApplicable("a MatMul-free model has no attention (MLGRU token mixer)")
    try:
        from mulfree.attention import LMulConfig, apply_lmul_
    except ImportError as e:
        raise VariantNotApplicable(f"L-Mul attention is not available: {e}") from None
    apply_lmul_(model.float(), LMulConfig(mantissa_bits=bits, linear=linear))
    return model


def _ternary(model, elementwise_lmul_bits=None):
    if _is_packed(model) and not _is_mmfree(model):  # a packed BitNet: ternary as loaded
        if elementwise_lmul_bits is not None:
            raise VariantNotApplicable("L-Mul elementwise products are for MatMul-free models")
        return model
    if not _is_mmfree(model):
        raise VariantNotApplicable("only MatMul-free (hgrn_bit) models have ternary weights")
    from mulfree.engine import pack_model_

    model = pack_model_(model.float())
    if elementwise_lmul_bits is not None:
        model.set_elementwise_mul("lmul", mantissa_bits=elementwise_lmul_bits)
    return model


def build_variant(model, name: str, lmul_bits: int = 3):
    """A transformed deep copy of `model` for variant `name` (raises VariantNotApplicable)."""
    builders: dict[str, Callable] = {
        "fp32": _fp32,
        "bf16": _bf16,
        "lmul-attn": lambda m: _lmul_attn(m, lmul_bits),
        "lmul-all": lambda m: _lmul_attn(m, lmul_bits, linear=True),
        "ternary": _ternary,
        "mulfree": lambda m: _ternary(m, elementwise_lmul_bits=lmul_bits),
    }
    if name not in builders:
        raise MulfreeError(
            f"unknown energy variant {name!r}; choose from {', '.join(ALL_VARIANTS)}"
        )
    return builders[name](copy.deepcopy(model)).eval()


def count_decode_step(model, context: int, vocab_size: int, seed: int = 0) -> EnergyCounter:
    """Counts of one decode step after a `context`-token prompt (random token ids)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, context + 1), generator=gen)
    with torch.no_grad():
        out = model(input_ids=ids[:, :context], use_cache=True)
        past = output_cache(out)
        with EnergyCounter(model) as c:
            model(input_ids=ids[:, context:], **cache_kwargs(past), use_cache=True)
    return c


@dataclass
class VariantEnergy:
    name: str
    counts: dict
    bytes: dict
    energy: dict  # from tables.price
    unknown: dict = field(default_factory=dict)

    def group_pj(self) -> dict[str, float]:
        out = dict.fromkeys(GROUPS, 0.0)
        for (kind, _bits), pj in self.energy["per_op_pJ"].items():
            for g, kinds in GROUPS.items():
                if kind in kinds:
                    out[g] += pj
        out["memory: weights"] = self.energy["memory_weights_pJ"]
        out["memory: activations"] = self.energy["memory_activations_pJ"]
        return out


@dataclass
class EnergyReport:
    model_name: str
    context: int
    table: str
    rows: list[VariantEnergy]
    skipped: dict[str, str]
    measured: str

    def to_markdown(self, command: str | None = None) -> str:
        lines = [f"# Energy per generated token: {self.model_name}", ""]
        if command:
            lines += [f"Made by: `{command}`", ""]
        lines += [
            f"One decode step after a {self.context}-token prompt, counted op by op from what ran "
            f"(mulfree.energy) and priced with the `{self.table}` table (see its sources). "
            "Memory: weight bytes from DRAM, activation bytes from a 1 MB cache (table's model).",
            "",
            "| variant | compute µJ | memory µJ | total µJ | fp mul | fp add | L-Mul | ternary add | int add | nonlinear | vs fp32 total |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = next((r.energy["total_pJ"] for r in self.rows if r.name == "fp32"), None)
        for r in self.rows:
            e = r.energy

            def n(kind, r=r):
                return sum(v for (k, _), v in r.counts.items() if k == kind)

            nonlinear = sum(n(k) for k in GROUPS["nonlinear (exp, div, rsqrt, ...)"])
            ratio = f"{e['total_pJ'] / base:.3f}x" if base else ""
            lines.append(
                f"| {r.name} | {e['compute_pJ'] / 1e6:.3f} | {e['memory_pJ'] / 1e6:.3f} | "
                f"{e['total_pJ'] / 1e6:.3f} | {n('fp_mul'):,} | {n('fp_add'):,} | {n('lmul'):,} | "
                f"{n('ternary_add'):,} | {n('int_add'):,} | {nonlinear:,} | {ratio} |"
            )
        if self.skipped:
            lines += ["", "Skipped variants:"] + [f"- {k}: {v}" for k, v in self.skipped.items()]
        unknown = {k for r in self.rows for k in r.unknown}
        if unknown:
            lines += ["", "Ops not costed (listed, priced at 0): " + ", ".join(sorted(unknown))]
        lines += ["", self.measured, ""]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "model": self.model_name,
            "context": self.context,
            "table": self.table,
            "measured": self.measured,
            "skipped": self.skipped,
            "rows": [
                {
                    "name": r.name,
                    "counts": {f"{k}_{b}": v for (k, b), v in r.counts.items()},
                    "bytes": r.bytes,
                    "energy_pJ": {k: v for k, v in r.energy.items() if k != "per_op_pJ"},
                    "groups_pJ": r.group_pj(),
                    "unknown": r.unknown,
                }
                for r in self.rows
            ],
        }

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r.name for r in self.rows]
        groups = list(self.rows[0].group_pj()) if self.rows else []
        fig, ax = plt.subplots(figsize=(1.6 * max(len(names), 3) + 3, 4.8))
        bottom = [0.0] * len(names)
        for g in groups:
            vals = [r.group_pj()[g] / 1e6 for r in self.rows]
            if not any(vals):
                continue
            ax.bar(names, vals, bottom=bottom, label=g)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel("µJ per generated token")
        ax.set_title(f"{self.model_name}: energy per token by op kind ({self.table})", fontsize=10)
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        save_figure(fig, path)


def energy_report(
    model,
    *,
    model_name: str,
    variants=ALL_VARIANTS,
    context: int = 64,
    table: str = DEFAULT_TABLE,
    lmul_bits: int = 3,
) -> EnergyReport:
    """Count and price one decode step of every applicable variant of `model`."""
    if context < 1:
        raise MulfreeError(f"context must be >= 1, got {context}")
    tab = EnergyTable.load(table)
    vocab = model.config.vocab_size
    rows, skipped = [], {}
    for name in variants:
        try:
            m = build_variant(model, name, lmul_bits)
        except VariantNotApplicable as e:
            skipped[name] = str(e)
            continue
        c = count_decode_step(m, context, vocab)
        rows.append(
            VariantEnergy(
                name, dict(c.counts), dict(c.bytes), price(c.counts, c.bytes, tab), dict(c.unknown)
            )
        )
    if not rows:
        raise MulfreeError(
            "no energy variant applies to this model: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    first = build_variant(model, rows[0].name, lmul_bits)
    with torch.no_grad():
        ids = torch.zeros(1, context, dtype=torch.long)
        meas = measure(lambda: first(input_ids=ids))
    measured = meas.summary() + f" ({rows[0].name} forward over {context} tokens)"
    return EnergyReport(model_name, context, tab.name, rows, skipped, measured)


OUTPUT_FILES = ("energy.md", "energy.json", "energy.png")  # what write_report puts in out_dir


def write_report(rep: EnergyReport, out_dir: Path, command: str | None = None, *,
                 force: bool = False) -> None:  # fmt: skip
    """Write energy.md/.json/.png as the folder `out_dir`: new, or holding only an earlier
    report, unless `force` (see mulfree._io.output_dir)."""
    with output_dir(Path(out_dir), force=force, own=OUTPUT_FILES) as tmp:
        atomic_write_text(tmp / "energy.md", rep.to_markdown(command))
        atomic_write_text(tmp / "energy.json", json.dumps(rep.to_json(), indent=1))
        rep.plot(tmp / "energy.png")
