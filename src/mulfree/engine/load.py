"""Load the model a spec names: the one loader behind `mulfree generate`, `energy` and `eval`.

`load(spec)` resolves the spec (`mulfree.models.resolve`: packed files and folders, model
folders, train runs and their steps, `FAMILY:PRESET`, registered hub names) and builds it:
- packed (hgrn_bit or BitNet): `load_packed` (a damaged file is reported as such);
- a checkpoint: `pack=True` packs it on the fly (what the decoding engine runs: tq2 weights;
  a BitNet checkpoint with its tables as shipped), else the float model (mulfree's own model
  types through `models.loading.load_causal_lm`, any other causal LM through transformers);
- a preset: the shape with random weights (seed 0), no tokenizer.
Every failure is one MulfreeError line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulfree.errors import MulfreeError, first_line
from mulfree.models.resolver import ModelSource, resolve

DTYPES = ("float32", "bfloat16")


@dataclass
class Loaded:
    """A loaded model and where it came from."""

    model: Any  # a transformers PreTrainedModel in eval mode
    source: ModelSource
    tokenizer_dir: Path | None  # None: a preset (random weights, no tokenizer)

    @property
    def name(self) -> str:
        return self.source.name


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise MulfreeError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return getattr(torch, dtype)


def build_preset(family: str, preset: str):
    """A preset shape with random weights (seed 0), in eval mode."""
    import torch

    torch.manual_seed(0)
    if family == "mmfree":
        from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM

        return HGRNBitForCausalLM(HGRNBitConfig.from_name(preset)).eval()
    from mulfree.models.transformerpp import build_transformerpp

    return build_transformerpp(preset).eval()


def load(spec: str | Path, *, pack: bool = False, dtype: str = "float32",
         attn_implementation: str | None = None, fetch: bool = True) -> Loaded:  # fmt: skip
    """The model `spec` names (see the module docstring). dtype / attn_implementation apply to
    float checkpoints (a packed model is float32 around its packed weights)."""
    torch_dtype = _torch_dtype(dtype)
    source = resolve(spec, fetch=fetch)
    if source.kind == "preset":
        model = build_preset(source.family, source.preset)
        if pack:
            from mulfree.engine.modules import pack_model_

            model = pack_model_(model)
        return Loaded(model.to(torch_dtype) if not pack else model, source, None)
    if source.kind == "packed":
        from mulfree.engine.model import load_packed

        return Loaded(load_packed(source.path).eval(), source, source.tokenizer_dir)
    path = source.path
    if pack:
        from mulfree.engine.convert import is_bitnet_dir, pack_checkpoint
        from mulfree.engine.model import build_packed

        if is_bitnet_dir(path):  # packed on the fly, tables as shipped (bfloat16)
            from mulfree.engine.bitnet_model import from_checkpoint

            model = from_checkpoint(path, embedding_format="bfloat16", head_format="bfloat16")
            return Loaded(model.eval(), source, source.tokenizer_dir)
        config, tensors, tok_dir = pack_checkpoint(path, "tq2", "float32")
        return Loaded(build_packed(config, tensors, "tq2", "float32").eval(), source, tok_dir)
    return Loaded(_float_checkpoint(path, torch_dtype, attn_implementation), source,
                  source.tokenizer_dir)  # fmt: skip


def _float_checkpoint(path: Path, torch_dtype, attn_implementation: str | None):
    import json

    from mulfree.models.loading import KNOWN_MODEL_TYPES, load_causal_lm

    kw: dict = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise MulfreeError(f"cannot read {path / 'config.json'}: {e}") from None
    if model_type in KNOWN_MODEL_TYPES:
        return load_causal_lm(path, **kw).eval()
    from transformers import AutoModelForCausalLM

    import mulfree.models  # noqa: F401  (registers mulfree's model types with the Auto classes)

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kw)
    except (OSError, ValueError, RuntimeError) as e:
        raise MulfreeError(f"cannot load a causal LM from {path}: {first_line(e)}") from None
    return model.eval()
