"""Backends: what the scheduler needs from a model, and two implementations.

A backend tokenizes, starts a request (prefill its prompt -> its own state + first logits), runs
one decode step for several requests at once (their states and last tokens -> next-token logits,
states advanced in place) and frees a request's state.

- `MatMulFreeBackend` (model_type `hgrn_bit`): one decode step for all active requests, whatever
  their number. With packed weights (and the compiled core: `fused_step_applies`) a request's
  state is a slot of the packed engine's decoder (`mulfree.engine.decode.Decoder`, which owns
  the state arena): `start` prefills into a fresh slot, `step` runs the fused step on the
  requests' slots in place (no state is stacked, copied or split), `free` returns the slot; its
  logits follow the model's forward up to float rounding (see there). Else a request's state is
  one float32 row [1, hidden*expand_ratio] per layer and a step stacks the rows of all active
  requests into one `HGRNBitCache` for the model's forward on [B, 1] tokens.
- `GenericBackend` (any Hugging Face causal LM): a request's state is the model's own cache
  (`DynamicCache` for attention models); a step runs the requests one after another (batch 1),
  since KV caches of different lengths do not stack without padding.
"""

from __future__ import annotations

import abc
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mulfree.errors import MulfreeError, first_line
from mulfree.models.hf_compat import cache_kwargs, output_cache
from mulfree.models.loading import eos_token_ids, load_tokenizer

# Chat template used when the tokenizer carries none: role-tagged lines, then the assistant tag.
SIMPLE_CHAT_TEMPLATE = "{role}: {content}\n"
SIMPLE_CHAT_SUFFIX = "assistant:"


@dataclass
class RequestState:
    """What a backend keeps for one request between steps."""

    data: Any
    length: int  # tokens consumed so far (prompt + generated)


@dataclass
class Backend(abc.ABC):
    """Common part of both backends: the model, its tokenizer and the text helpers.

    Subclasses implement `start`, `step` and `free`. All model calls happen on the scheduler's
    one worker thread; `lock` guards them against the energy estimate run at start-up.
    """

    model: Any
    tokenizer: Any
    model_id: str
    max_context: int
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    weights: str = "float"  # "packed": BitLinears run on packed ternary weights (mulfree.engine)
    lock: threading.Lock = field(default_factory=threading.Lock)

    kind = "base"
    context_bound = False  # True: a request's memory holds max_context tokens, never more

    # --- text ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text for chat messages: the tokenizer's chat template, or a simple one."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        lines = "".join(
            SIMPLE_CHAT_TEMPLATE.format(role=m["role"], content=m["content"]) for m in messages
        )
        return lines + SIMPLE_CHAT_SUFFIX

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    # --- model -----------------------------------------------------------------------------
    @abc.abstractmethod
    def start(
        self, ids: list[int], *, all_logits: bool = False
    ) -> tuple[RequestState, torch.Tensor]:
        """Prefill a prompt: (its state, next-token logits [vocab]); with all_logits, the logits
        after every prompt position [T, vocab] (the last row is the next token's), for the
        prompt's log-probabilities (the API's `echo` + `logprobs`)."""

    @abc.abstractmethod
    def step(self, states: list[RequestState], tokens: list[int]) -> torch.Tensor:
        """Feed one token per request; advance each state in place; logits [len(states), vocab],
        valid until this backend's next `start` or `step` (a decoder's buffer, not copied:
        the scheduler samples from them before its next model call)."""

    def free(self, state: RequestState) -> None:
        state.data = None

    def reserve(self, max_batch: int) -> None:
        """Prepare for `max_batch` requests stepping together (nothing to do by default)."""
        return None


def _prefill_new_slot(dec, prefill, ids):
    """(slot, logits): a new decoder slot with the prompt run into it; the slot is given back
    if the prompt fails, so a bad request leaks no state."""
    slot = dec.alloc()
    try:
        return slot, prefill(slot, ids)
    except BaseException:
        dec.free(slot)
        raise


class MatMulFreeBackend(Backend):
    kind = "mmfree"

    _decoder: Any = None  # the engine's fused decoder (its slots hold the requests' states)

    def reserve(self, max_batch: int) -> None:
        """Size the decoder's state arena for `max_batch` requests at once (the scheduler's)."""
        dec = self._fused()
        if dec is not None:
            dec.reserve(max_batch)

    def _fused(self):
        """The packed engine's decoder when the fused step applies to this model
        (`mulfree.engine.decode.fused_step_applies`), else None (steps run the model's forward)."""
        from mulfree.engine.decode import Decoder, fused_step_applies

        if self._decoder is None:
            if self.weights != "packed" or not fused_step_applies(self.model):
                return None
            self._decoder = Decoder(self.model)
        return self._decoder

    def _cache(self, per_layer: list[torch.Tensor] | None):
        from mulfree.models.mmfree.modeling_mmfree import HGRNBitCache

        cache = HGRNBitCache(self.model.config)
        if per_layer is not None:
            for i, s in enumerate(per_layer):
                cache.update_recurrent_state(s, i)
        return cache

    @staticmethod
    def _states(cache, n_layers: int) -> list[torch.Tensor]:
        return [cache.layers[i].recurrent_states[0] for i in range(n_layers)]

    @torch.inference_mode()
    def start(self, ids, *, all_logits=False):
        dec = self._fused()
        if dec is not None:
            slot, logits = _prefill_new_slot(dec, dec.prefill_slot, ids)
            if all_logits:  # every position's logits: the model's forward over the prompt
                try:
                    x = torch.tensor([ids], dtype=torch.long)  # [1, T]
                    logits = self.model(input_ids=x, logits_to_keep=0).logits[0]  # [T, V]
                except BaseException:
                    dec.free(slot)
                    raise
            return RequestState(slot, len(ids)), logits
        cache = self._cache(None)
        x = torch.tensor([ids], dtype=torch.long)  # [1, T]
        keep = 0 if all_logits else 1  # 0: every position
        out = self.model(input_ids=x, **cache_kwargs(cache), use_cache=True, logits_to_keep=keep)
        n = self.model.config.num_hidden_layers
        states = [s.clone() for s in self._states(output_cache(out), n)]  # L x [1, E]
        return RequestState(states, len(ids)), out.logits[0] if all_logits else out.logits[0, -1]

    @torch.inference_mode()
    def step(self, states, tokens):
        dec = self._fused()
        if dec is not None:
            logits = dec.step(tokens, [st.data for st in states])  # [B, vocab], a buffer
            for st in states:
                st.length += 1
            return logits
        n = self.model.config.num_hidden_layers
        # L x [B, E]: row b of layer l is request b's state.
        stacked = [torch.cat([st.data[layer] for st in states], 0) for layer in range(n)]
        cache = self._cache(stacked)
        x = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)  # [B, 1]
        out = self.model(input_ids=x, **cache_kwargs(cache), use_cache=True)
        new = self._states(output_cache(out), n)  # L x [B, E]
        for b, st in enumerate(states):
            st.data = [s[b : b + 1].clone() for s in new]  # L x [1, E]
            st.length += 1
        return out.logits[:, -1]  # [B, vocab]

    def free(self, state: RequestState) -> None:
        if isinstance(state.data, int) and self._decoder is not None:
            self._decoder.free(state.data)
        state.data = None


@dataclass
class SlotBackend(Backend):
    """A backend whose requests are slots of a slot decoder (mulfree.engine.core.SlotDecoder,
    from `_core()`): start prefills a fresh slot, step runs the requests' slots in place, free
    returns the slot. Subclasses give `_core()` and keep it in `_slots` once built."""

    _slots: Any = field(default=None, init=False, repr=False)

    @abc.abstractmethod
    def _core(self):
        """The SlotDecoder (built on first use, then kept in `_slots`)."""

    def reserve(self, max_batch: int) -> None:
        self._core().reserve(max_batch)

    def start(self, ids, *, all_logits=False):
        dec = self._core()
        if not all_logits:
            slot, logits = _prefill_new_slot(dec, dec.prefill, ids)
            return RequestState(slot, len(ids)), torch.from_numpy(logits.copy())
        # every position's logits (echo + logprobs): the first token prefilled, then one decode
        # step per prompt token, each giving the next position's row
        slot, first = _prefill_new_slot(dec, dec.prefill, ids[:1])
        rows = [torch.from_numpy(first.copy())]
        try:
            for tok in ids[1:]:
                rows.append(torch.from_numpy(dec.step([slot], [tok])[0].copy()))
        except BaseException:
            dec.free(slot)
            raise
        return RequestState(slot, len(ids)), torch.stack(rows)  # [T, V]

    def step(self, states, tokens):
        logits = self._core().step([st.data for st in states], tokens)  # [B, vocab], a buffer
        for st in states:
            st.length += 1
        return torch.from_numpy(logits)

    def free(self, state: RequestState) -> None:
        if isinstance(state.data, int) and self._slots is not None:
            self._slots.free(state.data)
        state.data = None


@dataclass
class LiteBackend(SlotBackend):
    """A packed hgrn_bit model on the torch-free engine (mulfree.engine.lite): the same slot
    decoder (mulfree.engine.core) as MatMulFreeBackend's fused path, over memory-mapped NumPy
    weights, so serving a packed model imports neither transformers' model code nor builds a
    PyTorch model. Logits are the same bits as MatMulFreeBackend's (tests/serve)."""

    kind = "mmfree"
    file: Path | None = None  # the packed weights file (for the cached energy estimate)

    @property
    def vocab_size(self) -> int:
        return int(self.model.vocab)

    def _core(self):
        if self._slots is None:
            from mulfree.engine.lite import LiteDecoder

            self._slots = LiteDecoder(self.model).core  # a SlotDecoder; drop its first slot
            self._slots.free_all()
        return self._slots

    def step_energy_pj(self, table_name: str) -> tuple[float, float]:
        """(pJ of a decode step of 1 request, of 2) from the packed file's cached estimate
        (mulfree.engine.lite.step_energy): rows of a step do the same work, and its weights are
        read once whatever the batch, so 2 requests cost 2 x total - the memory part (which
        also holds a row's activation traffic: a slight underestimate for the second row)."""
        from mulfree.engine.lite import step_energy

        e = step_energy(self.file, table_name)
        return e.total_pj, 2 * e.total_pj - e.memory_pj


@dataclass
class BitNetBackend(SlotBackend):
    """A packed BitNet b1.58 model (`mulfree convert` of a bitnet checkpoint) on the compiled
    transformer step (mulfree.engine.bitnet_plan): a request is a slot of the step's KV arena,
    sized once for the scheduler's max batch x `max_context` tokens (refused in one line when
    that does not fit in memory), so requests join and leave without moving other requests'
    caches. Attention products are exact or L-Mul (`attention`, `mantissa_bits`); the cache
    stores `kv_dtype`. Logits are the BitNetDecoder's (tests/engine/test_bitnet_plan.py)."""

    kind = "bitnet"
    context_bound = True
    attention: str = "exact"
    mantissa_bits: int | None = 3
    kv_dtype: str = "bfloat16"
    threads: int | None = None
    _decoder: Any = field(default=None, init=False, repr=False)  # the BitNetDecoder

    def decoder(self):
        """The BitNetDecoder (built on first use; its `fused` says whether the compiled step runs)."""
        if self._decoder is None:
            from mulfree.engine.bitnet_decode import BitNetDecoder

            self._decoder = BitNetDecoder(
                self.model, threads=self.threads, attention=self.attention,
                mantissa_bits=self.mantissa_bits, kv_dtype=self.kv_dtype,
                max_context=self.max_context,
            )  # fmt: skip
        return self._decoder

    def _core(self):
        if self._slots is None:
            from mulfree.engine.core import SlotDecoder

            dec = self.decoder()
            if not dec.fused:
                raise MulfreeError("the BitNet backend needs the compiled core (mulfree._C)")
            self._slots = SlotDecoder(dec.plan)
        return self._slots

    def slot_bytes(self) -> int:
        """Bytes of one request's KV cache (every layer, `max_context` positions)."""
        plan = self.decoder().plan
        return plan.nbytes // max(1, plan.capacity)

    def reserve(self, max_batch: int) -> None:
        from mulfree._memory import check_fits_memory

        check_fits_memory(
            max_batch * self.slot_bytes(),
            f"a {self.kv_dtype} KV cache for {max_batch} requests x {self.max_context} tokens",
            "lower --max-batch or --max-context, or use --kv-cache int8",
        )
        self._core().reserve(max_batch)

    def step_energy_pj(self, table_name: str) -> tuple[float, float]:
        """(pJ of a decode step of 1 request, of 2): BitNetDecoder.step_energy counts one step
        as it runs (on its own sequence, not the requests' slots); a second request does the
        same work while the weights are read once, so it adds the total less the memory part."""
        with self.lock:
            dec = self.decoder()
            prompt = self.encode("energy") or [0]
            # the decoder's own one sequence (its torch path; the slots' caches are not touched)
            dec.lengths = [min(len(prompt), self.max_context - 1)]
            e = dec.step_energy([prompt[-1]], table_name)
        return e.total_pj, 2 * e.total_pj - e.memory_pj


class GenericBackend(Backend):
    kind = "generic"

    @torch.inference_mode()
    def start(self, ids, *, all_logits=False):
        x = torch.tensor([ids], dtype=torch.long)  # [1, T]
        out = self.model(input_ids=x, use_cache=True)
        logits = out.logits[0] if all_logits else out.logits[0, -1]  # [T, V] or [V]
        return RequestState(output_cache(out), len(ids)), logits

    @torch.inference_mode()
    def step(self, states, tokens):
        rows = []
        for st, tok in zip(states, tokens, strict=True):
            x = torch.tensor([[tok]], dtype=torch.long)  # [1, 1]
            out = self.model(input_ids=x, **cache_kwargs(st.data), use_cache=True)
            st.data = output_cache(out)
            st.length += 1
            rows.append(out.logits[0, -1])
        return torch.stack(rows)  # [B, vocab]


WEIGHTS = ("auto", "packed", "float")


def _is_packed_model(model) -> bool:
    from mulfree.engine import PackedHGRNBitForCausalLM

    return isinstance(model, PackedHGRNBitForCausalLM) or _is_packed_bitnet(model)


def _is_packed_bitnet(model) -> bool:
    from mulfree.engine.bitnet_model import PackedBitNetForCausalLM

    return isinstance(model, PackedBitNetForCausalLM)


def make_backend(
    model,
    tokenizer,
    model_id: str,
    *,
    kind: str = "auto",
    max_context: int | None = None,
    weights: str = "float",
    attention: str = "exact",
    mantissa_bits: int | None = 3,
    kv_dtype: str = "bfloat16",
    threads: int | None = None,
) -> Backend:
    """Wrap a loaded model + tokenizer. kind: "auto" (MatMul-free when model_type is hgrn_bit,
    BitNet for a packed BitNet model when the compiled core is there), "mmfree", "bitnet" or
    "generic". weights: "float" (as loaded), "packed" (`mulfree.engine.pack_model_` first:
    BitLinears on 2-bit weights and the add-only kernels; a model loaded packed stays so) or
    "auto" (packed for hgrn_bit when the compiled kernels are available). attention,
    mantissa_bits, kv_dtype: the BitNet backend's (engine.bitnet_decode.BitNetDecoder)."""
    from mulfree import kernels

    model_type = getattr(model.config, "model_type", None)
    if weights not in WEIGHTS:
        raise MulfreeError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if _is_packed_model(model):
        if weights == "float":
            raise MulfreeError("this model is stored packed; it has no float weights to serve")
        weights = "packed"
    if weights == "auto":
        weights = "packed" if model_type == "hgrn_bit" and kernels.available() else "float"
    if weights == "packed" and not _is_packed_model(model):
        if model_type != "hgrn_bit":
            raise MulfreeError(
                f"packed ternary weights need an hgrn_bit model or a packed BitNet, not "
                f"{model_type!r} (pack a BitNet checkpoint with `mulfree convert`)"
            )
        from mulfree.engine import pack_model_

        pack_model_(model)
    bitnet = _is_packed_bitnet(model)
    if kind == "auto":
        kind = "mmfree" if model_type == "hgrn_bit" else "generic"
        if bitnet and kernels.available():
            kind = "bitnet"
    if kind == "mmfree" and model_type != "hgrn_bit":
        raise MulfreeError(f"the mmfree backend serves hgrn_bit models, not {model_type!r}")
    if kind == "bitnet" and not bitnet:
        raise MulfreeError(f"the bitnet backend serves packed BitNet models, not {model_type!r}")
    if kind not in ("mmfree", "bitnet", "generic"):
        raise MulfreeError(f"unknown backend {kind!r}; choose auto, mmfree, bitnet or generic")
    if attention != "exact" and kind != "bitnet":
        raise MulfreeError("L-Mul attention on this model: apply it when loading (lmul_bits)")
    if max_context is None:
        max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    model.eval()
    common = dict(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        max_context=max_context,
        eos_token_ids=eos_token_ids(model, tokenizer),
        weights=weights,
    )
    if kind == "bitnet":
        backend = BitNetBackend(**common, attention=attention, mantissa_bits=mantissa_bits,
                                kv_dtype=kv_dtype, threads=threads)  # fmt: skip
        backend.decoder()  # bad options (context, mantissa bits) fail here, before serving
        return backend
    cls = MatMulFreeBackend if kind == "mmfree" else GenericBackend
    return cls(**common)


def load_backend(
    model_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    model_id: str | None = None,
    kind: str = "auto",
    lmul_bits: int | None = None,
    max_context: int | None = None,
    threads: int | None = None,
    weights: str = "auto",
    kv_dtype: str = "bfloat16",
) -> Backend:
    """Load a model directory and its tokenizer into a backend: a checkpoint (config.json +
    safetensors) or a packed model written by `mulfree convert` (mulfree.engine format).

    lmul_bits: L-Mul attention with that many mantissa bits: `mulfree.attention.apply_lmul_`
    on a Hugging Face attention model, the compiled L-Mul attention of a packed BitNet; a
    MatMul-free model has no attention to replace. kv_dtype: a packed BitNet's KV cache.
    weights: see `make_backend` (default: packed ternary weights for MatMul-free models).
    """

    if threads:
        torch.set_num_threads(int(threads))
    path = Path(model_dir)
    if not path.is_dir():
        raise MulfreeError(f"model directory not found: {path}")
    from mulfree.models.resolver import resolve

    source = resolve(path)
    if source.kind == "packed":  # a damaged packed folder is reported as corrupt, not config-less
        lite = None
        if lmul_bits is None:
            lite = _lite_backend(path, source, tokenizer_dir, model_id, kind, max_context, weights)
        if lite is not None:
            return lite
        from mulfree.engine import load_packed

        model = load_packed(path)
        if lmul_bits is not None and not _is_packed_bitnet(model):
            raise MulfreeError(
                "--mantissa-bits (L-Mul attention) applies to attention models; hgrn_bit has none"
            )
        return make_backend(
            model,
            _tokenizer(Path(tokenizer_dir) if tokenizer_dir else source.tokenizer_dir),
            model_id or Path(model_dir).resolve().name,
            kind=kind,
            max_context=max_context,
            weights=weights,
            attention="exact" if lmul_bits is None else "lmul",
            mantissa_bits=3 if lmul_bits is None else lmul_bits,
            kv_dtype=kv_dtype,
            threads=threads,
        )
    path = source.path  # a train run folder resolves to its model/ or newest checkpoint
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MulfreeError(f"no config.json in {path} (is it a model directory?)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise MulfreeError(f"cannot read {cfg_file}: {e}") from None
    from mulfree.models.loading import KNOWN_MODEL_TYPES, load_causal_lm

    if model_type in KNOWN_MODEL_TYPES:
        model = load_causal_lm(path)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise MulfreeError(f"cannot load {path}: {first_line(e)}") from None
    tokenizer = _tokenizer(Path(tokenizer_dir) if tokenizer_dir else source.tokenizer_dir)
    if lmul_bits is not None:
        if model_type == "hgrn_bit":
            raise MulfreeError("--lmul applies to attention models; hgrn_bit has no attention")
        from mulfree.attention import LMulConfig, apply_lmul_

        apply_lmul_(model, LMulConfig(mantissa_bits=lmul_bits))
    return make_backend(
        model,
        tokenizer,
        model_id or Path(model_dir).resolve().name,
        kind=kind,
        max_context=max_context,
        weights=weights,
    )


def _lite_backend(path, source, tokenizer_dir, model_id, kind, max_context, weights):
    """A LiteBackend for a packed hgrn_bit model when the torch-free engine runs it (compiled
    core present, exact elementwise products, weights "auto"/"packed"); else None."""
    from mulfree import kernels
    from mulfree.engine.header import weights_file
    from mulfree.engine.lite import LiteModel, eos_ids
    from mulfree.tensorfile import read_metadata

    if kind not in ("auto", "mmfree") or weights not in ("auto", "packed"):
        return None
    if not kernels.available():
        return None
    file = weights_file(path)
    try:
        meta = read_metadata(file)
    except MulfreeError:
        return None  # unreadable: the packed loader below says what is wrong (e.g. corrupt)
    if meta.get("model_family", "hgrn_bit") != "hgrn_bit":
        return None
    model = LiteModel.load(file)
    if not model.exact:  # the multiplication-free variant's L-Mul products need torch
        return None
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else source.tokenizer_dir
    if not (tok_dir / "tokenizer.json").is_file():
        return None  # a slow / custom tokenizer: the torch backend's AutoTokenizer path
    tokenizer = _fast_tokenizer(tok_dir)
    # the torch-free engine's own EOS lookup (config, generation_config, tokenizer_config)
    eos = eos_ids(model, tokenizer.backend_tokenizer, source.path)
    if max_context is None:
        max_context = int(model.config.get("max_position_embeddings") or 2048)
    return LiteBackend(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id or Path(path).resolve().name,
        max_context=max_context,
        eos_token_ids=frozenset(eos),
        weights="packed",
        file=file,
    )


def _fast_tokenizer(path: Path):
    """transformers' fast tokenizer of DIR/tokenizer.json, loaded directly: AutoTokenizer would
    import transformers' Auto model registry (and with it mulfree's hgrn_bit model code); any
    other folder goes through AutoTokenizer."""
    if not (path / "tokenizer.json").is_file():
        return _tokenizer(path)
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MulfreeError(f"cannot load a tokenizer from {path}: {first_line(e)}") from None


def _tokenizer(path: Path):
    return load_tokenizer(path)
