"""`mulfree lmul ...`: L-Mul error analysis and a matmul check, thin wrappers over the library."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from mulfree._argparse import MANTISSA_BITS, hidden_alias
from mulfree.errors import MulfreeError


def _int_list(text: str) -> tuple[int, ...]:
    """'1-7' or '1,3,5' or '2-4,23' -> a tuple of ints."""
    out = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like '1-7' or '1,3,5', got {text!r}"
        ) from None
    return tuple(out)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like '64,128', got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dims must be positive, got {text!r}")
    return dims


def register(sub) -> None:
    p = sub.add_parser("lmul", help="L-Mul numerics: error analysis and checks")
    lsub = p.add_subparsers(dest="lmul_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda _a: p.print_help() or 2)

    e = lsub.add_parser(
        "error",
        help="relative error of L-Mul vs exact k-bit and fp8 multiplication (paper Table 7)",
    )
    e.add_argument(
        "--mantissa-bits", dest="k", type=_int_list, default=(1, 2, 3, 4, 5, 6, 7),
        help="mantissa bits, e.g. 1-7"
    )
    hidden_alias(e, "--k", dest="k", type=_int_list, deprecated=MANTISSA_BITS)
    e.add_argument("--n", type=int, default=1_000_000, help="operand pairs per source")
    e.add_argument(
        "--sources",
        default=None,
        help="operand sources: uniform, gaussian, model (default: uniform,gaussian, plus model "
        "when --model is given or gemma3-270m has been fetched)",
    )
    e.add_argument(
        "--model",
        default=None,
        help="a model name (mulfree models list) or local HF dir to sample real operands from "
        "(default: gemma3-270m when it has been fetched)",
    )
    e.add_argument("--out", default="runs/lmul_error", help="output directory")
    e.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds other files than an earlier result",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_error)

    m = lsub.add_parser("matmul", help="L-Matmul on random operands: error vs exact and time")
    m.add_argument("--shape-a", type=_shape, default=(64, 256))
    m.add_argument("--shape-b", type=_shape, default=(256, 64))
    m.add_argument("--format", default="float32", help="float32, bf16, fp16, e4m3, e5m2")
    m.add_argument("--mantissa-bits", dest="k", type=int, default=None,
                   help="mantissa bits (default: the format's)")
    hidden_alias(m, "--k", dest="k", type=int, deprecated=MANTISSA_BITS)
    m.add_argument("--mode", default="int", choices=["int", "eq1"])
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_matmul)


def cmd_error(args) -> int:
    from mulfree.report.lmul_error import ErrorConfig, run

    model = args.model
    if model is None and args.sources is None:
        # Real operands when a real model is at hand (fetched earlier by `mulfree models get`);
        # otherwise the Gaussian stand-in, labelled as such.
        from mulfree.hub.registry import is_cached

        model = "gemma3-270m" if is_cached("gemma3-270m") else None
    cfg = ErrorConfig(
        ks=args.k,
        n=args.n,
        sources=tuple(s for s in (args.sources or "uniform,gaussian").split(",") if s),
        model=model,
        seed=args.seed,
        out_dir=args.out,
        force=args.force,
    )
    command = "mulfree " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res = run(cfg, progress=not args.no_progress, command=command)
    from mulfree.report.lmul_error import to_markdown

    print(to_markdown(res))
    print(f"\nwrote {cfg.out_dir}/error.md, error.json, error.png")
    return 0


def cmd_matmul(args) -> int:
    import torch

    from mulfree.lmul import lmatmul
    from mulfree.lmul.formats import check_mantissa_bits, get_format

    f = get_format(args.format)
    if args.k is not None and not 1 <= args.k <= 23:
        raise MulfreeError(f"--mantissa-bits {args.k} is outside 1..23")
    check_mantissa_bits(f, args.k)
    sa, sb = args.shape_a, args.shape_b
    if sa[-1] != (sb[-2] if len(sb) > 1 else sb[0]):
        raise MulfreeError(f"shapes {sa} and {sb} do not multiply (inner dims differ)")
    gen = torch.Generator().manual_seed(args.seed)
    a = torch.randn(sa, generator=gen).to(f.dtype)
    b = torch.randn(sb, generator=gen).to(f.dtype)
    t0 = time.perf_counter()
    out = lmatmul(a, b, mantissa_bits=args.k, mode=args.mode)
    dt = time.perf_counter() - t0
    exact = torch.matmul(a.double(), b.double())
    err = (out.double() - exact).norm() / exact.norm()
    print(
        f"lmatmul {tuple(sa)} @ {tuple(sb)} {f.name} k={args.k or f.man_bits} mode={args.mode}: "
        f"relative Frobenius error vs exact {err:.3e}, {dt * 1e3:.1f} ms"
    )
    return 0
