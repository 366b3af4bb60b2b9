"""Packed ternary inference engine: the packed file format, `convert`, the fused decoder, `generate`.

    from mulfree.engine import convert, load_packed
    convert("path/to/hgrn_bit_checkpoint", "packed/")          # tq1 ternary + int8 embedding
    model = load_packed("packed/")                              # a transformers PreTrainedModel
    model.generate(input_ids, max_new_tokens=32)                # HF generate works
    dec = model.decoder(); logits = dec.prefill(ids); logits = dec.step([next_id])

`pack_model_(model)` swaps a model's BitLinears for packed layers in place (what serve and the
energy report need).
"""

from mulfree.engine.convert import ConvertConfig, ConvertResult, convert, save_packed
from mulfree.engine.format import FORMAT_NAME, FORMAT_VERSION, is_packed, read_packed
from mulfree.engine.model import PackedHGRNBitForCausalLM, load_packed
from mulfree.engine.modules import Int4Embedding, Int8Embedding, PackedBitLinear, pack_model_

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ConvertConfig",
    "ConvertResult",
    "Int4Embedding",
    "Int8Embedding",
    "PackedBitLinear",
    "PackedHGRNBitForCausalLM",
    "convert",
    "is_packed",
    "load_packed",
    "pack_model_",
    "read_packed",
    "save_packed",
]
