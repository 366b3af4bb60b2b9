"""Named model presets for `--model`, gathered from the models package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def presets() -> dict[str, Callable[[], Any]]:
    """name -> zero-argument callable returning a fresh transformers config."""
    return {}
