"""Load a causal LM checkpoint directory (config.json + safetensors) with one-line errors.

`AutoModelForCausalLM.from_pretrained(dir)` works too once `mulfree` is imported; this wrapper
checks the directory first so that a wrong path, a missing or unreadable config, an unknown
model_type, absent safetensors or mismatched tensors each give a single MulfreeError line.
"""

from __future__ import annotations

import json
from pathlib import Path

from mulfree.errors import MulfreeError, first_line

# model_type values this package knows how to build.
KNOWN_MODEL_TYPES = ("hgrn_bit", "llama")


def load_causal_lm(path: str | Path, **kwargs):
    """Load the model saved in directory `path`; kwargs go to `from_pretrained` (e.g. dtype=...).

    Reads safetensors only. Any missing, unexpected or wrongly shaped tensor is an error.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from mulfree.models.mmfree.modeling_mmfree import raise_on_bad_load

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
