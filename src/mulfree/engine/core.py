"""The decode core, without torch: decode state in slots it owns, and one step over any of them.

`SlotDecoder(family)` is the one owner of decode state. A sequence gets a slot (`alloc`), a step
feeds one token to each of some slots (`step(slots, tokens)` -> logits [len(slots), vocab], a
buffer the next step overwrites) and a finished sequence gives its slot back (`free`). Adding or
freeing a slot touches that slot's rows only: no other slot's state is copied and no buffer or
plan is rebuilt; the arena grows (doubling, copying every slot once) only when more sequences
than its capacity are alive at once. `mulfree generate` (through `mulfree.engine.lite` and the
torch `mulfree.engine.decode.Decoder`), HF `generate` on a packed model and the server all step
through a SlotDecoder.

The seam for a model family is a `FamilyPlan` (the protocol below): it owns the family's state
arena and scratch buffers for `capacity` slots and runs one step on a set of slots.
`HGRNFusedPlan` is the MatMul-free (hgrn_bit) family's: its state is one float32 row
[hidden * expand_ratio] per layer and slot, and its step is `mulfree.engine.plan.fused_plan`'s
list of compiled calls, cached per (batch size, runs of adjacent slots), so a step is a loop over
prebuilt (function, args) pairs. A family with a KV cache (a transformer) keeps per-slot caches
and positions in its arena the same way (docs/engine.md).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mulfree.engine import plan as P
from mulfree.errors import MulfreeError

MAX_CACHED_PLANS = 256  # (batch, runs) keys: a server's slots settle into a few layouts
PREFILL_CHUNK = 64  # prompt tokens per prefill pass (rows of the prefill buffers)


class FamilyPlan(Protocol):
    """What a model family gives the SlotDecoder (its state layout and its step)."""

    vocab: int
    capacity: int  # slots the arena holds now

    def allocate(self, capacity: int) -> None:
        """(Re)size the state arena and buffers to `capacity` slots, keeping slots < the old
        capacity as they are."""

    def clear(self, slot: int) -> None:
        """Zero one slot's state (a new sequence starts from it)."""

    def run(self, slots: Sequence[int], tokens: np.ndarray) -> np.ndarray:
        """One token per slot (tokens int64 [B]); advance those slots' states in place;
        logits float32 [B, vocab] (rows in `slots` order; a buffer). A family may also have
        `run_ids(slots: list[int], ids: list[int])`, the same step on Python ints (ids checked
        in range), which the SlotDecoder then calls instead: no array op on the way."""

    def prefill(self, slot: int, tokens: np.ndarray) -> np.ndarray:
        """A prompt (int64 [T], T >= 1) into `slot` from its current state; the logits of its
        last token float32 [vocab] (a buffer): equal to running its tokens one by one."""


@dataclass
class HGRNWeights:
    """An hgrn_bit model as the fused step reads it: typed layers of NumPy arrays (views of
    the caller's memory: a torch model's tensors or a memory-mapped file's arena)."""

    layers: list[P.Layer]
    final_norm: np.ndarray  # float32 [d]
    head: P.Linear
    embed: Callable[[np.ndarray], Any]  # ids int64 [B] -> float32 rows [B, d]
    hidden: int
    expand: int  # E = hidden * expand_ratio
    inter: int  # GLU width I
    vocab: int
    eps: float  # the model's RMSNorm eps
    bl_eps: float  # BitLinear's input-norm eps
    embed_table: P.Embedding | None = None  # `embed`'s table, for the step's compiled lookup


class HGRNFusedPlan:
    """The hgrn_bit family on the compiled core: state arena [L, capacity, E] float32,
    scratch buffers [capacity, n], and the fused plan per (batch, runs) (see the module
    docstring). `isas`: kernel family -> ISA level name (mulfree.kernels.resolve_isa), and
    "t81" -> the level of the calls on t81 weights (default: the best level of the CPU)."""

    def __init__(self, C, w: HGRNWeights, threads: int, isas: Mapping[str, str],
                 min_weights_per_thread: int = P.MIN_WEIGHTS_PER_THREAD, capacity: int = 1):  # fmt: skip
        from mulfree import kernels

        self.C, self.w, self.threads = C, w, int(threads)
        self.ptr: Callable[[Any], Any] = _ptr  # array -> the address the C calls take
        self.vocab = w.vocab
        self.min_weights_per_thread = int(min_weights_per_thread)
        self._levels = {f: kernels.ISA_LEVELS[lv] for f, lv in isas.items()}
        self._t81 = kernels.ISA_LEVELS.get(isas.get("t81") or kernels.isa_max(), 0)  # "torch": no core
        self._family = kernels.ternary_family
        self._stage = kernels.DECODE_STAGES
        self.capacity = 0
        self.states: np.ndarray | None = None  # [L, capacity, E]
        self.buf: P.Buffers | None = None
        self._plans: dict = {}
        self.allocate(capacity)

    use_plan_run = True  # False: the per-call loop (the runner's twin, compared in the tests)

    @contextlib.contextmanager
    def calls_through(self, C, ptr):
        """Inside, steps and prefills run their plan call by call on `C`'s functions with
        addresses from `ptr` (uncached): the per-call twin of the plan runner, e.g. on the
        compiled functions as torch custom ops (mulfree.kernels.decode.OpsCore), so torch's
        dispatch, and the energy counter, see each call."""
        saved, buf = (self.C, self.ptr, self._plans, self.use_plan_run), self.buf
        self.C, self.ptr, self._plans, self.use_plan_run = C, ptr, {}, False
        try:
            yield
        finally:
            self.C, self.ptr, self._plans, self.use_plan_run = saved
            if self.buf is not buf:  # the arena grew inside: the cached plans are stale
                self._plans = {}

    def threads_for(self, lin: P.Linear, rows: int = 1) -> int:
        return P.threads_for(lin, self.threads, self.min_weights_per_thread, rows)

    def allocate(self, capacity: int) -> None:
        w, cap = self.w, int(capacity)
        z = lambda n: np.zeros((cap, n), dtype=np.float32)  # noqa: E731
        d, E, inter = w.hidden, w.expand, w.inter
        self.buf = P.Buffers(x=z(d), h=z(d), y_ifg=z(3 * E), y_i=z(E), y_f=z(E), y_g=z(E),
                             t_e=z(E), y_d=z(d), y_gu=z(2 * inter), z_i=z(inter),
                             logits=z(w.vocab), h_f=z(d), h_g=z(d))  # fmt: skip
        states = np.zeros((len(w.layers), cap, E), dtype=np.float32)
        if self.states is not None:
            keep = min(cap, self.capacity)
            states[:, :keep] = self.states[:, :keep]
        self.states, self.capacity = states, cap
        self.ids = np.zeros(cap, dtype=np.int64)  # a step's token ids, read by its first op
        self._plans = {}  # their addresses pointed into the old arrays
        self._rows: dict[int, np.ndarray] = {}  # B -> the logits rows a step returns
        self._pbuf = None  # the prefill buffers, on first use

    def _prefill_buffers(self) -> P.Buffers:
        if self._pbuf is None:
            w, n = self.w, PREFILL_CHUNK
            z = lambda k, rows=n: np.zeros((rows, k), dtype=np.float32)  # noqa: E731
            d, E, inter = w.hidden, w.expand, w.inter
            self._pbuf = P.Buffers(x=z(d), h=z(d), y_ifg=z(3 * E), y_i=z(E), y_f=z(E),
                                   y_g=z(E), t_e=z(E), y_d=z(d), y_gu=z(2 * inter),
                                   z_i=z(inter), logits=z(w.vocab, 1), h_f=z(d), h_g=z(d))  # fmt: skip
        return self._pbuf

    def clear(self, slot: int) -> None:
        self.states[:, slot] = 0

    def plan(self, B: int, runs: tuple) -> list:
        """The compiled calls of a step on B rows whose states are `runs` (cached)."""
        return self._entry(B, runs)[0]

    def _encode(self, plan: list):
        """The plan for the core's plan runner (one C call for all of it: csrc/mf_plan.c, the
        same functions in the same order, the same bits; tests/kernels/test_plan.py), or None
        where the core has none or the plan holds a call it does not know (a wrapped core):
        then the call loop."""
        if not hasattr(self.C, "plan_run"):
            return None
        try:
            return P.encode_plan(self.C, plan)
        except ValueError:
            return None

    def _entry(self, B: int, runs: tuple):
        """(plan, its encoding for the core's plan runner or None, the runner's arguments for a
        whole step from token ids or None), cached per (B, runs)."""
        key = (B, runs)
        entry = self._plans.get(key)
        if entry is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            w = self.w
            plan = P.fused_plan(self.C, self.buf, list(self.states), w.layers, w.final_norm,
                                w.head, w.eps, w.bl_eps, self.threads_for,
                                self._levels[self._family(B)], self._levels[self._stage], self.ptr,
                                B=B, runs=runs, t81_isa=self._t81)  # fmt: skip
            words, step = self._encode(plan), None
            if words is not None and w.embed_table is not None and hasattr(self.C, "dec_embed"):
                # the step from token ids: the lookup as its first op (the per-call loop and
                # `words` leave it to `w.embed`, the NumPy spec it is tested against); the
                # runner's arguments kept as ints, ready to call
                sw = P.encode_plan(self.C, [P.embed_call(self.C, w.embed_table, self.ids,
                                                         self.buf.x, B, self.ptr)] + plan)  # fmt: skip
                step = (sw, (sw.ctypes.data, sw.size, self.ptr(self.ids), B))
            entry = self._plans[key] = (plan, words, step)
        return entry

    def prefill(self, slot: int, tokens: np.ndarray) -> np.ndarray:
        """The prompt's tokens as the rows of one pass per chunk of PREFILL_CHUNK: every
        projection a batched kernel call over the chunk, the MLGRU stage once per token in order
        on the slot's state (runs (t, slot, 1)), the head on the last token only. Each row's
        arithmetic is that of a one-token step (the kernels' rows are independent and exact), so
        the logits and state equal stepping the tokens one by one, bit for bit (tested)."""
        buf, w = self._prefill_buffers(), self.w
        T = len(tokens)
        for start in range(0, T, PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            B = len(chunk)
            plan, words = self._prefill_entry(B, int(slot), start + B == T)
            buf.x[:B] = w.embed(chunk)  # [B, d]
            if words is not None and self.use_plan_run:
                self.C.plan_run(words.ctypes.data, words.size)  # the chunk in one C call
            else:
                for fn, args in plan:
                    fn(*args)
        return buf.logits[0]

    def _prefill_entry(self, B: int, slot: int, last: bool):
        """(plan, its plan-runner encoding or None) of a prefill chunk of B tokens into `slot`,
        cached with the steps' plans (a server prefills into the same few slots and prompt
        lengths again and again; building a plan in Python cost ~20 % of a short prompt's
        prefill on the 2-core AMD EPYC dev machine)."""
        key = ("prefill", B, slot, last)
        entry = self._plans.get(key)
        if entry is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            w, buf = self.w, self._prefill_buffers()
            runs = tuple((t, slot, 1) for t in range(B))
            plan = P.fused_plan(self.C, buf, list(self.states), w.layers, w.final_norm, w.head,
                                w.eps, w.bl_eps, self.threads_for, self._levels[self._family(B)],
                                self._levels[self._stage], self.ptr, B=B, runs=runs,
                                head_rows="last" if last else "none",
                                head_isa=self._levels[self._family(1)], t81_isa=self._t81)  # fmt: skip
            entry = self._plans[key] = (plan, self._encode(plan))
        return entry

    def runner_call(self, slots: Sequence[int]):
        """The plan runner's one C call of a step on `slots` (cached plan), exactly as `run_ids`
        makes it (from the token ids of the last step, when the lookup is compiled too), as a
        no-argument callable, or None where the core has no runner: run alone it is the
        compiled part of a step; benchmarks/bench_decode.py times it against the whole Python
        step to give the per-token call overhead."""
        B = len(slots)
        _, words, step = self._entry(B, P.runs_of(slots))
        if step is not None:
            return functools.partial(self.C.plan_run, *step[1], self.ids[:B].tolist())
        if words is None:
            return None
        return functools.partial(self.C.plan_run, words.ctypes.data, words.size)

    def run(self, slots: Sequence[int], tokens: np.ndarray) -> np.ndarray:
        return self.run_ids(list(slots), np.asarray(tokens, dtype=np.int64).reshape(-1).tolist())

    def run_ids(self, slots: list[int], ids: list[int]) -> np.ndarray:
        # Lean on purpose: a step streams ~100 MB of weights, so this Python runs with cold
        # caches, where each NumPy or torch op costs tens of µs (csrc/mf_decode.c, dec_embed).
        B = len(slots)
        plan, words, step = self._entry(B, P.runs_of(slots))
        if step is not None and self.use_plan_run:
            self.C.plan_run(*step[1], ids)  # the lookup and the whole step in one C call
        else:
            self.buf.x[:B] = self.w.embed(np.asarray(ids, dtype=np.int64))  # [B, d]
            if words is not None and self.use_plan_run:
                self.C.plan_run(words.ctypes.data, words.size)
            else:
                for fn, args in plan:
                    fn(*args)
        rows = self._rows.get(B)
        if rows is None:
            rows = self._rows[B] = self.buf.logits[:B]
        return rows


class SlotDecoder:
    """Decode state in slots (see the module docstring): `alloc`, `step(slots, tokens)`, `free`."""

    def __init__(self, family: FamilyPlan):
        self.family = family
        self._free = list(range(family.capacity))  # a heap: the lowest free slot first
        self._used: set[int] = set()
        self._run_ids = getattr(family, "run_ids", None)  # the step on Python ints, if any

    @property
    def capacity(self) -> int:
        return self.family.capacity

    @property
    def active(self) -> int:
        return len(self._used)

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` slots at once (the server's max batch), keeping states."""
        old = self.family.capacity
        if capacity > old:
            self.family.allocate(capacity)
            for s in range(old, capacity):
                heapq.heappush(self._free, s)

    def alloc(self) -> int:
        """A free slot, its state zeroed (the arena doubles when every slot is taken)."""
        if not self._free:
            self.reserve(max(1, 2 * self.family.capacity))
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        self.family.clear(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise MulfreeError(f"slot {slot} is not in use")
        self._used.remove(slot)
        heapq.heappush(self._free, slot)

    def free_all(self) -> None:
        for s in list(self._used):
            self.free(s)

    def check(self, slots: Sequence[int], n_tokens: int) -> None:
        if len(slots) != n_tokens:
            raise MulfreeError(f"step got {n_tokens} tokens for {len(slots)} slots")
        if len(set(slots)) != len(slots):
            raise MulfreeError("step got a slot twice")
        bad = [s for s in slots if s not in self._used]
        if bad:
            raise MulfreeError(f"step on slot(s) not in use: {bad[:4]}")

    def step(self, slots: Sequence[int], tokens) -> np.ndarray:
        """Feed tokens[j] to slots[j] (tokens: ints, a list of them or an integer array of any
        shape, flattened); logits float32 [len(slots), vocab] (a buffer)."""
        ids = id_list(tokens)
        slots = [int(s) for s in slots]
        self.check(slots, len(ids))
        if not slots:
            raise MulfreeError("step needs at least one slot")
        self._check_ids(ids)
        if self._run_ids is not None:
            return self._run_ids(slots, ids)
        return self.family.run(slots, np.array(ids, dtype=np.int64))

    def _check_ids(self, tokens) -> None:
        # a NumPy lookup would wrap a negative id around instead of failing
        if isinstance(tokens, np.ndarray):
            lo, hi = int(tokens.min()), int(tokens.max())
        else:
            lo, hi = int(min(tokens)), int(max(tokens))
        if lo < 0 or hi >= self.family.vocab:
            bad = lo if lo < 0 else hi
            raise MulfreeError(f"token id {bad} is out of range for a vocabulary of {self.family.vocab}")

    def prefill(self, slot: int, tokens) -> np.ndarray:
        """Run a prompt into `slot` from a zero state; logits of its last token [vocab]
        (a buffer, overwritten by the next prefill)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self.check([slot], 1)
        if tokens.size == 0:
            raise MulfreeError("prefill needs at least one token")
        self._check_ids(tokens)
        self.family.clear(slot)
        return self.family.prefill(slot, tokens)


def id_list(tokens) -> list[int]:
    """Token ids as a flat list of Python ints: a list of ints as it is (the decode loop's
    case: no array op), else through NumPy (any integer array or nested sequence, flattened;
    a torch tensor through its `tolist`)."""
    if type(tokens) is list and all(type(t) is int for t in tokens):
        return tokens
    if type(tokens) is int:
        return [tokens]
    if hasattr(tokens, "tolist") and hasattr(tokens, "reshape"):  # a torch tensor or an ndarray
        flat = tokens.reshape(-1).tolist()
        if all(type(t) is int for t in flat):
            return flat
    return np.asarray(tokens, dtype=np.int64).reshape(-1).tolist()


def _ptr(a) -> int:
    return 0 if a is None else a.ctypes.data
