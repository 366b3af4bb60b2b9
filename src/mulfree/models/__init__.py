"""Models: the MatMul-free LM (`hgrn_bit`) and a Transformer++ baseline.

`register_with_transformers()` (called by `import mulfree`) adds `hgrn_bit` to transformers'
AutoConfig / AutoModel / AutoModelForCausalLM registries, so `from_pretrained(dir)` finds it.
The Transformer++ builders and the checkpoint loader are imported on first use: the Llama model
code is not needed to register `hgrn_bit`, and `import mulfree` should stay as light as it can.
"""

import importlib
import sys

# Every public name is imported on first use, the hgrn_bit classes too: importing a light
# submodule (mulfree.models.loading, .hf_compat, .resolver) must not load transformers' model
# code, which the torch-free serving path (mulfree.serve.backends.LiteBackend) never needs.
_LAZY = {
    "PRESETS": "mulfree.models.mmfree",
    "HGRNBitConfig": "mulfree.models.mmfree",
    "HGRNBitForCausalLM": "mulfree.models.mmfree",
    "HGRNBitModel": "mulfree.models.mmfree",
    "ModelSource": "mulfree.models.resolver",
    "build_transformerpp": "mulfree.models.transformerpp",
    "transformerpp_config": "mulfree.models.transformerpp",
    "transformerpp_config_for": "mulfree.models.transformerpp",
    "load_causal_lm": "mulfree.models.loading",
}


def register_with_transformers() -> None:
    """Register `hgrn_bit` with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM, HGRNBitModel

    AutoConfig.register(HGRNBitConfig.model_type, HGRNBitConfig, exist_ok=True)
    AutoModel.register(HGRNBitConfig, HGRNBitModel, exist_ok=True)
    AutoModelForCausalLM.register(HGRNBitConfig, HGRNBitForCausalLM, exist_ok=True)


def __getattr__(name):
    if name == "resolve":  # the function, from mulfree.models.resolver
        return importlib.import_module("mulfree.models.resolver").resolve
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mulfree.models' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "ModelSource",
    "HGRNBitConfig",
    "HGRNBitForCausalLM",
    "HGRNBitModel",
    "build_transformerpp",
    "load_causal_lm",
    "register_with_transformers",
    "resolve",
    "transformerpp_config",
    "transformerpp_config_for",
]


# Registered now if transformers' Auto classes are loaded already (mulfree/__init__.py's hook
# registers when they load later, and defers to this line while this package is importing).
# The package's own `_register` runs: it also registers the packed model type (mulfree.engine,
# a layer above this one, which this package does not import itself).
_READY = True
if any(m in sys.modules for m in ("transformers.models.auto.configuration_auto",
                                  "transformers.models.auto.modeling_auto")):  # fmt: skip
    sys.modules["mulfree"]._register(sys.modules[__name__])
