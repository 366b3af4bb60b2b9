"""The on-disk layout of a `mulfree train` run folder, as its readers see it (no torch).

`<run>/checkpoints/step_00000100/` folders, each complete one holding `trainer_state.json`
(format name and version, step, config...) next to `model.safetensors`; `<run>/model/` is the
exported model. `mulfree.train.checkpoint` writes this layout (and re-exports these names);
the model-spec resolver (`mulfree.models.resolve` (mulfree.models.resolver)) and `mulfree convert` read it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mulfree.errors import MulfreeError

FORMAT = "mulfree-train-checkpoint"
VERSION = 1
CHECKPOINT_NAME = re.compile(r"^step_(\d{8})$")


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_NAME.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MulfreeError(f"cannot read checkpoint {path}: {e}") from None
    if state.get("format") != FORMAT:
        raise MulfreeError(f"{path} is not a {FORMAT} (format {state.get('format')!r})")
    if state.get("version") != VERSION:
        raise MulfreeError(f"{path}: checkpoint version {state.get('version')} is not {VERSION}")
    return state
