"""The MatMul-free LM (`hgrn_bit`): config, model, and its recurrent-state cache."""

from mulfree.models.mmfree.configuration_mmfree import PRESETS, HGRNBitConfig
from mulfree.models.mmfree.modeling_mmfree import HGRNBitCache, HGRNBitForCausalLM, HGRNBitModel

__all__ = ["PRESETS", "HGRNBitCache", "HGRNBitConfig", "HGRNBitForCausalLM", "HGRNBitModel"]

# transformers' Auto modules may have loaded while the lines above imported (mulfree's post-import
# hook defers while this package is half-initialized): register now that the classes exist.
_READY = True
import sys as _sys  # noqa: E402

if any(m in _sys.modules for m in ("transformers.models.auto.configuration_auto",
                                   "transformers.models.auto.modeling_auto")):  # fmt: skip
    # hgrn_bit and the packed type (mulfree/__init__.py); this module, still initializing, is done
    _sys.modules["mulfree"]._register(_sys.modules[__name__])
