"""The packed MatMul-free LM as a transformers model, and `load_packed`.

`PackedHGRNBitForCausalLM` is `HGRNBitForCausalLM` with every BitLinear replaced by a
`PackedBitLinear` (2-bit tq2 weights on the add-only kernels) and, for int8 / int4 files, an
`Int8Embedding` / `Int4Embedding`. Everything else (norms, MLGRU recurrence, recurrent-state cache, HF
`generate`) is the PyTorch model's own code, so `model.generate(...)` works as for any causal
LM. `model.fused_decoder()` gives the fused single-token step used by `mulfree generate`; the
model's forward hands cached single-token steps to a Decoder too, so HF `generate` decodes at
the engine's speed (benchmarks/bench_decode.py compares the two).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mulfree._swap import swap_modules_
from mulfree.engine import format as fmt
from mulfree.engine.decode import Decoder, fused_step_applies
from mulfree.engine.hf import one_token_step, own_decoder, step_output
from mulfree.engine.modules import (
    Int4Embedding,
    Int8Embedding,
    PackedBitLinear,
    attach_generation_config,
    lay_out_,
    place_weights_,
)
from mulfree.errors import MulfreeError
from mulfree.models.hf_compat import one_cache
from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM
from mulfree.ternary import packing
from mulfree.ternary.bitlinear import BITLINEAR_NORM_EPS, BitLinear, RMSNorm


class PackedHGRNBitForCausalLM(HGRNBitForCausalLM):
    """HGRNBitForCausalLM on packed ternary weights (inference only).

    Build with `load_packed(path)` / `from_pretrained(path)` (a packed file or its directory), or
    `from_model(model)` from a float HGRNBitForCausalLM. `save_pretrained(dir)` writes the packed
    format (mulfree.engine.format).
    """

    def __init__(self, config: HGRNBitConfig, embedding_format: str = "float32"):
        super().__init__(config)
        if embedding_format not in fmt.EMBEDDING_FORMATS:
            raise MulfreeError(f"embedding_format must be one of {fmt.EMBEDDING_FORMATS}")
        self.embedding_format = embedding_format

        def packed(_, m: torch.nn.Module) -> PackedBitLinear | None:
            if not isinstance(m, BitLinear):
                return None
            norm = RMSNorm(m.in_features, eps=BITLINEAR_NORM_EPS)
            return PackedBitLinear(m.in_features, m.out_features, bias=m.bias is not None, norm=norm)

        swap_modules_(self, packed)
        if embedding_format in ("int8", "int4"):
            cls = Int8Embedding if embedding_format == "int8" else Int4Embedding
            self.model.embeddings = cls(config.vocab_size, config.hidden_size)
        # the new norms get the model's elementwise-multiply mode
        self.set_elementwise_mul(config.elementwise_mul, config.elementwise_mul_bits)
        self.requires_grad_(False)
        self.eval()
        self._decoder = None
        self._hf_decoder = None  # the cached-step fast path of forward (HF generate)

    def tie_weights(self, *args, **kwargs):
        # the packed head is its own quantized tensor (tied models are packed untied)
        return None

    def fused_decoder(self, threads: int | None = None) -> Decoder:
        """The fused single-token decoder (`mulfree.engine.decode.Decoder`) over this model's
        weights (built once). Not HF's `get_decoder()` (the base model): hence the name."""
        if self._decoder is None or (threads is not None and self._decoder.threads != threads):
            self._decoder = Decoder(self, threads=threads)
        return self._decoder

    def decoder(self, threads: int | None = None) -> Decoder:
        """Deprecated name of `fused_decoder` (kept for one release)."""
        import warnings

        warnings.warn("PackedHGRNBitForCausalLM.decoder() is now fused_decoder()",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        return self.fused_decoder(threads)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                cache=None, labels=None, use_cache=None, output_hidden_states=None,
                return_dict=None, logits_to_keep=0, past_key_values=None, **kwargs):  # fmt: skip
        """HGRNBitForCausalLM.forward; a cached single-token step (what HF `generate` runs
        after the prompt) goes through a fused decoder instead (its own, not `fused_decoder()`'s;
        see benchmarks/bench_decode.py for the speed): the same
        operations as the modules' forward, on the kernels and compiled elementwise stages,
        so logits agree up to float rounding (see mulfree.engine.decode) and greedy tokens
        equal `mulfree generate`'s. Anything else (prompts, labels, hidden states, masked
        steps, L-Mul products, no compiled core) runs the modules'
        forward."""
        cache = one_cache(cache=cache, past_key_values=past_key_values,
                          cache_params=kwargs.pop("cache_params", None))  # fmt: skip
        rows = self._fused_prompt_rows(input_ids, attention_mask, inputs_embeds, cache, labels,
                                       use_cache, output_hidden_states, logits_to_keep, kwargs)  # fmt: skip
        if rows is not None:
            return self._fused_prompt(rows, input_ids.shape[1], cache, return_dict)
        if self._fused_step_applies(input_ids, attention_mask, inputs_embeds, cache,
                                    labels, use_cache, output_hidden_states, kwargs):  # fmt: skip
            dec = own_decoder(self, "_hf_decoder", lambda: Decoder(self))
            n = self.config.num_hidden_layers
            states = [layer.recurrent_states[0] for layer in cache.layers[:n]]  # L x [B, E]
            logits = dec.step_from(states, input_ids[:, 0])  # [B, vocab]
            for layer, rows in enumerate(dec.states):
                cache.update_recurrent_state(rows, layer)  # copies into the cache's tensor
            cache.seen_tokens += 1
            return step_output(self, logits, cache, return_dict)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               inputs_embeds=inputs_embeds, cache=cache,
                               labels=labels, use_cache=use_cache,
                               output_hidden_states=output_hidden_states, return_dict=return_dict,
                               logits_to_keep=logits_to_keep, **kwargs)  # fmt: skip

    def _fused_prompt_rows(self, input_ids, attention_mask, inputs_embeds, cache, labels,
                           use_cache, output_hidden_states, logits_to_keep,
                           kwargs) -> list[list[int]] | None:  # fmt: skip
        """The prompt HF `generate` starts with (into a fresh cache, last position's logits only)
        as each row's real token ids, when the fused prefill can run it; else None. Left padding
        (a row's zeros before its first real token) keeps the modules' state at exactly zero
        (their input is multiplied by the mask), so such a row is its real tokens from a zero
        state; a mask with a zero after a real token (the state decays there) is the modules'."""
        from mulfree import energy
        from mulfree.models.mmfree import HGRNBitCache

        flags = {**kwargs, "output_hidden_states": output_hidden_states}
        if (
            not fused_step_applies(self)
            or not one_token_step(self, input_ids, inputs_embeds, labels, use_cache, flags,
                                  prompt=True)  # fmt: skip
            or energy.counting()  # a counted prompt is priced on the modules' ops
            or not isinstance(cache, HGRNBitCache)
            or cache.get_seq_length() != 0
            or any(getattr(layer, "is_recurrent_states_initialized", {0: True})[0]
                   for layer in cache.layers)  # fmt: skip
        ):
            return None
        B, T = input_ids.shape
        # generate asks for the last position's logits; every position's (a scoring forward)
        # is the modules' (the fused prefill computes the head on the last token only)
        if not (logits_to_keep == 1 or (T == 1 and logits_to_keep == 0)):
            return None
        if attention_mask is None:
            return input_ids.tolist()
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, T):
            return None
        keep = attention_mask.ne(0)
        # left padding only: per row zeros, then ones, the last token real
        if not bool(keep[:, -1].all()) or not bool((keep[:, 1:] >= keep[:, :-1]).all()):
            return None
        return [r[k].tolist() for r, k in zip(input_ids, keep, strict=True)]

    def _fused_prompt(self, rows: list[list[int]], T: int, cache, return_dict):
        """The prompt rows through the fused decoder's prefill (the bits of stepping each row's
        tokens; close to the modules' chunked scan up to float rounding, as a step is); its
        states into `cache`, as the modules' forward leaves them."""
        dec = own_decoder(self, "_hf_decoder", lambda: Decoder(self))
        with torch.inference_mode():
            logits = dec.prefill(rows)
        for layer, states in enumerate(dec.states):
            # outside inference mode: the cache's tensors stay ordinary ones (transformers may
            # update them in place, e.g. a beam search's reorder)
            cache.update_recurrent_state(states.clone(), layer)
        cache.seen_tokens += T  # as the modules count a prompt: padding included
        return step_output(self, logits, cache, return_dict)

    def _fused_step_applies(self, input_ids, attention_mask, inputs_embeds, cache, labels,
                            use_cache, output_hidden_states, kwargs) -> bool:  # fmt: skip
        from mulfree.models.mmfree import HGRNBitCache

        flags = {**kwargs, "output_hidden_states": output_hidden_states}
        if (
            not fused_step_applies(self)
            or not one_token_step(self, input_ids, inputs_embeds, labels, use_cache, flags)
            or not isinstance(cache, HGRNBitCache)
            or (attention_mask is not None and not bool(attention_mask[:, -1].all()))
        ):  # fmt: skip
            return False
        n = self.config.num_hidden_layers
        if len(cache.layers) < n:
            return False
        for layer in cache.layers[:n]:
            if not getattr(layer, "is_recurrent_states_initialized", [False])[0]:
                return False
            st = layer.recurrent_states[0]
            if st.dtype != torch.float32 or st.dim() != 2 or st.shape[0] != input_ids.shape[0]:
                return False
        return True

    @classmethod
    def from_model(cls, model: HGRNBitForCausalLM, embedding_format: str = "float32"):
        """Pack a float HGRNBitForCausalLM (BitLinear's quantization rules) into a new model."""
        from mulfree.engine.convert import packed_tensors_from_model

        tensors = packed_tensors_from_model(model, "tq2", embedding_format)
        return build_packed(model.config, tensors, "tq2", embedding_format)

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):
        """Load a packed file (or a directory holding model.safetensors) — `load_packed`."""
        return load_packed(path, **kwargs)

    def save_pretrained(self, save_directory, *args, ternary_format: str = "tq1",
                        embedding_format: str | None = None, **kwargs):  # fmt: skip
        """Write the packed format into `save_directory`/model.safetensors."""
        from mulfree.engine.convert import save_packed

        return save_packed(self, save_directory, ternary_format=ternary_format,
                           embedding_format=embedding_format or self.embedding_format)  # fmt: skip


def build_packed(config, tensors: dict, ternary_format: str, embedding_format: str):
    """A PackedHGRNBitForCausalLM holding `tensors` (checked names/shapes; tq1 -> tq2)."""
    with torch.device("meta"):
        model = PackedHGRNBitForCausalLM(config, embedding_format)
    model.to_empty(device="cpu")
    state = {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, PackedBitLinear)}
    for key, t in tensors.items():
        mod, _, leaf = key.rpartition(".")
        if leaf == "weight_packed" and ternary_format != "tq2":
            m = linears[mod]
            t = packing.tq1_to_tq2(t, m.out_features, m.in_features)
        elif key == "model.embeddings.weight":
            t = t.float()
        state[key] = t
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MulfreeError(
            f"packed tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.requires_grad_(False)  # norms and lower bounds are Parameters: inference only
    return model


def load_packed(path: str | Path, *, verify: bool = True, layout: str = "auto",
                isa: str | None = None, **_ignored) -> PackedHGRNBitForCausalLM:  # fmt: skip
    """Load a packed model file (or a directory with model.safetensors).

    `layout`: the in-memory form of the ternary weights ("auto": t81 where the
    dispatcher measured its kernel faster for calls at `isa`, tq2 elsewhere; "tq2"; "t81"),
    `mulfree.engine.modules.lay_out_`; the file and state dicts stay tq1/tq2.

    A packed BitNet file (model_family "bitnet") gives a PackedBitNetForCausalLM
    (mulfree.engine.bitnet_model). Any problem (missing, truncated or corrupt file, another format or version, tensors whose
    shapes do not match the config) raises MulfreeError with one line. The packed ternary
    weights end up in one arena on 2 MiB pages (`mulfree.engine.place_weights_`).
    """
    if fmt.model_family(fmt.read_metadata(fmt.weights_file(path)), path) == "bitnet":
        from mulfree.engine.bitnet_model import load_packed_bitnet

        return load_packed_bitnet(path, verify=verify, layout=layout, isa=isa)  # a PackedBitNetForCausalLM
    config, tensors, meta = fmt.read_packed(path, verify=verify)
    model = build_packed(config, tensors, meta["ternary_format"], meta["embedding_format"])
    del tensors
    lay_out_(model, layout, isa)
    place_weights_(model)
    attach_generation_config(model, fmt.weights_file(path).parent)
    return model
