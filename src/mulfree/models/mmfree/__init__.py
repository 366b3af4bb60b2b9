"""The MatMul-free LM (`hgrn_bit`): config, model, and its transformers Auto-class registration."""

from mulfree.models.mmfree.configuration_mmfree import PRESETS, HGRNBitConfig
from mulfree.models.mmfree.modeling_mmfree import HGRNBitForCausalLM, HGRNBitModel

__all__ = ["PRESETS", "HGRNBitConfig", "HGRNBitForCausalLM", "HGRNBitModel"]
