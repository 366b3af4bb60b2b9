"""Packed ternary inference engine: the packed file format, `convert`, the fused decoder, `generate`.

    from mulfree.engine import convert, load_packed
    convert("path/to/hgrn_bit_checkpoint", "packed/")          # tq1 ternary + int8 embedding
    model = load_packed("packed/")                              # a transformers PreTrainedModel
    model.generate(input_ids, max_new_tokens=32)                # HF generate works
    dec = model.fused_decoder(); logits = dec.prefill(ids); logits = dec.step([next_id])

A BitNet b1.58 checkpoint (official layout) converts the same way; `load_packed` then gives a
`PackedBitNetForCausalLM` and `model.fused_decoder()` a `BitNetDecoder` (KV cache, exact or L-Mul
attention).

`pack_model_(model)` swaps a model's BitLinears for packed layers in place (what serve and the
energy report need); `place_weights_(model)` moves their packed weights into one arena on
2 MiB pages (load_packed and the decoder do it); `lay_out_(model)` re-codes them as t81 where
the dispatcher measured that layout's AVX-512 VBMI kernel faster (load_packed does it, see
`load_packed(..., layout=)`).
"""

from mulfree._lazy import attach

_NAMES = {
    "ConvertConfig": "mulfree.engine.convert",
    "ConvertResult": "mulfree.engine.convert",
    "convert": "mulfree.engine.convert",
    "save_packed": "mulfree.engine.convert",
    "FORMAT_NAME": "mulfree.engine.format",
    "FORMAT_VERSION": "mulfree.engine.format",
    "is_packed": "mulfree.engine.format",
    "read_packed": "mulfree.engine.format",
    "PackedHGRNBitForCausalLM": "mulfree.engine.model",
    "PackedBitNetForCausalLM": "mulfree.engine.bitnet_model",
    "BitNetDecoder": "mulfree.engine.bitnet_decode",
    "load_packed": "mulfree.engine.model",
    "Int4Embedding": "mulfree.engine.modules",
    "Int8Embedding": "mulfree.engine.modules",
    "PackedBitLinear": "mulfree.engine.modules",
    "pack_model_": "mulfree.engine.modules",
    "place_weights_": "mulfree.engine.modules",
    "lay_out_": "mulfree.engine.modules",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "BitNetDecoder",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ConvertConfig",
    "ConvertResult",
    "Int4Embedding",
    "Int8Embedding",
    "PackedBitLinear",
    "PackedBitNetForCausalLM",
    "PackedHGRNBitForCausalLM",
    "convert",
    "is_packed",
    "load_packed",
    "pack_model_",
    "lay_out_",
    "place_weights_",
    "read_packed",
    "save_packed",
]
