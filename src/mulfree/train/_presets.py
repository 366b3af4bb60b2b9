"""Named model presets for `--model`, gathered from the models package.

`mmfree-<shape>` (given as `mmfree:<shape>`, mulfree.models.resolve's spelling, or as before
with a dash) is the MatMul-free LM (`hgrn_bit`) at a shape of
`mulfree.models.mmfree.PRESETS` ("tiny", "mini", "small", "370M", ...); `transformerpp-<shape>`
is the Transformer++ (Llama) baseline matched to that shape. The vocabulary is always replaced by
the tokenizer's, so a preset's own vocab_size does not matter here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any


def presets() -> dict[str, Callable[[], Any]]:
    """name -> zero-argument callable returning a fresh transformers config."""
    from mulfree.models import PRESETS, HGRNBitConfig, transformerpp_config

    out: dict[str, Callable[[], Any]] = {}
    for shape in PRESETS:
        out[f"mmfree-{shape}"] = partial(HGRNBitConfig.from_name, shape)
        out[f"transformerpp-{shape}"] = partial(transformerpp_config, shape)
    return out
