"""Packed directories through transformers' Auto classes: model_type `hgrn_bit_packed`.

`import mulfree` registers it (when transformers' Auto modules load, as for `hgrn_bit`), so

    AutoConfig.from_pretrained(packed_dir)             # PackedHGRNBitConfig
    AutoModelForCausalLM.from_pretrained(packed_dir)   # PackedHGRNBitForCausalLM (load_packed)
    pipeline("text-generation", model=packed_dir)

work like for any Hugging Face directory. The Auto class hands loading to `load_packed`, which
reads the config and format from the weights file itself (config.json only routes there).

Both packed families (hgrn_bit: engine.model, BitNet: engine.bitnet_model) also hand a cached
single-token step of their forward (what HF `generate` runs after the prompt) to the engine's
compiled decode step; the family-independent parts of that hand-off live here
(`one_token_step`, `own_decoder`, `step_output`), each family adds what its cache needs.
"""

from __future__ import annotations

from typing import Any

from mulfree.models.hf_compat import cache_kwargs
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


# ---------------------------------------------------------------------------------------------
# The cached-step fast path of a packed model's forward (shared by both families)
# ---------------------------------------------------------------------------------------------
def one_token_step(model, input_ids, inputs_embeds, labels, use_cache, flags: dict[str, Any],
                   prompt: bool = False) -> bool:  # fmt: skip
    """The family-independent half of the fast path's predicate: an inference step of one new
    token id per row (prompt=True: any number) that wants the cache and no extra outputs
    (`flags`: output_hidden_states / output_attentions as the forward got them). The family
    then checks its cache and mask."""
    return not (
        model.training or input_ids is None or inputs_embeds is not None or input_ids.dim() != 2
        or input_ids.shape[1] < 1 or (input_ids.shape[1] != 1 and not prompt)
        or labels is not None or use_cache is False
        or flags.get("output_hidden_states") or flags.get("output_attentions")
    )  # fmt: skip


def own_decoder(model, attr: str, build):
    """`getattr(model, attr)`, built once with `build()` outside any energy count (a set-up, not
    part of a counted step). The fast path's decoder is the model's own, not the user's
    `fused_decoder()`: a user's decoder keeps its state across HF calls."""
    dec = getattr(model, attr)
    if dec is None:
        from mulfree import energy

        with energy.opaque():
            dec = build()
        setattr(model, attr, dec)
    return dec


def step_output(model, logits, cache, return_dict):
    """The forward's output for one decoded token per row: logits [B, V] (copied: decoders
    reuse their logits buffer) as [B, 1, V] and the cache, as a dict or a tuple."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    out = CausalLMOutputWithPast(logits=logits.clone()[:, None], **cache_kwargs(cache))
    rd = return_dict if return_dict is not None else model.config.return_dict
    return out if rd else out.to_tuple()
