"""The MatMul-free LM (`hgrn_bit`): config, model, and its recurrent-state cache."""

from mulfree.models.mmfree.configuration_mmfree import PRESETS, HGRNBitConfig
from mulfree.models.mmfree.modeling_mmfree import HGRNBitCache, HGRNBitForCausalLM, HGRNBitModel

__all__ = ["PRESETS", "HGRNBitCache", "HGRNBitConfig", "HGRNBitForCausalLM", "HGRNBitModel"]
