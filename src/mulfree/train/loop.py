"""`train(config)`: the training loop behind `mulfree train`.

Recipe (Zhu et al. 2024, "Scalable MatMul-free Language Modeling"): AdamW, linear warm-up,
cosine decay to `min_lr_ratio * lr`, the learning rate halved from the midpoint on for
MatMul-free models, global-norm gradient clipping, optional bf16 autocast.

Determinism is by construction: initial weights depend only on the seed, the sample order only
on (seed, sample index), and a checkpoint stores every other piece of state bit-exactly. So a
run killed and resumed ends with the same weights as an unbroken one, and N processes at the same
global batch compute the same mean loss as one (up to float summation order).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from mulfree.data import (
    SampleStream,
    find_eos_token,
    load_tokenizer,
    pack,
    read_documents,
    save_hf_tokenizer,
    tokenize_documents,
    train_bpe_tokenizer,
)
from mulfree.errors import MulfreeError
from mulfree.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    read_trainer_state,
    remove_temporaries,
    save_checkpoint,
)
from mulfree.train.config import TrainConfig
from mulfree.train.distributed import DistContext, init_distributed
from mulfree.train.energy import PhaseEnergy, Stop, new_state
from mulfree.train.metrics import MetricsLog, plot_losses
from mulfree.train.models import (
    build_model,
    config_from_dict,
    fit_to_tokenizer,
    is_matmul_free,
    model_config,
)

MODEL_INFO_FORMAT = "mulfree-trained-model"
PLOT_INTERVAL_S = 60.0


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    model_dir: Path  # HF-style: config.json + model.safetensors + tokenizer.json
    steps: int
    tokens_seen: int
    train_loss: float | None  # mean over the last logging interval
    val_loss: float | None  # held-out loss at the end
    num_params: int
    metrics_path: Path
    plot_path: Path | None
    # Set when the run stopped early at a checkpoint (a budget, or between carbon windows):
    # a one-line message, and when to continue (None: after raising the budget).
    stopped: str | None = None
    next_start: datetime | None = None
    energy: dict | None = None  # totals over every session: joules, gco2e, seconds, steps


def lr_at(step: int, cfg: TrainConfig, halve_at_midpoint: bool) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        lr = cfg.lr * (step + 1) / cfg.warmup_steps
    else:
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        floor = cfg.lr * cfg.min_lr_ratio
        lr = floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if halve_at_midpoint and step >= cfg.max_steps // 2:
        lr *= 0.5
    return lr


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay weight matrices and embeddings only: norms' gains and biases are scales/offsets that
    # weight decay would pull toward 0, and the MatMul-free lower bounds are a learned schedule.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name or name.endswith("lower_bounds"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _wrap(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext) -> torch.nn.Module:
    if not ctx.distributed:
        return model
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        # Shard each decoder block separately so only one block's full weights exist at a time.
        inner = getattr(model, "model", None)
        for block in getattr(inner, "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def _grad_sync(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if not ctx.distributed or sync:
        if ctx.distributed and cfg.fsdp:
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if cfg.fsdp:
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return model.no_sync()


def _autocast(cfg: TrainConfig, ctx: DistContext):
    if not cfg.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val: torch.Tensor, micro: int, cfg: TrainConfig, ctx: DistContext
) -> float | None:
    """Mean next-token cross-entropy over the first `cfg.eval_sequences` held-out rows.

    Rows are dealt round-robin to processes; every process runs the same number of forwards
    (padding with zero-weight rows) because FSDP forwards are collectives.
    """
    n = len(val) if cfg.eval_sequences == 0 else min(len(val), cfg.eval_sequences)
    if n == 0:
        return None
    mine = torch.arange(ctx.rank, n, ctx.world_size)
    per_rank = -(-n // ctx.world_size)  # ceil: the largest share any process has
    weight = torch.zeros(per_rank, dtype=torch.float64)
    weight[: len(mine)] = 1.0
    mine = torch.cat([mine, torch.zeros(per_rank - len(mine), dtype=torch.int64)])
    total = torch.zeros(2, dtype=torch.float64)  # [sum of row losses, rows]
    was_training = model.training
    model.eval()
    for s in range(0, per_rank, micro):
        x = val[mine[s : s + micro]].to(ctx.device, torch.long)  # [b, T]
        with _autocast(cfg, ctx):
            logits = model(input_ids=x).logits  # [b, T, V]
        # Row loss = mean over its T-1 next-token targets; float32 so bf16 logits stay accurate.
        tok_loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),  # [b*(T-1), V]
            x[:, 1:].reshape(-1),
            reduction="none",
        ).view(x.shape[0], -1)  # [b, T-1]
        w = weight[s : s + micro]
        total[0] += (tok_loss.double().mean(dim=1).cpu() * w).sum()
        total[1] += w.sum()
    model.train(was_training)
    ctx.all_reduce_sum(total)
    return float(total[0] / total[1])


def _check_resume_config(cfg: TrainConfig, saved: dict, path: Path) -> None:
    saved_cfg = TrainConfig.from_dict(saved["config"])
    diffs = cfg.recipe_differences(saved_cfg)
    if diffs:
        a, b = cfg.to_dict(), saved_cfg.to_dict()
        desc = "; ".join(f"{k}: checkpoint {b[k]!r}, given {a[k]!r}" for k in diffs)
        raise MulfreeError(f"--resume with settings that differ from {path}: {desc}")


def train(config: TrainConfig, *, meter=None, clock=None) -> TrainResult:
    """Train `config.model` on `config.data`; write checkpoints, metrics, a plot and the model.

    Outputs under `config.out_dir`: `checkpoints/step_*/`, `metrics.jsonl`, `loss.png`,
    `tokenizer.json`, and `model/` (loadable by `AutoModelForCausalLM.from_pretrained`).
    Under `torchrun` every process calls this; rank 0 writes the files.

    Energy options (budgets, power cap, carbon windows) may stop the run early at a checkpoint:
    then `result.stopped` says why and `result.next_start` when to `--resume`. `meter` (a
    `mulfree.energy.meter.Meter`) and `clock` (`mulfree.train.energy.Clock`) replace the
    machine's for tests.
    """
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx, meter, clock)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, ctx: DistContext, meter=None, clock=None) -> TrainResult:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise MulfreeError(f"output path {out} exists and is not a folder")
    ckpts = list_checkpoints(out)
    if not cfg.resume and (ckpts or (out / "model").exists()):
        raise MulfreeError(
            f"{out} already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )
    resume_from = ckpts[-1][1] if cfg.resume and ckpts else None
    saved = read_trainer_state(resume_from) if resume_from else None
    if saved:
        _check_resume_config(cfg, saved, resume_from)

    # --- everything that can fail on user input happens before any write, cheapest first ---
    # A resumed run rebuilds the exact architecture it saved, even if a preset changed since.
    mcfg = config_from_dict(saved["model_config"]) if saved else model_config(cfg.model, cfg.extra)
    max_pos = getattr(mcfg, "max_position_embeddings", None)
    if max_pos is not None and cfg.seq_len > max_pos:
        raise MulfreeError(
            f"seq_len {cfg.seq_len} exceeds the model's max_position_embeddings {max_pos}"
        )
    tok = None
    if saved:
        tok = load_tokenizer(out / "tokenizer.json")
    elif cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    docs = read_documents(cfg.data, cfg.text_field)
    if tok is None:
        from tokenizers import Tokenizer

        # One process trains; the others receive the exact same tokenizer as JSON.
        tok_json = train_bpe_tokenizer(docs, cfg.vocab_size).to_str() if ctx.is_main else None
        tok = Tokenizer.from_str(ctx.broadcast_object(tok_json))
    eos, eos_id = find_eos_token(tok, cfg.eos_token)
    corpus = pack(tokenize_documents(docs, tok, eos_id), cfg.seq_len, cfg.val_fraction, cfg.seed)
    del docs
    if saved and saved["data_fingerprint"] != corpus.fingerprint:
        raise MulfreeError(
            f"--resume: the corpus differs from the one {resume_from} was trained on "
            "(different files, text field, or tokenizer)"
        )

    per_rank, rem = divmod(cfg.batch_size, ctx.world_size)
    if rem:
        raise MulfreeError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise MulfreeError(
            f"each of {ctx.world_size} processes gets {per_rank} sequences per step, "
            f"not a multiple of micro_batch_size {micro}"
        )
    accum = per_rank // micro
    energy = PhaseEnergy(cfg, meter=meter, clock=clock)
    # Stop decisions must be the same on every process: rank 0's are broadcast.
    energy_decides = ctx.distributed and any(
        v is not None for v in (cfg.energy_budget_wh, cfg.carbon_budget_g, cfg.carbon_forecast)
    )

    fit_to_tokenizer(mcfg, tok.get_vocab_size(), eos_id)
    raw = build_model(mcfg, cfg.seed).to(ctx.device)
    num_params = sum(p.numel() for p in raw.parameters())
    halve = cfg.lr_halve_at_midpoint
    if halve is None:
        halve = is_matmul_free(mcfg)
    model = _wrap(raw, cfg, ctx)
    # Under FSDP, parameters are replaced by sharded ones in place, so build the optimizer after.
    opt = torch.optim.AdamW(
        _param_groups(raw, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps
    )

    start_step = 0
    # Running loss of the current logging interval: checkpointed so a resumed run logs the same
    # averages as an unbroken one even when checkpoints fall inside a logging interval.
    log_state = {"interval_loss": 0.0, "interval_steps": 0, "last_loss": None}
    log_state["energy"] = new_state()  # the run's energy totals, carried across --resume
    if resume_from:
        state = load_checkpoint(resume_from, model, opt, ctx)
        start_step = state["step"]
        log_state.update(state.get("log_state", {}))
    energy.state = log_state["energy"]

    # --- outputs ---
    metrics = MetricsLog(out / "metrics.jsonl")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        if saved:
            metrics.truncate_after(start_step)
        else:
            # A run killed before its first checkpoint starts over: its log goes too.
            metrics.path.unlink(missing_ok=True)
            save_hf_tokenizer(tok, eos, out)
    ctx.barrier()

    stream = SampleStream(len(corpus.train), cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    trainer_state = {
        "data_fingerprint": corpus.fingerprint,
        "world_size": ctx.world_size,
        "config": cfg.to_dict(),
        "model_config": mcfg.to_dict(),
        "num_params": num_params,
    }

    last_plot = [time.monotonic()]
    last_ckpt = [start_step if resume_from else -1]

    def checkpoint(step: int) -> None:
        state = dict(
            trainer_state,
            samples_seen=step * cfg.batch_size,
            tokens_seen=step * tokens_per_step,
            log_state=dict(log_state),
        )
        save_checkpoint(out, step, model, opt, state, ctx, cfg.keep_checkpoints)
        last_ckpt[0] = step
        # Refresh the plot with checkpoints, but at most once a minute: drawing costs ~0.2 s,
        # too much to pay every few steps of a small model.
        if ctx.is_main and time.monotonic() - last_plot[0] >= PLOT_INTERVAL_S:
            last_plot[0] = time.monotonic()
            plot_losses(
                metrics.read(), out / "loss.png", title=f"{cfg.model} ({num_params:,} params)"
            )

    def log_eval(step: int, record: bool = True) -> float | None:
        v = evaluate(model, corpus.val, micro, cfg, ctx)
        if v is not None and ctx.is_main and record:
            metrics.append(
                {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "val_loss": v,
                    "val_ppl": math.exp(min(v, 50.0)),
                }
            )
        return v

    bar = None
    if ctx.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True)
    if ctx.is_main:
        print(
            f"mulfree train: {num_params:,} params ({mcfg.model_type}), {len(corpus.train):,} "
            f"train / {len(corpus.val):,} held-out sequences of {cfg.seq_len}, "
            f"{ctx.world_size} process(es) x {accum} micro-step(s) of {micro}, "
            f"steps {start_step}->{cfg.max_steps}",
            flush=True,
        )
        if energy.meter is not None or energy.intensity is not None:
            print(f"mulfree train: energy: {energy.describe()}", flush=True)

    def stop_here(step: int, stop: Stop) -> TrainResult:
        if last_ckpt[0] != step:
            checkpoint(step)
        if bar is not None:
            bar.close()
        if ctx.is_main:
            plot_losses(metrics.read(), out / "loss.png", title=f"{cfg.model} ({num_params:,} params)")
        return TrainResult(
            out, out / "model", step, step * tokens_per_step, log_state["last_loss"], None,
            num_params, metrics.path, out / "loss.png", stop.message, stop.next_start,
            dict(energy.state),
        )  # fmt: skip

    model.train()
    # Throughput counts training steps only, not evaluation or checkpoint writing.
    interval_time, interval_session_steps, train_time = 0.0, 0, 0.0
    energy.mark()  # the first reading starts here, not at model loading
    for step in range(start_step, cfg.max_steps):
        stop = energy.before_step(step, cfg.max_steps)
        if energy_decides:
            stop = ctx.broadcast_object(stop)
        while stop is not None and stop.reason == "window" and not cfg.exit_between_windows:
            if last_ckpt[0] != step:
                checkpoint(step)  # a pause is a checkpoint: the wait may be hours
            if ctx.is_main:
                print(f"mulfree train: {stop.message} ({stop.next_start.isoformat()})", flush=True)
            energy.wait_until(stop.next_start)
            stop = energy.before_step(step, cfg.max_steps)
            if energy_decides:
                stop = ctx.broadcast_object(stop)
        if stop is not None:
            return stop_here(step, stop)
        for note in energy.notes:
            if ctx.is_main:
                print(f"mulfree train: {note}", flush=True)
        energy.notes.clear()
        t0 = time.perf_counter()
        lr = lr_at(step, cfg, halve)
        for g in opt.param_groups:
            g["lr"] = lr
        base = step * cfg.batch_size
        loss_sum = torch.zeros((), dtype=torch.float64)
        for j in range(accum):
            # This process's rows of the global batch: micro-step j, slot `rank`.
            start = base + j * micro * ctx.world_size + ctx.rank * micro
            x = corpus.train[stream.indices(start, micro)].to(ctx.device, torch.long)  # [micro, T]
            with _grad_sync(model, cfg, ctx, sync=j == accum - 1):
                with _autocast(cfg, ctx):  # backward outside autocast, as torch recommends
                    loss = model(input_ids=x, labels=x).loss / accum
                loss.backward()
            loss_sum += loss.detach().double().cpu()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP returns a DTensor
            gnorm = gnorm.full_tensor()
        # Stop before a non-finite gradient reaches the weights, so the last checkpoint and the
        # weights in memory stay usable. Every process sees the same (all-reduced) norm.
        if not math.isfinite(float(gnorm)):
            raise MulfreeError(
                f"non-finite gradient norm ({float(gnorm)}) at step {step + 1}; weights left at "
                f"step {step} (try a lower --lr, or --resume from a checkpoint)"
            )
        opt.step()
        opt.zero_grad(set_to_none=True)

        done = step + 1
        step_loss = float(ctx.all_reduce_sum(loss_sum) / ctx.world_size)
        dt = time.perf_counter() - t0
        interval_time += dt
        interval_session_steps += 1
        train_time += dt
        energy_fields = energy.after_step()
        if not math.isfinite(step_loss):
            raise MulfreeError(f"the loss became {step_loss} at step {done}; lower --lr")
        log_state["interval_loss"] += step_loss
        log_state["interval_steps"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            last_loss = log_state["interval_loss"] / log_state["interval_steps"]
            log_state["last_loss"] = last_loss
            if ctx.is_main:
                metrics.append(
                    {
                        "step": done,
                        "tokens": done * tokens_per_step,
                        "loss": last_loss,
                        "lr": lr,
                        "grad_norm": float(gnorm),
                        "tokens_per_s": interval_session_steps * tokens_per_step / interval_time,
                        "train_time_s": train_time,  # this process's session, since (re)start
                        **energy_fields,  # the run's energy_j/energy_wh/gco2e so far, if metered
                    }
                )
            log_state.update(interval_loss=0.0, interval_steps=0)
            interval_time, interval_session_steps = 0.0, 0
        if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.max_steps:
            log_eval(done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.max_steps:
            checkpoint(done)
    if bar is not None:
        bar.close()

    # A run resumed after it finished already logged this evaluation; it is only re-measured.
    val_loss = log_eval(cfg.max_steps, record=start_step < cfg.max_steps)
    if last_ckpt[0] != cfg.max_steps:  # decided from state every process shares, not the disk
        checkpoint(cfg.max_steps)
    model_dir = out / "model"
    info = {
        "format": MODEL_INFO_FORMAT,
        "version": 1,
        "steps": cfg.max_steps,
        "tokens_seen": cfg.max_steps * tokens_per_step,
        "num_params": num_params,
        "final_train_loss": log_state["last_loss"],
        "final_val_loss": val_loss,
        "final_val_ppl": math.exp(val_loss) if val_loss is not None else None,
        "train_config": cfg.to_dict(),
        "data_fingerprint": corpus.fingerprint,
    }
    export_model(model, raw, tok, eos, model_dir, info, ctx)
    plot = None
    if ctx.is_main:
        plot = plot_losses(
            metrics.read(), out / "loss.png", title=f"{cfg.model} ({num_params:,} params)"
        )
    ctx.barrier()
    return TrainResult(
        out,
        model_dir,
        cfg.max_steps,
        cfg.max_steps * tokens_per_step,
        log_state["last_loss"],
        val_loss,
        num_params,
        metrics.path,
        plot,
        energy=dict(energy.state) if energy.meter is not None else None,
    )


def _card(raw, info: dict) -> str:
    """The exported folder's model card, with Hub front matter (mulfree.models.card)."""
    from mulfree.models.card import hub_card

    kind = raw.config.model_type
    tags = ("mulfree", kind, "matmul-free", "ternary") if kind == "hgrn_bit" else ("mulfree", kind)
    val = info.get("final_val_loss")
    summary = (f"{info['steps']} steps, {info['tokens_seen']:,} tokens, {info['num_params']:,} "
               f"parameters (`{kind}`)" + (f"; held-out loss {val:.4f}" if val is not None else "")
               + ". The full configuration is in training_info.json.")  # fmt: skip
    return hub_card(None, title=info["train_config"].get("model") or kind,
                    section="## Trained by mulfree", tags=tags, text=summary)  # fmt: skip


def export_model(model, raw, tok, eos: str, model_dir: Path, info: dict, ctx: DistContext) -> None:
    """Write an HF-style model folder atomically (temp folder, then rename)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Collective under FSDP: gathers full weights onto rank 0.
    sd = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # Drop second names of tied parameters (lm_head = embeddings): the gathered copies no longer
    # share memory, and the HF file should hold the tensor once, as save_pretrained would.
    unique = {n for n, _ in raw.named_parameters()}
    aliases = {n for n, _ in raw.named_parameters(remove_duplicate=False)} - unique
    sd = {k: v for k, v in sd.items() if k not in aliases}
    if ctx.is_main:
        tmp = model_dir.with_name(f".tmp-{model_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        raw.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
        save_hf_tokenizer(tok, eos, tmp)
        (tmp / "training_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card(raw, info), encoding="utf-8")
        if model_dir.exists():
            old = model_dir.with_name(f".old-{model_dir.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(model_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, model_dir)
    ctx.barrier()
