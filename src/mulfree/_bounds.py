"""Upper bounds of a MatMul-free model's shape fields, checked before anything is built from a
config (a crafted config must fail in one line, not allocate for minutes). No torch or
transformers here: the config class (mulfree.models.mmfree) and the torch-free packed engine
(mulfree.engine.lite) both check with `check_shape`.

Generous fixed caps, well above any published language model, so no real checkpoint is refused.
Whether a model within them fits this machine is checked against its memory when it is loaded
(mulfree._memory).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mulfree.errors import MulfreeError

MAX_VOCAB = 1 << 22  # 4.2M tokens; the largest public vocabularies are ~256k (Gemma 262,144)
MAX_HIDDEN = 1 << 16  # 65,536 (incl. hidden_size * expand_ratio); widest public LMs use <= 18,432
MAX_INTERMEDIATE = 1 << 18  # 262,144 GLU width; the widest public ones are ~73,728 (PaLM 540B)
MAX_LAYERS = 1024  # the deepest public LMs have ~126 layers (Llama 3.1 405B)
MAX_CONTEXT = 1 << 24  # max_position_embeddings (the server's default context): 16.8M tokens
MAX_PARAMS = 1 << 40  # 2^40 float32 weights would need 4 TiB; no machine loads more


def mlp_intermediate_size(hidden_size: int, hidden_ratio, intermediate_size) -> int:
    """The GLU width the official HGRNBitMLP uses: given, or 256 * ceil(int(d * ratio * 2/3) / 256)."""
    if intermediate_size is not None:
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    size = int(hidden_size * ratio * 2 / 3)
    return 256 * ((size + 256 - 1) // 256)


def parameters_estimate(cfg: Mapping) -> int:
    """Weights of HGRNBitForCausalLM with config `cfg` (norms included), from the fields alone."""
    d, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    da = int(d * cfg.get("expand_ratio", 1))
    i = mlp_intermediate_size(d, cfg.get("hidden_ratio", 4), cfg.get("intermediate_size"))
    attn = 3 * d * da + da * d + 3 * d + 2 * da  # i/f/g/o projections + their norms, g_norm
    mlp = d * 2 * i + i * d + d + i
    per_layer = attn + mlp + 2 * d  # + attn_norm, mlp_norm
    head = 0 if cfg.get("tie_word_embeddings", False) else v * d
    return v * d + n * per_layer + n * da + d + head  # embeddings, layers, lower bounds, norm


def check_shape(cfg: Mapping) -> None:
    """Types and bounds of the shape fields of an hgrn_bit config (a dict or a config object's
    fields); one MulfreeError line naming the field and the bound."""

    def get(name, default=None):
        return cfg.get(name, default)

    def positive_int(name):
        v = get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise MulfreeError(f"hgrn_bit config: {name} must be a positive integer, got {v!r}")
        return v

    def number(name, default, allow_none=False):
        v = get(name, default)
        if allow_none and v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise MulfreeError(f"hgrn_bit config: {name} must be a finite number, got {v!r}")
        if not v > 0:
            raise MulfreeError(f"hgrn_bit config: {name} must be > 0, got {v!r}")
        return v

    def at_most(name, value, bound, why):
        if value > bound:
            raise MulfreeError(f"hgrn_bit config: {name} is {value}, above the bound {bound} ({why})")

    for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
        positive_int(name)
    at_most("vocab_size", get("vocab_size"), MAX_VOCAB, "16x the largest public vocabulary")
    at_most("hidden_size", get("hidden_size"), MAX_HIDDEN, "3.5x the widest public LM")
    at_most("num_hidden_layers", get("num_hidden_layers"), MAX_LAYERS, "8x the deepest public LM")
    if get("max_position_embeddings") is not None:
        at_most("max_position_embeddings", positive_int("max_position_embeddings"), MAX_CONTEXT,
                "16.8M tokens")  # fmt: skip
    expand = number("expand_ratio", 1)
    at_most("hidden_size*expand_ratio", int(get("hidden_size") * expand), MAX_HIDDEN,
            "3.5x the widest public LM")  # fmt: skip
    if get("intermediate_size") is not None:
        positive_int("intermediate_size")
    else:
        number("hidden_ratio", 4, allow_none=True)
    width = mlp_intermediate_size(get("hidden_size"), get("hidden_ratio", 4), get("intermediate_size"))
    at_most("the MLP width (intermediate_size)", width, MAX_INTERMEDIATE, "3.5x the widest public GLU")
    at_most("the parameter count", parameters_estimate(cfg), MAX_PARAMS, "4 TiB as float32")
