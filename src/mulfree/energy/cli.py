"""`mulfree energy`: energy per generated token of a model under each option."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mulfree._argparse import MANTISSA_BITS, hidden_alias


def register(sub) -> None:
    p = sub.add_parser("energy", help="energy per generated token, by op kind, for each option")
    p.add_argument(
        "--model",
        required=True,
        help="a packed model, a model dir or train run, a known model (e.g. gemma3-270m), or "
        "mmfree:PRESET / transformerpp:PRESET (random weights)",
    )
    p.add_argument("--variants", default=",".join(_variants()), help="comma-separated variants")
    p.add_argument("--context", type=int, default=64, help="prompt tokens before the counted step")
    p.add_argument("--mantissa-bits", dest="lmul_bits", type=int, default=3,
                   help="L-Mul mantissa bits for lmul variants")
    hidden_alias(p, "--lmul-bits", dest="lmul_bits", type=int, deprecated=MANTISSA_BITS)
    p.add_argument("--table", default="horowitz_45nm", help="energy table name or JSON file")
    p.add_argument("--out", default="runs/energy", help="output directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds other files than an earlier report",
    )
    p.set_defaults(func=cmd_energy)
    _register_schedule(sub)


def _variants():
    from mulfree.energy.variants import ALL_VARIANTS

    return ALL_VARIANTS


def load_model(spec: str):
    """(model, display name) of a model spec (`mulfree.models.resolve`: a packed model, a model
    folder, a train run, a known model, or FAMILY:PRESET with random weights, seed 0)."""
    from mulfree.engine.load import load

    got = load(spec)
    return got.model, got.name


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


def _register_schedule(sub) -> None:
    p = sub.add_parser(
        "schedule",
        help="the lowest-carbon start (or windows) for a job, from an intensity forecast",
        description=(
            "Print the start time (ISO 8601, in the forecast's time zone) that minimises the mean "
            "carbon intensity over a job of --duration finishing by --deadline, and the saving "
            "against starting now. The time goes to stdout alone (for sbatch --begin, at, "
            "systemd-run --on-calendar); the explanation to stderr. --wait sleeps until then."
        ),
    )
    a = p.add_argument
    a("--forecast", required=True, metavar="FILE", help="CSV (timestamp,gco2_per_kwh) or JSON")
    a("--duration", required=True, help="job length: 3h, 90m, 1h30m (a bare number: minutes)")
    a("--deadline", metavar="TIME", help="ISO 8601 time the job must finish by")
    a("--now", metavar="TIME", help="plan as if it were this ISO 8601 time (default: now)")
    a("--interruptible", action="store_true", help="the job can pause: print its windows")
    a("--time-column", default="timestamp", help="CSV column of times")
    a("--value-column", default="gco2_per_kwh", help="CSV column of gCO2e/kWh")
    a(
        "--format",
        choices=["iso", "unix", "slurm"],
        default="iso",
        help="iso: forecast's zone; unix: epoch seconds; slurm: local YYYY-MM-DDTHH:MM:SS",
    )
    a("--plot", metavar="PNG", help="write the series with the chosen window(s)")
    a("--wait", action="store_true", help="sleep until the (first) start, then exit 0")
    p.set_defaults(func=cmd_schedule)


def _fmt(t, fmt: str, tz) -> str:
    if fmt == "unix":
        return str(int(t.timestamp()))
    if fmt == "slurm":
        return t.astimezone().replace(tzinfo=None).isoformat(timespec="seconds")
    return t.astimezone(tz).isoformat(timespec="seconds")


def cmd_schedule(args) -> int:
    from datetime import UTC, datetime

    from mulfree.energy.carbon import load_series, parse_time
    from mulfree.energy.schedule import (
        best_start,
        interruptible_windows,
        parse_duration,
        plot_plan,
    )

    series = load_series(args.forecast, args.time_column, args.value_column)
    duration = parse_duration(args.duration)
    now = parse_time(args.now, "--now") if args.now else datetime.now(UTC)
    deadline = parse_time(args.deadline, "--deadline") if args.deadline else None
    plan = (interruptible_windows if args.interruptible else best_start)(
        series, duration, now, deadline
    )
    tz = series.tz
    err = sys.stderr
    if args.interruptible:
        for w in plan.windows:
            print(f"{_fmt(w.start, args.format, tz)} {_fmt(w.end, args.format, tz)}")
        err.write(f"{len(plan.windows)} window(s), {duration} of work, mean "
                  f"{plan.mean:.1f} gCO2e/kWh\n")  # fmt: skip
    else:
        print(_fmt(plan.start, args.format, tz))
        err.write(f"best start {plan.start.astimezone(tz).isoformat()} for {duration}: mean "
                  f"{plan.mean:.1f} gCO2e/kWh\n")  # fmt: skip
    if plan.now_mean is None:
        err.write("starting now is outside the forecast: no saving computed\n")
    else:
        err.write(f"starting now: mean {plan.now_mean:.1f} gCO2e/kWh; saving "
                  f"{plan.saving_percent:.1f} % of the emissions (same energy)\n")  # fmt: skip
    if args.plot:
        name = "interruptible" if args.interruptible else "best start"
        plot_plan(series, {name: plan}, args.plot, title=f"{duration} job on {series.label}")
        err.write(f"wrote {args.plot}\n")
    if args.wait:
        _wait_until(plan.start)
    return 0


def _wait_until(t) -> None:
    """Sleep until `t` (aware), with a progress bar counting down the seconds."""
    import time
    from datetime import UTC, datetime

    from tqdm.auto import tqdm

    total = (t - datetime.now(UTC)).total_seconds()
    if total <= 0:
        return
    with tqdm(total=int(total), unit="s", desc="waiting for the window", dynamic_ncols=True) as bar:
        while (left := (t - datetime.now(UTC)).total_seconds()) > 0:
            time.sleep(min(left, 1.0))
            bar.n = int(total - max(left - 1.0, 0))
            bar.refresh()
