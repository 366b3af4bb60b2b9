"""Load a causal LM checkpoint directory (config.json + safetensors) with one-line errors.

`AutoModelForCausalLM.from_pretrained(dir)` works too once `mulfree` is imported; this wrapper
checks the directory first so that a wrong path, a missing or unreadable config, an unknown
model_type, absent safetensors or mismatched tensors each give a single MulfreeError line.
`check_checkpoint` (the tensor names, shapes and format metadata of a checkpoint's files against
a model class, from their headers alone) and `raise_on_bad_load` are shared by every loader:
the modeling file's from_pretrained, `mulfree convert`, this one.
"""

from __future__ import annotations

import json
from pathlib import Path

from mulfree import tensorfile
from mulfree._memory import check_fits_memory
from mulfree.errors import MulfreeError, first_line

# model_type values this package knows how to build.
KNOWN_MODEL_TYPES = ("hgrn_bit", "llama")


def load_causal_lm(path: str | Path, **kwargs):
    """Load the model saved in directory `path`; kwargs go to `from_pretrained` (e.g. dtype=...).

    Reads safetensors only. Any missing, unexpected or wrongly shaped tensor is an error.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise MulfreeError(f"model directory not found: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MulfreeError(f"no config.json in {path}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MulfreeError(f"cannot read {cfg_file}: {e}") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in KNOWN_MODEL_TYPES:
        raise MulfreeError(
            f"unknown model_type {model_type!r} in {cfg_file}; mulfree loads: {', '.join(KNOWN_MODEL_TYPES)}"
        )
    if not any(path.glob("*.safetensors")):
        raise MulfreeError(
            f"no .safetensors weights in {path} (only safetensors checkpoints are loaded)"
        )
    kwargs.setdefault("use_safetensors", True)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), output_loading_info=True, **kwargs
        )
    except MulfreeError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise MulfreeError(f"cannot load {path}: {first_line(e)}") from None
    raise_on_bad_load(info, path)
    for name, t in model.state_dict().items():  # NaN weights would decode nothing but EOS
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MulfreeError(f"checkpoint {path}: tensor {name} holds NaN or inf values")
    return model


def load_tokenizer(path: str | Path, hint: str = ""):
    """transformers' AutoTokenizer of a local folder (no download); one MulfreeError line naming
    the folder (and `hint`, e.g. which option gives another folder) when it cannot load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MulfreeError(f"cannot load a tokenizer from {path}: {first_line(e)}{hint}") from None


def as_ids(v) -> set[int]:
    if isinstance(v, bool):
        return set()
    if isinstance(v, int):
        return {v}
    if isinstance(v, list | tuple):
        return {int(x) for x in v if isinstance(x, int) and not isinstance(x, bool)}
    return set()


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """End-of-text ids of a loaded model and tokenizer: the config's, the generation config's
    and the tokenizer's eos_token_id (the torch-free engine reads the same three from the files:
    mulfree.engine.lite.eos_ids)."""
    gen = getattr(model, "generation_config", None)
    return frozenset(
        as_ids(getattr(model.config, "eos_token_id", None))
        | as_ids(getattr(gen, "eos_token_id", None) if gen is not None else None)
        | as_ids(getattr(tokenizer, "eos_token_id", None))
    )


def check_checkpoint(cls, config, path: Path, files=None) -> None:
    """Compare the tensor names and shapes in `path`'s safetensors files (or `files`) with what
    `cls` (a PreTrainedModel class of `config`, e.g. HGRNBitForCausalLM) expects; one
    MulfreeError line for the first problem, before any weight is loaded."""
    import torch

    found: dict[str, tuple[int, ...]] = {}
    for file in sorted(path.glob("*.safetensors")) if files is None else files:
        meta, specs = tensorfile.read_header(file)  # a truncated or foreign file: one line
        for key, (shape, dtype) in specs.items():
            found[key] = shape
            if dtype not in tensorfile.FLOAT_DTYPES:  # every weight of this model is a float
                raise MulfreeError(
                    f"{file}: tensor {key} is stored as {dtype}; a float type "
                    f"({', '.join(tensorfile.FLOAT_DTYPES)}) is expected"
                )
        tensorfile.CHECKPOINT.check(meta, file)
    # Before a model of `config` is even described (on the meta device, which takes time per
    # layer): its layer count against the tensors present, its float32 size against memory.
    layers = {int(k.split(".")[2]) for k in found
              if k.startswith("model.layers.") and k.split(".")[2].isdigit()}  # fmt: skip
    if len(layers) != config.num_hidden_layers:
        raise MulfreeError(
            f"checkpoint {path}: config num_hidden_layers={config.num_hidden_layers} but the "
            f"weights hold {len(layers)} layers"
        )
    check_fits_memory(4 * config.num_parameters_estimate(), f"the float32 model in {path}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    # Tied weights may be stored once.
    optional = set(cls._tied_weights_keys or {}) if config.tie_word_embeddings else set()
    mismatched = [
        (k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]
    ]
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    raise_on_bad_load(
        {"mismatched_keys": mismatched, "missing_keys": missing, "unexpected_keys": unexpected},
        path,
    )


def raise_on_bad_load(info: dict, where) -> None:
    def first(keys, n=3):
        keys = sorted(str(k) for k in keys)
        return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

    if info.get("mismatched_keys"):
        items = sorted(info["mismatched_keys"], key=lambda t: str(t[0]))
        shown = "; ".join(
            f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in items[:3]
        )
        raise MulfreeError(f"checkpoint {where}: wrong tensor shapes: {shown}")
    if info.get("missing_keys"):
        raise MulfreeError(f"checkpoint {where}: missing tensors: {first(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        raise MulfreeError(
            f"checkpoint {where}: unexpected tensors: {first(info['unexpected_keys'])}"
        )
