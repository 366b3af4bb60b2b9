"""Models: the MatMul-free LM (`hgrn_bit`) and a Transformer++ baseline.

`register_with_transformers()` (called by `import mulfree`) adds `hgrn_bit` to transformers'
AutoConfig / AutoModel / AutoModelForCausalLM registries, so `from_pretrained(dir)` finds it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mulfree.models.loading import load_causal_lm
from mulfree.models.mmfree import PRESETS, HGRNBitConfig, HGRNBitForCausalLM, HGRNBitModel
from mulfree.models.transformerpp import (
    build_transformerpp,
    transformerpp_config,
    transformerpp_config_for,
)


def register_with_transformers() -> None:
    """Register `hgrn_bit` with transformers' Auto classes (idempotent)."""
    AutoConfig.register(HGRNBitConfig.model_type, HGRNBitConfig, exist_ok=True)
    AutoModel.register(HGRNBitConfig, HGRNBitModel, exist_ok=True)
    AutoModelForCausalLM.register(HGRNBitConfig, HGRNBitForCausalLM, exist_ok=True)


__all__ = [
    "PRESETS",
    "HGRNBitConfig",
    "HGRNBitForCausalLM",
    "HGRNBitModel",
    "build_transformerpp",
    "load_causal_lm",
    "register_with_transformers",
    "transformerpp_config",
    "transformerpp_config_for",
]
