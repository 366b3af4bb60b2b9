"""Training checkpoints: atomic, pickle-free, exact.

A checkpoint is a folder `<out>/checkpoints/step_00000100/` holding
- `model.safetensors`      full (unsharded) float32 weights, keyed by parameter name;
- `optimizer.safetensors`  every optimizer state tensor, keyed `state.<param name>.<slot>`;
- `optimizer.json`         the optimizer's param groups and any non-tensor state;
- `rng_rank<r>.safetensors` each process's torch RNG state(s);
- `trainer_state.json`     format name/version, step, data position, data fingerprint, config.
It is written into `.tmp-step_…` and renamed into place once complete (rename is atomic on
POSIX), so a run killed at any instant leaves only complete checkpoints; leftover temporaries
are removed on the next start. Tensors round-trip bit-exactly through safetensors, which is what
makes a resumed run identical to an unbroken one. Multi-machine runs need `<out>` on a shared
filesystem (every process reads the checkpoint itself).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mulfree._io import atomic_write_text, fsync_dir

# the layout's readers' side lives below the engine (which reads runs): re-exported here
from mulfree.models.runs import (  # noqa: F401
    FORMAT,
    VERSION,
    checkpoints_root,
    list_checkpoints,
    read_trainer_state,
)
from mulfree.tensorfile import read_tensors, write_tensors
from mulfree.train.distributed import DistContext

_TMP_PREFIX = ".tmp-"


def remove_temporaries(out_dir: str | Path) -> None:
    """Delete half-written checkpoints left by a killed run."""
    root = checkpoints_root(out_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied embeddings); copy the second alias.
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
        seen.add(ptr)
    return out


def _options(**kw) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, **kw)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")  # fsync'ed


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    ctx: DistContext,
    keep: int,
) -> Path:
    """Write the checkpoint for `step` atomically (a collective: every process calls it)."""
    root = checkpoints_root(out_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    ctx.barrier()
    # Gathering full state dicts is itself a collective under FSDP; with cpu_offload only rank 0
    # ends up holding the tensors.
    msd = get_model_state_dict(model, options=_options(cpu_offload=True))
    osd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    # each file is written atomically and fsync'ed (mulfree.tensorfile, mulfree._io)
    write_tensors(tmp / f"rng_rank{ctx.rank}.safetensors", _rng_state(ctx.device))
    if ctx.is_main:
        write_tensors(tmp / "model.safetensors", _unshared(msd), {"format": FORMAT})
        tensors, meta = {}, {"param_groups": [], "state_other": {}}
        for name, slots in osd["state"].items():
            for slot, v in slots.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"state.{name}.{slot}"] = v.detach().contiguous()
                else:
                    meta["state_other"].setdefault(name, {})[slot] = v
        for g in osd["param_groups"]:
            meta["param_groups"].append(
                {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
            )
        write_tensors(tmp / "optimizer.safetensors", tensors, {"format": FORMAT})
        _write_json(tmp / "optimizer.json", meta)
        state = {"format": FORMAT, "version": VERSION, "step": step, **trainer_state}
        _write_json(tmp / "trainer_state.json", state)
    ctx.barrier()  # every process's RNG file is on disk before the rename publishes the folder
    if ctx.is_main:
        fsync_dir(tmp)
        if final.exists():  # only when a resumed run re-reaches a saved step
            trash = root / f"{_TMP_PREFIX}old-{final.name}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
        for _, old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> dict[str, Any]:
    """Restore weights, optimizer and this process's RNG from `path`; return trainer_state."""
    state = read_trainer_state(path)
    msd = read_tensors(path / "model.safetensors")
    set_model_state_dict(model, msd, options=_options(strict=True))
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    opt_state: dict[str, dict[str, Any]] = {}
    for key, v in read_tensors(path / "optimizer.safetensors").items():
        name, slot = key[len("state.") :].rsplit(".", 1)
        opt_state.setdefault(name, {})[slot] = v
    for name, slots in meta["state_other"].items():
        opt_state.setdefault(name, {}).update(slots)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    set_optimizer_state_dict(
        model, optimizer, {"state": opt_state, "param_groups": groups}, options=_options()
    )
    rng_file = path / f"rng_rank{ctx.rank}.safetensors"
    if rng_file.is_file():
        rng = read_tensors(rng_file)
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], ctx.device)
    elif ctx.is_main:
        # A different world size than the checkpoint's: weights, optimizer and data position
        # still continue exactly; only randomness inside the model (dropout) is reseeded.
        print(f"mulfree: note: {path} has no RNG state for rank {ctx.rank}; keeping the seeded one")
    return state
