"""`mulfree energy`: energy per generated token of a model under each option."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mulfree.errors import MulfreeError


def register(sub) -> None:
    p = sub.add_parser("energy", help="energy per generated token, by op kind, for each option")
    p.add_argument(
        "--model",
        required=True,
        help="a local HF model dir, a known model (e.g. gemma3-270m), or mmfree:PRESET / "
        "transformerpp:PRESET (random weights)",
    )
    p.add_argument("--variants", default=",".join(_variants()), help="comma-separated variants")
    p.add_argument("--context", type=int, default=64, help="prompt tokens before the counted step")
    p.add_argument("--lmul-bits", type=int, default=3, help="L-Mul mantissa bits for lmul variants")
    p.add_argument("--table", default="horowitz_45nm", help="energy table name or JSON file")
    p.add_argument("--out", default="runs/energy", help="output directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds other files than an earlier report",
    )
    p.set_defaults(func=cmd_energy)


def _variants():
    from mulfree.energy.variants import ALL_VARIANTS

    return ALL_VARIANTS


def load_model(spec: str):
    """A causal LM from a local directory, or a preset with random weights (seed 0)."""
    import torch

    if ":" in spec and not Path(spec).exists():
        family, name = spec.split(":", 1)
        torch.manual_seed(0)
        if family == "mmfree":
            from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM

            return HGRNBitForCausalLM(HGRNBitConfig.from_name(name)).eval(), spec
        if family == "transformerpp":
            from mulfree.models.transformerpp import build_transformerpp

            return build_transformerpp(name).eval(), spec
        raise MulfreeError(
            f"unknown model family {family!r} in {spec!r}; use mmfree: or transformerpp:"
        )
    from mulfree.hub.registry import MODELS, resolve_model

    path = resolve_model(spec) if spec in MODELS else Path(spec)
    if not path.is_dir():
        raise MulfreeError(
            f"model {spec!r} is neither a directory, a known model ({', '.join(sorted(MODELS))}) "
            "nor a FAMILY:PRESET name"
        )
    from transformers import AutoModelForCausalLM

    import mulfree  # noqa: F401  (registers hgrn_bit with the Auto classes)

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise MulfreeError(
            f"cannot load a causal LM from {spec!r}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), path.name


def cmd_energy(args) -> int:
    from mulfree._io import check_output_dir
    from mulfree.energy.report import OUTPUT_FILES, energy_report, write_report

    variants = tuple(v for v in args.variants.split(",") if v)
    check_output_dir(Path(args.out), force=args.force, own=OUTPUT_FILES)  # before the model loads
    model, name = load_model(args.model)
    rep = energy_report(
        model,
        model_name=name,
        variants=variants,
        context=args.context,
        table=args.table,
        lmul_bits=args.lmul_bits,
    )
    out = Path(args.out)
    command = "mulfree " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_report(rep, out, command, force=args.force)
    print(rep.to_markdown())
    print(f"wrote {out}/energy.md, energy.json, energy.png")
    return 0
