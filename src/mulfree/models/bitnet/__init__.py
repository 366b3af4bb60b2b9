"""BitNet b1.58 in the official layout (transformers' `bitnet` model type, and 1.58-bit Llama).

`layout` reads official checkpoints (packed 4-per-byte ternary weights + weight_scale, or bf16
master weights); `synthetic` writes random ones in that layout (tests, benchmarks). The packed
engine's model and decoder are mulfree.engine.bitnet_model / mulfree.engine.bitnet_decode.
"""

from mulfree.models.bitnet.layout import (
    MODEL_TYPES,
    PROJECTIONS,
    BitNetCheckpoint,
    BitNetLayout,
    is_bitnet_config,
    pack_official,
    unpack_official,
)

__all__ = [
    "MODEL_TYPES",
    "PROJECTIONS",
    "BitNetCheckpoint",
    "BitNetLayout",
    "is_bitnet_config",
    "pack_official",
    "unpack_official",
]
