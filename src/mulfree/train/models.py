"""Turn a model name into a freshly initialised Hugging Face causal LM.

The trainer is model-agnostic: anything `AutoModelForCausalLM.from_config` builds and whose
forward takes `input_ids=..., labels=...` and returns `.loss` trains. A model is named either by
a path (a folder with `config.json`, or a JSON config file with a `model_type`) or by a preset
name of the models that ship with mulfree (MatMul-free `hgrn_bit` presets and the matched
Transformer++ baselines).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mulfree.errors import MulfreeError

MATMUL_FREE_MODEL_TYPES = frozenset({"hgrn_bit"})


def _presets() -> dict[str, Any]:
    """name -> callable returning a fresh transformers config, from the models package."""
    from mulfree.train import _presets as p

    return p.presets()


def available_models() -> list[str]:
    """Preset names accepted by `--model` (besides paths to config files)."""
    return sorted(_presets())


def config_from_dict(d: dict[str, Any]):
    """A transformers config from its `to_dict()` form (as stored in checkpoints)."""
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", None)
    _register_mulfree_models()
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, TypeError) as e:
        raise MulfreeError(f"cannot rebuild model config of type {model_type!r}: {e}") from None


def _config_from_path(path: Path):
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.is_file():
        raise MulfreeError(f"no config.json in model folder {path}")
    try:
        d = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MulfreeError(f"cannot read model config {cfg_file}: {e}") from None
    if not isinstance(d, dict) or "model_type" not in d:
        raise MulfreeError(f"model config {cfg_file} has no model_type")
    from transformers import CONFIG_MAPPING

    _register_mulfree_models()
    if d["model_type"] not in CONFIG_MAPPING:
        raise MulfreeError(f"unknown model_type {d['model_type']!r} in {cfg_file}")
    return config_from_dict(d)


def _register_mulfree_models() -> None:
    # Importing the models package registers `hgrn_bit` with transformers' Auto classes.
    try:
        import mulfree.models  # noqa: F401
    except ImportError:
        pass


def model_config(name: str, overrides: dict[str, Any] | None = None):
    """The transformers config named by `name` (preset or path), with field overrides."""
    path = Path(name).expanduser()
    if path.exists():
        cfg = _config_from_path(path)
    else:
        presets = _presets()
        family, colon, shape = name.partition(":")
        if colon and f"{family}-{shape}" in presets:  # `mmfree:tiny`, mulfree.models.resolve's syntax
            name = f"{family}-{shape}"
        if name not in presets:
            known = ", ".join(sorted(presets)) or "none installed"
            raise MulfreeError(
                f"unknown model {name!r}: give a preset ({known}) or a path to a config.json"
            )
        base = presets[name]()
        for k in overrides or {}:
            if not hasattr(base, k):
                raise MulfreeError(f"model config {base.model_type!r} has no field {k!r}")
        # Built again with the overrides so derived fields follow them (a Transformer++ preset
        # re-matches its GLU width and heads to an overridden width or depth).
        return presets[name](**(overrides or {}))
    for k, v in (overrides or {}).items():
        if not hasattr(cfg, k):
            raise MulfreeError(f"model config {cfg.model_type!r} has no field {k!r}")
        setattr(cfg, k, v)
    return cfg


def fit_to_tokenizer(cfg, vocab_size: int, eos_id: int):
    """Give `cfg` the tokenizer's vocabulary size and its end-of-text id as bos/eos/pad."""
    cfg.vocab_size = vocab_size
    # Documents are separated by the end-of-text token, so it is also what generation stops at.
    cfg.bos_token_id = eos_id
    cfg.eos_token_id = eos_id
    # No pad id: packed sequences have no padding, and models build nn.Embedding with
    # padding_idx=pad_token_id, which zeroes that row and never updates it. With pad = eos, every
    # document boundary would enter the network as an all-zero vector, which the MatMul-free
    # model's eps-1e-8 RMSNorms turn into exploding gradients.
    cfg.pad_token_id = None
    return cfg


def is_matmul_free(cfg) -> bool:
    return getattr(cfg, "model_type", None) in MATMUL_FREE_MODEL_TYPES


def build_model(cfg, seed: int) -> torch.nn.Module:
    """A float32 model from `cfg`, its initial weights a function of `seed` only."""
    from transformers import AutoModelForCausalLM

    _register_mulfree_models()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:
        raise MulfreeError(
            f"cannot build a causal LM from config {cfg.model_type!r}: {e}"
        ) from None
    # Master weights are float32 whatever dtype a config file names; bf16 is autocast only.
    return model.float()
