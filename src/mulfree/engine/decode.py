"""The fused decode step: one token through every layer, on preallocated buffers.

`Decoder(model)` reads the weights of a packed HGRNBitForCausalLM (PackedBitLinear layers) once
and runs `step(token_ids)` -> logits. With the compiled core (default) a step is a fixed plan of
compiled calls on preallocated buffers, pointers resolved once: per layer the ternary kernels
plus three fused elementwise stages (csrc/mf_decode.c: norms, gates and recurrence, GLU), ~10
calls instead of ~30 torch ops (benchmarks/bench_decode.py times both). Its spec is the torch path
(`fused=False`), which does the operations of the PyTorch model's forward at
T = 1 (the recurrence as `addcmul(i, f, h)` like the chunked scan, gates and residual adds in
the same order), but without modules or cache objects, mostly on preallocated buffers, with the
ternary projections calling the compiled kernel directly. RMSNorms are `torch.rms_norm`, one
fused op instead of the model's seven (x * (1 / sqrt(mean(x^2) + eps)) * w): it differs from
the model's formula by at most an ulp or so (rsqrt, its own reduction order) and replaces
seven Python-level op dispatches per norm by one. The
i/f/g projections run as one kernel call when their input norms have equal weights (then their
int8 inputs are identical), else as three. The Decoder moves the model's packed weights into one
arena on 2 MiB pages (`modules.place_weights_`), where i/f/g lie back to back: the fused call
reads them through a view, not a copy (`packing.fuse_rows` is the fallback).

Logits differ from the PyTorch model's (BitLinear, float weights) only by float rounding: the
kernel's exact int32 accumulation + one division per output vs F.linear's fp32 sums (bound in
mulfree.ternary.packed_linear). Those differences can move an int8 activation across a
rounding boundary in a later layer, so logits are close, not bit-equal; greedy tokens agree
(tests/engine). The recurrent state is [batch, hidden * expand_ratio] float32 per layer: memory
does not grow with the sequence.

Decode state lives in slots (`mulfree.engine.core.SlotDecoder`, torch-free; this class is its
torch face): `alloc()` a slot per sequence, `prefill_slot(slot, ids)`, `step(tokens, slots)`,
`free(slot)`; the arena holds `max_batch` slots and a step on any subset of them copies no
state and rebuilds nothing. The older batch API (`reset(batch)`, `prefill(ids)`, `step(ids)`)
uses slots 0..batch-1.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from mulfree import energy, kernels
from mulfree.engine import plan as P
from mulfree.engine.core import HGRNFusedPlan, HGRNWeights, SlotDecoder, id_list
from mulfree.engine.lite import embedding_lookup, embedding_table
from mulfree.engine.modules import (
    Int4Embedding,
    Int8Embedding,
    PackedBitLinear,
    adjacent_weights,
    place_weights_,
)
from mulfree.engine.plan import MIN_WEIGHTS_PER_THREAD, StepEnergy  # noqa: F401  (re-exported)
from mulfree.errors import MulfreeError
from mulfree.kernels import decode as KD
from mulfree.kernels import ternary as K_
from mulfree.kernels._core import core
from mulfree.models.hf_compat import cache_kwargs
from mulfree.models.mmfree import HGRNBitCache
from mulfree.ternary import packing


def _linear_of(m: PackedBitLinear) -> P.Linear:
    if m.bias is not None:
        raise MulfreeError("the fused decoder expects bias-free ternary projections (hgrn_bit)")
    p = m.packed()
    return P.Linear(m.norm.weight.detach().float().contiguous(), p.data, p.out_features,
                    p.in_features, p.scale_value, None, p.format)  # fmt: skip


def _numpy_embedding(module: torch.nn.Module, vocab: int, dim: int):
    """engine.lite's NumPy lookup over the module's own buffers (no copies) and its table for
    the step's compiled lookup (None where that does not read it), or (None, None) for a table
    only torch reads (bfloat16)."""
    fmt = "int8" if isinstance(module, Int8Embedding) else "int4" if isinstance(module, Int4Embedding) else "float32"
    try:
        tensors = {f"model.embeddings.{k}": v.detach().numpy() for k, v in module.state_dict().items()}
        return (embedding_lookup(tensors, fmt, vocab, dim, "the model"),
                embedding_table(tensors, fmt, vocab, dim))  # fmt: skip
    except (TypeError, RuntimeError, MulfreeError):  # a dtype NumPy lacks, or one lite leaves to torch
        return None, None


def _fused_linear(ms: list[PackedBitLinear]) -> P.Linear | None:
    """One call for projections sharing an input: same input norm weights, row-block aligned."""
    w0 = ms[0].norm.weight
    if any(not torch.equal(m.norm.weight, w0) for m in ms[1:]):
        return None
    if any(m.out_features % packing.TQ2_ROWS for m in ms):
        return None
    parts = [m.packed() for m in ms]
    layout = parts[0].format
    data = adjacent_weights(ms)  # a view when place_weights_ put them back to back
    if layout != "tq2":  # t81: the view only, and only of whole 64-row block pairs
        if (data is None or any(p.format != layout for p in parts)
                or any(m.out_features % (2 * packing.TQ2_ROWS) for m in ms)):  # fmt: skip
            return None
        row_scales = packing.stacked_row_scales(parts)
    elif data is None:
        data, row_scales = packing.fuse_rows(parts)
    else:
        row_scales = packing.stacked_row_scales(parts)
    n = sum(m.out_features for m in ms)
    return P.Linear(w0.detach().float().contiguous(), data, n, ms[0].in_features, 1.0, row_scales,
                    layout)  # fmt: skip


def fused_step_applies(model, isa: str | None = None) -> bool:
    """The one predicate: does the fused decode step (compiled plan) run this model? True for
    an hgrn_bit model on packed weights (loaded packed or `pack_model_`'ed) multiplying exactly, with the compiled core and an ISA other than
    "torch". (While an energy counter runs, the same compiled calls run one by one as torch
    custom ops, which the counter prices: `Decoder._visible_calls`.)"""
    return (
        getattr(model.config, "model_type", None) == "hgrn_bit"
        and isinstance(getattr(model, "lm_head", None), PackedBitLinear)  # pack_model_ ran
        and getattr(model.config, "elementwise_mul", "exact") == "exact"
        and kernels.available()
        and kernels.resolve_isa(isa) != kernels.TORCH
    )


class Decoder:
    """Single-token decoding on the kernels for a packed HGRNBitForCausalLM (the torch face of
    `mulfree.engine.core.SlotDecoder`).

    Slots: `alloc()` -> slot, `prefill_slot(slot, ids)` -> logits [vocab], `step(tokens, slots)`
    -> logits [len(slots), vocab], `free(slot)`; `max_batch` slots live at once before the arena
    grows. Batch API: `reset(batch)` zeroes slots 0..batch-1; `prefill(ids)` runs prompts
    (batched kernels) into them; `step(ids)` feeds one token per sequence (a new Decoder is at
    batch 1, zero state). Use one API or the other on a Decoder. The returned logits
    of `step` are a buffer reused by the next step (clone them to keep them).
    """

    def __init__(
        self,
        model,
        threads: int | None = None,
        isa: str | None = None,
        min_weights_per_thread: int = MIN_WEIGHTS_PER_THREAD,
        fused: bool | None = None,
        max_batch: int = 1,
    ):
        cfg = model.config
        self.model = model
        self.config = cfg
        self.threads = kernels.resolve_threads(threads)
        self.min_weights_per_thread = int(min_weights_per_thread)
        self.isa = kernels.resolve_isa(isa)
        # per kernel family, the level the dispatcher picks (fastest on this CPU under "auto")
        self.isas = {} if self.isa == kernels.TORCH else {
            f: kernels.resolve_isa(isa, f)
            for f in (kernels.TERNARY_B1, kernels.TERNARY_BATCH, kernels.DECODE_STAGES)
        }  # fmt: skip
        # fused: the compiled elementwise stages (csrc/mf_decode.c) between direct kernel calls;
        # else the torch ops below, which are their spec (default: fused when compiled).
        self.fused = self.isa != kernels.TORCH if fused is None else bool(fused)
        if self.fused and self.isa == kernels.TORCH:
            raise MulfreeError("the fused decode step needs the compiled core (isa != 'torch')")
        # L-Mul mode runs the model's own forward (its elementwise products are L-Mul emulations)
        self.exact = cfg.elementwise_mul == "exact"
        inner = model.model
        for m in model.modules():
            if type(m).__name__ == "BitLinear":
                raise MulfreeError(
                    "Decoder needs packed weights: pack the model first (mulfree.engine.pack_model_)"
                )
        self.eps = float(cfg.rms_norm_eps)
        self.bl_eps = float(model.lm_head.norm.eps)
        self.n_layers = cfg.num_hidden_layers
        # not inference tensors, even when built under inference_mode (a server's first step):
        # the packed layers check their buffers' version counters
        with torch.inference_mode(False), torch.no_grad():
            place_weights_(model)  # one huge-page arena; i/f/g back to back (fused as a view)
            lbs = None
            if inner.lower_bounds is not None:
                # [L, d], row 0 is 0: the model's formula (shared with the torch-free engine)
                lbs = torch.from_numpy(P.lower_bounds(inner.lower_bounds.detach().float().numpy()))
            self.layers: list[P.Layer] = []
            for idx, blk in enumerate(inner.layers):
                a, mlp = blk.attn, blk.mlp
                lb = lbs[idx].contiguous() if lbs is not None and idx > 0 else None
                self.layers.append(P.Layer(
                    attn_norm=blk.attn_norm.weight.detach().float().contiguous(),
                    ifg=_fused_linear([a.i_proj, a.f_proj, a.g_proj]),
                    i=_linear_of(a.i_proj), f=_linear_of(a.f_proj), g=_linear_of(a.g_proj),
                    lb=lb, one_minus_lb=(1 - lb) if lb is not None else None,
                    g_norm=a.g_norm.weight.detach().float().contiguous(), g_eps=float(a.g_norm.eps),
                    o=_linear_of(a.o_proj),
                    mlp_norm=blk.mlp_norm.weight.detach().float().contiguous(),
                    gate=_linear_of(mlp.gate_proj), down=_linear_of(mlp.down_proj),
                ))  # fmt: skip
            self.final_norm = inner.norm.weight.detach().float().contiguous()
            self.head = _linear_of(model.lm_head)
        lins = [lin for L in self.layers for lin in L.linears()] + [self.head]
        route = P.t81_route(self.isa, any(lin.layout == "t81" for lin in lins))
        if route == "kernel":  # calls on t81 weights run at the level `isa` resolves to
            self.isas["t81"] = self.isa
        self.embed = inner.embeddings
        self._np_embed, table = _numpy_embedding(self.embed, cfg.vocab_size, cfg.hidden_size)
        d, E = cfg.hidden_size, int(cfg.hidden_size * cfg.expand_ratio)
        # the torch-free core holds the state arena and the buffers on every path; its fused
        # plan reads the weights through NumPy views of the tensors above (no copies)
        layers, head = [L.map(_np) for L in self.layers], P.map_linear(self.head, _np)
        self._tq2_copies = None  # t81 weights at a level without their kernel: tq2 copies
        if route == "copies":
            layers, head, self._tq2_copies = P.tq2_layers(core(), layers, head)
        w = HGRNWeights(layers, _np(self.final_norm), head, self._embed_rows, d, E,
                        cfg.mlp_intermediate_size, cfg.vocab_size, self.eps, self.bl_eps,
                        table)  # fmt: skip
        self.family = HGRNFusedPlan(core(), w, self.threads, self.isas,
                                    self.min_weights_per_thread, capacity=max(1, int(max_batch)))  # fmt: skip
        self.slots = SlotDecoder(self.family)
        # the batch API's slots 0..batch-1, taken on its first use (reset, prefill, step without
        # slots), so a caller of the slot API (a server) gets every slot
        self.batch = 1
        self._batch_slots: list[int] | None = None
        self._dense_fp32 = False  # the energy counterfactual of step_energy
        self._logits_t: tuple | None = None  # (logits array, {id(rows): (rows, tensor)})

    @property
    def fused_ifg(self) -> bool:
        """True when every layer runs its i/f/g projections as one kernel call."""
        return all(layer.ifg is not None for layer in self.layers)

    @property
    def max_batch(self) -> int:
        """Slots the state arena holds now (it doubles when more are allocated)."""
        return self.slots.capacity

    def _embed_rows(self, ids: np.ndarray):
        """The fused step's lookup: float32 rows [B, d]. NumPy where the format allows (the
        same rows as the module, tested): no torch op in a fused step (the module's lookup took
        ~65 µs a token on 370M, this ~20 µs; AMD EPYC Zen 4, under load)."""
        if self._np_embed is not None:
            return self._np_embed(ids)
        return self.embed(torch.from_numpy(ids))  # [B, d] float32

    def _arena(self) -> list[torch.Tensor]:
        """Per layer the state arena [capacity, E] as tensors (views of the core's NumPy)."""
        return [torch.from_numpy(s) for s in self.family.states]

    # the batch API's buffers and plan, as the per-call loop sees them (tests/kernels/test_plan.py)
    @property
    def x(self) -> torch.Tensor:
        """The residual-stream buffer of the batch API's rows [batch, d] (a view)."""
        return torch.from_numpy(self.family.buf.x[: self.batch])

    @property
    def logits(self) -> torch.Tensor:
        """The logits buffer of the batch API's rows [batch, vocab] (a view)."""
        return torch.from_numpy(self.family.buf.logits[: self.batch])

    def _build_plan(self) -> list:
        """The fused step of the batch API's slots as (compiled function, args) pairs."""
        if self._batch_slots is None:
            self.reset(self.batch)
        return self.family.plan(self.batch, P.runs_of(self._batch_slots))

    def runner_call(self):
        """The compiled part of the batch API's fused step: the plan runner's one C call as a
        no-argument callable (None when the step is not fused or the core has no runner).
        Calling it alone repeats the last step's arithmetic on the inputs `step` left in the
        buffers (it changes the states): a timing probe, not a decode API."""
        if not (self.fused and self.exact):
            return None
        if self._batch_slots is None:
            self.reset(self.batch)
        return self.family.runner_call(self._batch_slots)

    @property
    def states(self) -> list[torch.Tensor]:
        """Per layer the recurrent states [batch, E] of the batch API's slots (views)."""
        return [s[: self.batch] for s in self._arena()]

    # --- slots -----------------------------------------------------------------------------
    def alloc(self) -> int:
        """A free slot with a zero state (for `prefill_slot` / `step(tokens, slots)`)."""
        return self.slots.alloc()

    def free(self, slot: int) -> None:
        self.slots.free(slot)

    def reserve(self, max_batch: int) -> None:
        """Room for `max_batch` slots at once, so the arena never grows while serving."""
        self.slots.reserve(int(max_batch))

    @torch.inference_mode()
    def prefill_slot(self, slot: int, ids) -> torch.Tensor:
        """Run one prompt (list of ids) from a zero state into `slot`; logits of its last token
        [vocab] (a new tensor). On the fused path the prompt's tokens are the rows of batched
        kernel calls with the recurrence stepped token by token (`SlotDecoder.prefill`: the same
        bits as stepping them); else the model's forward (chunked scan)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if self.fused and self.exact:
            with self._visible_calls():
                return torch.from_numpy(self.slots.prefill(slot, ids.numpy()).copy())
        self.slots.check([slot], 1)
        return self._prefill([slot], ids.reshape(1, -1))[0].clone()

    # --- batch API -------------------------------------------------------------------------
    def reset(self, batch: int = 1) -> None:
        """Zero recurrent state for `batch` sequences in slots 0..batch-1 (every slot freed)."""
        self.slots.free_all()
        self.slots.reserve(batch)
        self._batch_slots = [self.slots.alloc() for _ in range(batch)]  # 0..batch-1: lowest first
        self.batch = batch

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor | list[list[int]] | list[int]) -> torch.Tensor:
        """Run prompts ids [batch, T] (batched kernels) from a zero state; logits of the last
        position [batch, vocab] (a buffer). The state is then ready for `step`. On the fused
        path the logits and states are those of stepping the prompts token by token, bit for bit
        (`SlotDecoder.prefill`), and the prompts (a list of lists) may differ in length; else
        the model's forward (chunked scan)."""
        fused = self.fused and self.exact
        if fused and isinstance(ids, list) and ids and all(isinstance(r, list) for r in ids):
            rows = [np.asarray(r, dtype=np.int64) for r in ids]  # lengths may differ
        else:
            try:
                ids = torch.as_tensor(ids, dtype=torch.long)
            except ValueError as e:  # ragged rows on the model's forward
                raise MulfreeError(f"prefill: prompts of equal length expected here ({e})") from None
            rows = ids[None] if ids.dim() == 1 else ids
            rows = list(rows.numpy()) if fused else rows
        self.reset(len(rows))
        out = torch.from_numpy(self.family.buf.logits[: self.batch])
        if fused:
            # each prompt as prefill_slot runs it (batched kernels over its tokens, the state
            # stepped token by token: the bits of stepping them), not through the model's
            # forward: on a busy 2-core machine the forward's torch ops on 2 threads stalled
            # (28-69 vs 216-263 tok/s at 1 thread, 370M, AMD EPYC Zen 4), and the compiled
            # prefill has its own busy-core back-off (csrc/mf_ternary.c)
            for b, (row, slot) in enumerate(zip(rows, self._batch_slots, strict=True)):
                out[b].copy_(self.prefill_slot(slot, row))
            return out
        out.copy_(self._prefill(self._batch_slots, rows))
        return out

    def _prefill(self, slots: list[int], ids: torch.Tensor) -> torch.Tensor:
        """The model's forward on prompts [B, T] (batched kernels, chunked scan); its final
        states go into `slots`; last-position logits [B, vocab]."""
        if ids.shape[1] == 0:
            raise MulfreeError("prefill needs at least one token")
        cache = HGRNBitCache(self.config)
        out = self.model(input_ids=ids, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        idx = torch.tensor(slots)
        for i, s in enumerate(self._arena()):
            s[idx] = cache.layers[i].recurrent_states[0].float()
        return out.logits[:, -1]

    # --- the step --------------------------------------------------------------------------
    def step(self, ids: torch.Tensor | list[int], slots: list[int] | None = None) -> torch.Tensor:
        """Feed one token per sequence: ids [B]; slots (default: the batch API's 0..batch-1)
        the B slots they go to. Returns logits [B, vocab] (a buffer)."""
        if self.fused and self.exact and not energy.counting():
            # the compiled step: no torch op on the way. A step streams ~100 MB of weights, so
            # the Python between two steps runs with cold caches, where one torch op costs tens
            # of µs (as_tensor, from_numpy, inference_mode: ~300 µs a token on 370M, Zen 4)
            toks = id_list(ids)
            if slots is None:
                if len(toks) != self.batch:
                    raise MulfreeError(f"step got {len(toks)} tokens for a batch of {self.batch}")
                if self._batch_slots is None:
                    self.reset(self.batch)
                slots = self._batch_slots
            rows = self.slots.step(slots, toks)
            return self._logits_rows(rows)
        return self._step_slow(ids, slots)

    def _logits_rows(self, rows: np.ndarray) -> torch.Tensor:
        """The tensor view of the core's logits rows `rows` (a step's return: the same few
        arrays every step), made once per array."""
        cache = self._logits_t
        if cache is None or cache[0] is not self.family.buf.logits:
            cache = self._logits_t = (self.family.buf.logits, {})  # the arena was (re)allocated
        t = cache[1].get(id(rows))
        if t is None or t[0] is not rows:
            with torch.inference_mode():  # as the step's torch path returns: inference tensors
                t = cache[1][id(rows)] = (rows, torch.from_numpy(rows))
        return t[1]

    @torch.inference_mode()
    def _step_slow(self, ids, slots: list[int] | None) -> torch.Tensor:
        """Every other step: L-Mul mode, the torch path, the compiled step under an energy
        counter (its calls one by one, visible to the counter)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if slots is None:
            if ids.numel() != self.batch:
                raise MulfreeError(f"step got {ids.numel()} tokens for a batch of {self.batch}")
            if self._batch_slots is None:
                self.reset(self.batch)
            slots = self._batch_slots
        else:
            slots = [int(s) for s in slots]
            self.slots.check(slots, ids.numel())
        if not self.exact:
            return self._step_model(ids, slots)
        if self.fused:
            with self._visible_calls():
                return torch.from_numpy(self.slots.step(slots, ids.numpy()))
        return self._step_torch(ids, slots)

    @contextlib.contextmanager
    def _visible_calls(self):
        """While an energy counter runs, the fused step runs call by call as torch custom ops
        (mulfree.kernels.decode.OpsCore), each priced by its registered formula. Those are the
        same compiled functions, in the same order, on the same buffers as the plan runner's one
        C call (bit-identical: tests/kernels/test_plan.py), which dispatch cannot see into.
        `_dense_fp32`: step_energy's counterfactual (mulfree.kernels.ternary.priced_as_dense)."""
        if not energy.counting():
            yield
            return
        with self.family.calls_through(KD.OpsCore, KD.Ref.of), K_.priced_as_dense(self._dense_fp32):
            yield

    def _buffers(self, B: int) -> P.Buffers:
        """The core's scratch buffers, first B rows, as tensors."""
        return P.Buffers(**{k: torch.from_numpy(v[:B]) for k, v in vars(self.family.buf).items()})

    def _step_torch(self, ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """The spec of the fused step: torch ops on the same buffers (see the module docstring).
        `_dense_fp32` (step_energy's counterfactual): the counter prices every ternary kernel
        call as a dense fp32 F.linear of its shape (mulfree.kernels.ternary.priced_as_dense)."""
        with K_.priced_as_dense(self._dense_fp32):
            return self._step_torch_ops(ids, slots)

    def _step_torch_ops(self, ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
        B = len(slots)
        buf, arena = self._buffers(B), self._arena()
        runs = P.runs_of(slots)
        if len(runs) == 1:  # adjacent slots: their states are one view of the arena
            first = runs[0][1]
            states = [s[first : first + B] for s in arena]
        else:
            idx = torch.tensor(slots)
            states = [s[idx] for s in arena]  # gathered copies, written back below
        rms, eps, bl_eps = torch.rms_norm, self.eps, self.bl_eps
        x, E = buf.x, buf.y_i.shape[1]
        d, inter = (x.shape[1],), (buf.z_i.shape[1],)
        t_e2 = torch.empty_like(buf.t_e)
        x.copy_(self.embed(ids))  # [B, d]
        for L, state in zip(self.layers, states, strict=True):
            # token mixer (MLGRU): attn_norm, then the BitLinear norms of i/f/g (shared RMS)
            hn = rms(rms(x, d, L.attn_norm, eps), d, None, bl_eps)
            if L.ifg is not None:
                self._bitlinear(L.ifg, hn, buf.h, buf.y_ifg)
                yi, yf, yg = buf.y_ifg[:, :E], buf.y_ifg[:, E : 2 * E], buf.y_ifg[:, 2 * E :]
            else:
                yi = self._bitlinear(L.i, hn, buf.h, buf.y_i)
                yf = self._bitlinear(L.f, hn, buf.h, buf.y_f)
                yg = self._bitlinear(L.g, hn, buf.h, buf.y_g)
            f = torch.sigmoid(yf, out=buf.t_e)
            if L.lb is not None:
                f.mul_(L.one_minus_lb)  # (1 - lb) * f, commutative: same bits
                f.add_(L.lb)  # lb + ((1 - lb) f)
            i = torch.sub(1, f, out=t_e2)  # 1 - f
            i.mul_(F.silu(yi))  # silu(i) * (1 - f)
            torch.addcmul(i, f, state, out=state)  # h = i + f * h (the scan's addcmul)
            # g_norm(g, h) = rmsnorm(g) * w * silu(h), then o_proj (its own BitLinear norm)
            g = rms(yg, (E,), L.g_norm, L.g_eps).mul_(F.silu(state))
            self._kernel(L.o, rms(g, (E,), L.o.norm_w, bl_eps), buf.y_d)
            x.add_(buf.y_d)  # residual = attn_out + residual
            # channel mixer (GLU)
            u = rms(rms(x, d, L.mlp_norm, eps), d, L.gate.norm_w, bl_eps)
            gu = self._kernel(L.gate, u, buf.y_gu)
            z = torch.mul(F.silu(gu[:, : inter[0]]), gu[:, inter[0] :], out=buf.z_i)
            self._kernel(L.down, rms(z, inter, L.down.norm_w, bl_eps), buf.y_d)
            x.add_(buf.y_d)
        if len(runs) > 1:
            for s, st in zip(arena, states, strict=True):
                s[idx] = st
        u = rms(rms(x, d, self.final_norm, eps), d, self.head.norm_w, bl_eps)
        return self._kernel(self.head, u, buf.logits)

    def _step_model(self, ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """L-Mul mode: the model's own forward on the slots' states (an HGRNBitCache of them)."""
        idx = torch.tensor(slots)
        arena = self._arena()
        cache = HGRNBitCache(self.config)
        for i, s in enumerate(arena):
            cache.update_recurrent_state(s[idx], i)  # s[idx]: a gathered copy
        out = self.model(input_ids=ids[:, None], **cache_kwargs(cache), use_cache=True)
        for i, s in enumerate(arena):
            s[idx] = cache.layers[i].recurrent_states[0]
        logits = self._buffers(len(slots)).logits
        logits.copy_(out.logits[:, -1])
        return logits

    # --- pieces of the torch path ------------------------------------------------------------
    def _threads_for(self, lin: P.Linear, rows: int = 1) -> int:
        """Kernel threads for one projection on `rows` tokens (mulfree.engine.plan.threads_for)."""
        return P.threads_for(lin, self.threads, self.min_weights_per_thread, rows)

    def _kernel(self, lin: P.Linear, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = packed ternary linear of u (int8 absmax inside the kernel)."""
        if self.isa == kernels.TORCH:
            p = packing.PackedTernary(lin.data, lin.scale, lin.out_features, lin.in_features,
                                      lin.layout)  # fmt: skip
            from mulfree.ternary.packed_linear import ternary_linear_torch

            if lin.row_scales is None:
                out.copy_(ternary_linear_torch(u, p))
            else:  # ternary_linear_torch divides by one scale; redo its last op per row
                y, acc = ternary_linear_torch(u, p, return_acc=True)
                s = u.float().abs().amax(-1, keepdim=True).clamp_min(1e-5).reciprocal() * 127
                out.copy_(acc.float() / (s * lin.row_scales))
            return out
        op, isa = P.torch_linear(lin, self.isas, self.isa, u.shape[0])
        op(u, lin.data, lin.out_features, lin.scale, threads=self._threads_for(lin, u.shape[0]),
           isa=isa, out=out, row_scales=lin.row_scales)  # fmt: skip (custom ops the counter prices)
        return out

    def _bitlinear(self, lin: P.Linear, xn: torch.Tensor, u: torch.Tensor, out: torch.Tensor):
        """BitLinear on an input already divided by its RMS (xn): (xn * norm_w) -> kernel."""
        torch.mul(xn, lin.norm_w, out=u)
        return self._kernel(lin, u, out)

    # --- callers whose state lives elsewhere, and energy ----------------------------------
    def step_from(self, states: list[torch.Tensor], ids: torch.Tensor | list[int]) -> torch.Tensor:
        """One step for sequences whose recurrent states are kept elsewhere (a transformers
        cache): loads `states` (L x [B, E]) into slots 0..B-1, runs `step(ids)` and returns a
        copy of the logits [B, vocab]; the advanced states are then in `self.states`."""
        B = states[0].shape[0]
        if self.batch != B or self._batch_slots is None:
            self.reset(B)  # slots only: the arena grows when B exceeds it, else nothing moves
        for rows, s in zip(self.states, states, strict=True):
            rows.copy_(s)
        return self.step(ids).clone()  # step's logits are a buffer the next step reuses

    def step_energy(self, ids: torch.Tensor | list[int], table: str | None = None,
                    slots: list[int] | None = None) -> StepEnergy:  # fmt: skip
        """Count and price one `step(ids, slots)` without changing the decoder's state: the step
        as it runs (ternary kernels, int8 quantizers, norms, gates, head) and, for comparison,
        the same step with every ternary projection a dense fp32 F.linear (K multiplies and K - 1
        adds per output, 4 bytes per weight; all other ops as run). `table`: an energy table
        name or JSON file (default mulfree.energy's). In L-Mul elementwise mode the step runs
        the model's forward and only the step as run is priced (dense_fp32_pj None)."""
        from mulfree.energy.counter import EnergyCounter
        from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable, price

        tab = EnergyTable.load(table or DEFAULT_TABLE)
        saved = self.family.states.copy()
        priced = []
        n = len(torch.as_tensor(ids).reshape(-1))
        for dense in (False, True) if self.exact else (False,):
            self._dense_fp32 = dense
            try:
                with EnergyCounter(self.model) as c:
                    self.step(ids, slots)  # the counter prices each compiled call (custom ops)
            finally:  # back to the state before the counted step
                self._dense_fp32 = False
                self.family.states[...] = saved
            priced.append(price(c.counts, c.bytes, tab))
        per_seq = 1.0 / n
        return StepEnergy(
            tab.name,
            priced[0]["total_pJ"] * per_seq,
            priced[0]["memory_pJ"] * per_seq,
            priced[1]["total_pJ"] * per_seq if len(priced) > 1 else None,
        )


def _np(t):
    """A NumPy view of a CPU tensor (the same memory), None kept."""
    return None if t is None else t.detach().numpy()
