"""Packed directories through transformers' Auto classes: model_type `hgrn_bit_packed`.

`import mulfree` registers it (when transformers' Auto modules load, as for `hgrn_bit`), so

    AutoConfig.from_pretrained(packed_dir)             # PackedHGRNBitConfig
    AutoModelForCausalLM.from_pretrained(packed_dir)   # PackedHGRNBitForCausalLM (load_packed)
    pipeline("text-generation", model=packed_dir)

work like for any Hugging Face directory. The Auto class hands loading to `load_packed`, which
reads the config and format from the weights file itself (config.json only routes there).
"""

from __future__ import annotations

from mulfree.models.mmfree import HGRNBitConfig
from mulfree.models.resolver import PACKED_MODEL_TYPE


class PackedHGRNBitConfig(HGRNBitConfig):
    """config.json of a packed directory: HGRNBitConfig + "mulfree_packed" (the packing)."""

    model_type = PACKED_MODEL_TYPE


class AutoPackedHGRNBitForCausalLM:
    """What AutoModelForCausalLM maps `hgrn_bit_packed` to: only a loader, whose
    `from_pretrained` is `load_packed` and returns a PackedHGRNBitForCausalLM (hub keyword
    arguments such as dtype or device_map do not apply to packed weights). Not a model class
    itself, so that registering needs no import of the model code (which imports this
    package's models while they may still be importing)."""

    config_class = PackedHGRNBitConfig

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):
        from mulfree.engine.model import load_packed

        return load_packed(path)


def register_packed_with_transformers() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(PACKED_MODEL_TYPE, PackedHGRNBitConfig, exist_ok=True)
    AutoModelForCausalLM.register(PackedHGRNBitConfig, AutoPackedHGRNBitForCausalLM, exist_ok=True)
