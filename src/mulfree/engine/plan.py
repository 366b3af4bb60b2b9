"""The fused decode step as a plan: a list of (compiled function, int/float args) on fixed buffers.

One owner for both decoders: `mulfree.engine.decode.Decoder` (torch tensors) and
`mulfree.engine.lite.LiteDecoder` (NumPy arrays, no torch import) build their step with
`fused_plan`, so the two run the same compiled calls in the same order on the same kinds of
buffers, and give the same logits bit for bit. Addresses come from `ptr(array)` (the caller's:
`Tensor.data_ptr` or `ndarray.ctypes.data`); every one points into an array the caller keeps.
Its spec is the torch path of `Decoder.step` (csrc/mf_decode.c's stages, stage by stage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A kernel call gets one thread per this many weights (at least one, at most `threads`): below
# it a call is a few microseconds and a second thread's fork/join costs about as much (the
# bundled model's layers). Chosen with benchmarks/bench_decode.py (docs/engine.md).
MIN_WEIGHTS_PER_THREAD = 262_144


@dataclass
class StepEnergy:
    """Estimated energy of one decode step per sequence (one generated token), from the ops and
    bytes the step runs (mulfree.energy counters) priced with an energy table."""

    table: str  # the energy table's name
    total_pj: float
    memory_pj: float  # of total_pj: weight bytes from DRAM, activations from cache
    dense_fp32_pj: float | None  # the same step with dense fp32 projections (None: L-Mul mode)

    @property
    def saving(self) -> float | None:
        """dense fp32 / this: how many times less energy the packed step takes."""
        return self.dense_fp32_pj / self.total_pj if self.dense_fp32_pj else None


@dataclass
class Linear:
    """One kernel call: norm weight(s) applied to the shared normalized input, packed weight."""

    norm_w: Any  # float32 [K]
    data: Any  # packed bytes in `layout`
    out_features: int
    in_features: int
    scale: float
    row_scales: Any | None
    layout: str = "tq2"  # "tq2" or "t81" (mulfree.ternary.packing): which kernel reads `data`


@dataclass
class Layer:
    """One HGRN-Bit block's weights as the decode step reads them (arrays: torch or NumPy)."""

    attn_norm: Any  # float32 [d]
    ifg: Linear | None  # i | f | g as one call (equal input norms, whole row blocks), else None
    i: Linear
    f: Linear
    g: Linear
    lb: Any | None  # float32 [E]: the forget gate's floor (None: layer 0 or no lower bound)
    one_minus_lb: Any | None
    g_norm: Any  # float32 [E]
    g_eps: float
    o: Linear
    mlp_norm: Any  # float32 [d]
    gate: Linear  # gate | up, [2I] outputs
    down: Linear

    def linears(self) -> tuple[Linear, ...]:
        return (self.i, self.f, self.g, self.o, self.gate, self.down)

    def map(self, fn: Callable[[Any], Any]) -> Layer:
        """The same layer with every array passed through `fn` (torch tensor -> NumPy view)."""
        lin = lambda x: None if x is None else map_linear(x, fn)  # noqa: E731
        opt = lambda a: None if a is None else fn(a)  # noqa: E731
        return Layer(fn(self.attn_norm), lin(self.ifg), lin(self.i), lin(self.f), lin(self.g),
                     opt(self.lb), opt(self.one_minus_lb), fn(self.g_norm), self.g_eps,
                     lin(self.o), fn(self.mlp_norm), lin(self.gate), lin(self.down))  # fmt: skip


def map_linear(lin: Linear, fn: Callable[[Any], Any]) -> Linear:
    rs = None if lin.row_scales is None else fn(lin.row_scales)
    return Linear(fn(lin.norm_w), fn(lin.data), lin.out_features, lin.in_features, lin.scale, rs,
                  lin.layout)


@dataclass
class Buffers:
    """The step's float32 scratch buffers, [capacity, n] each (torch tensors or NumPy arrays);
    a step on B sequences uses their first B rows (row j = the j-th slot stepped)."""

    x: Any  # residual stream [B, d]
    h: Any  # BitLinear input (normed x * norm weight) [B, d]
    y_ifg: Any  # [B, 3E]: i | f | g of the fused call
    y_i: Any
    y_f: Any
    y_g: Any
    t_e: Any  # [B, E]
    y_d: Any  # [B, d]
    y_gu: Any  # [B, 2I]: gate | up
    z_i: Any  # [B, I]
    logits: Any  # [B, vocab]
    h_f: Any  # separate f / g norm outputs when i/f/g run as three calls
    h_g: Any


# Projections a decoder runs as one call on their stacked rows (module-name suffixes): an
# MLGRU's i|f|g; a model class may name its own (`fused_projections`, e.g. BitNet's q|k|v).
MLGRU_FUSED = (("i_proj", "f_proj", "g_proj"),)


def choose_layouts(weights: list[tuple[str, int, int]], layout: str, isa: str | None,
                   fused: tuple[tuple[str, ...], ...] = MLGRU_FUSED) -> list[str]:  # fmt: skip
    """The in-memory layout of each ternary weight (name, out_features, in_features): `layout`
    "tq2" / "t81" for all, or "auto" = mulfree.kernels.dispatch.weight_layout per input width
    for kernels run at `isa`. The projections of a `fused` group (same name prefix) stay tq2
    unless every one of them has a multiple of 64 rows: t81 interleaves pairs of 32-row blocks,
    so only whole pairs stack into the one weight the decoder's call reads."""
    if layout not in ("auto", "tq2", "t81"):
        from mulfree.errors import MulfreeError

        raise MulfreeError(f"layout must be auto, tq2 or t81, not {layout!r}")
    picked: dict[int, str] = {}
    rows = {name: n for name, n, _ in weights}
    out = []
    for name, _, k in weights:
        lay = layout
        if layout == "auto":
            if k not in picked:
                from mulfree.kernels import dispatch

                picked[k] = dispatch.weight_layout(k, isa)
            lay = picked[k]
        if lay == "t81" and any(rows.get(sib, 0) % 64 for sib in _siblings(name, fused)):
            lay = "tq2"
        out.append(lay)
    return out


def _siblings(name: str, fused: tuple[tuple[str, ...], ...]) -> list[str]:
    """The names of the fused group `name` belongs to (itself included; [] outside a group)."""
    for group in fused:
        for suffix in group:
            if name.endswith(suffix):
                prefix = name[: len(name) - len(suffix)]
                return [prefix + s for s in group]
    return []


def t81_route(isa: str, has_t81: bool) -> str:
    """How a decoder at ISA level `isa` (a resolved name) runs its t81 weights: "kernel" (calls
    at `isa`: AVX-512 with VBMI, or "scalar", the t81 spec), "copies" (a compiled level without
    the t81 kernel, e.g. AVX2 on a model laid out for VBMI: the step reads tq2 copies,
    `tq2_copies`), or "none" (no t81 weight, or the torch level)."""
    if not has_t81 or isa == "torch":
        return "none"
    from mulfree.kernels import dispatch

    return "kernel" if isa == "scalar" or dispatch.t81_runs_simd(isa) else "copies"


def torch_linear(lin: Linear, isas: dict[str, str], isa: str, rows: int) -> tuple[Callable, str]:
    """(op, ISA level name) of a decoder's torch-path kernel call on `lin` for `rows` tokens:
    mulfree.kernels.ternary's t81_linear at isas["t81"] (default `isa`) or tq2_linear at its
    batch family's level; torch ops, which the energy counter prices."""
    from mulfree import kernels
    from mulfree.kernels import ternary as K_

    if lin.layout == "t81":
        return K_.t81_linear, isas.get("t81", isa)
    return K_.tq2_linear, isas[kernels.ternary_family(rows)]


def tq2_copies(C, linears: list[Linear]) -> tuple[dict[int, Linear], Any]:
    """A tq2 copy of every t81 weight in `linears` (NumPy arrays; C.t81_to_tq2, bytes in one new
    `mulfree.kernels.memory.Arena`): for a step at an ISA level without the t81 kernel, e.g.
    AVX2 on a model laid out for AVX-512 VBMI. Returns ({id(original): copy}, the arena to keep
    alive, or None when nothing was t81)."""
    import numpy as np

    from mulfree.kernels.memory import ALIGN, Arena

    todo = list({id(x): x for x in linears if x.layout == "t81"}.values())
    if not todo:
        return {}, None
    offs, total = {}, 0
    for x in todo:
        offs[id(x)] = total
        total += -(-x.data.size // ALIGN) * ALIGN
    arena = Arena(total)
    new: dict[int, Linear] = {}
    for x in todo:
        data = np.frombuffer(arena.buffer(offs[id(x)], x.data.size), dtype=np.uint8)
        bad = C.t81_to_tq2(x.data.ctypes.data, x.out_features, x.in_features, data.ctypes.data)
        if bad:
            raise ValueError(f"corrupt t81 weight: {bad} byte(s) >= 81")
        new[id(x)] = Linear(x.norm_w, data, x.out_features, x.in_features, x.scale,
                            x.row_scales, "tq2")  # fmt: skip
    return new, arena


def tq2_layers(C, layers: list[Layer], head: Linear) -> tuple[list[Layer], Linear, Any]:
    """`layers` and `head` with every t81 weight replaced by a tq2 copy (`tq2_copies`). Views
    stay views: the parts of a fused i|f|g read the copy of the fused weight. Returns (layers,
    head, the arena to keep alive, or None when nothing was t81)."""

    def t81s(L: Layer):
        if L.ifg is not None and L.ifg.layout == "t81":
            return [L.ifg] + [x for x in (L.o, L.gate, L.down) if x.layout == "t81"]
        return [x for x in L.linears() if x.layout == "t81"]

    new, arena = tq2_copies(C, [x for L in layers for x in t81s(L)] + [head])
    if arena is None:
        return layers, head, None
    out = []
    for L in layers:
        lin = {k: new.get(id(getattr(L, k)), getattr(L, k)) for k in ("i", "f", "g", "o", "gate", "down")}
        ifg = L.ifg
        if ifg is not None and id(ifg) in new:  # i, f, g: views of the fused copy, in order
            ifg, start = new[id(ifg)], 0
            for k in ("i", "f", "g"):
                part = getattr(L, k)
                lin[k] = Linear(part.norm_w, ifg.data[start : start + part.data.size],
                                part.out_features, part.in_features, part.scale, part.row_scales,
                                "tq2")  # fmt: skip
                start += part.data.size
        out.append(Layer(L.attn_norm, ifg, lin["i"], lin["f"], lin["g"], L.lb, L.one_minus_lb,
                         L.g_norm, L.g_eps, lin["o"], L.mlp_norm, lin["gate"], lin["down"]))  # fmt: skip
    return out, new.get(id(head), head), arena


# Embedding table formats of the plan's lookup op (csrc/mf_decode.c, dec_embed)
EMBED_F32, EMBED_INT8, EMBED_INT4 = 0, 1, 2


@dataclass
class Embedding:
    """An embedding table as the step's first compiled op reads it (`embed_call`): float32
    [V, d] (fmt EMBED_F32, step None), int8 [V, d] + float32 step [V] (EMBED_INT8) or int4
    codes uint8 [V, 16 G] + float32 step [V, G] (EMBED_INT4; engine/format.py's layouts), all
    C-contiguous. Its spec is engine.lite.embedding_lookup (the same rows, bit for bit)."""

    fmt: int
    table: Any
    step: Any | None
    vocab: int
    dim: int

    @property
    def groups(self) -> int:
        return 0 if self.fmt != EMBED_INT4 else int(self.step.shape[1])


def embed_call(C, emb: Embedding, ids, x, B: int, ptr: Callable[[Any], int]) -> tuple:
    """The lookup of B token ids (int64 buffer `ids`) into rows of `x` as a (C function, args)
    pair: the op a plan_run step starts with, so the step's Python does no array op."""
    return C.dec_embed, (ptr(ids), int(B), emb.vocab, emb.dim, emb.fmt, ptr(emb.table),
                         ptr(emb.step), emb.groups, ptr(x))  # fmt: skip


def runs_of(slots) -> tuple[tuple[int, int, int], ...]:
    """The slots of one step as contiguous runs (row, slot, length): row j of the step's buffers
    holds slot slots[j]; a run is a stretch where consecutive rows hold consecutive slots, so
    one compiled call advances its recurrent states in place."""
    out, row = [], 0
    for j in range(1, len(slots) + 1):
        if j == len(slots) or slots[j] != slots[j - 1] + 1:
            out.append((row, int(slots[row]), j - row))
            row = j
    return tuple(out)


def lower_bounds(lb):
    """The forget-gate floors [L, d] float32 from the model's lower_bounds parameter (a NumPy
    array): softmax over layers, cumsum, minus row 0, as HGRNBitModel.forward computes them.
    Computed in float64 and rounded once, here for both decoders, so they hold the same bits
    (torch's float32 softmax may differ from this by an ulp: within the Decoder's float
    rounding of the model, see mulfree.engine.decode)."""
    import numpy as np

    x = np.asarray(lb, dtype=np.float64)
    e = np.exp(x - x.max(0, keepdims=True))
    s = e / e.sum(0, keepdims=True)
    return np.ascontiguousarray((np.cumsum(s, 0) - s[0]).astype(np.float32))


def threads_for(lin: Linear, threads: int, min_weights: int = MIN_WEIGHTS_PER_THREAD,
                rows: int = 1) -> int:  # fmt: skip
    """Kernel threads for one projection: one per `min_weights` weights, at least one, at most
    `threads` (small weights on one thread: waking a worker costs more than it saves). `rows`
    (the call's tokens) does not change the rule: scaling threads with the batch was tried and
    could not be shown faster on the shared 2-core machine (docs/engine.md, "Threads")."""
    return max(1, min(threads, lin.out_features * lin.in_features // min_weights))


def fused_plan(C, buf: Buffers, states: list, layers: list[Layer], final_norm, head: Linear,
               eps: float, bl_eps: float, threads: Callable[[Linear, int], int], kernel_isa: int,
               stage_isa: int, ptr: Callable[[Any], int], B: int | None = None,
               runs: tuple[tuple[int, int, int], ...] | None = None, head_rows: str = "all",
               head_isa: int | None = None, t81_isa: int | None = None
               ) -> list[tuple[Callable, tuple]]:  # fmt: skip
    """The step for B sequences as (C function, args) pairs: per layer attn_norm + BitLinear
    norms, i/f/g kernel(s), MLGRU stage(s), o kernel, mlp norms, gate|up kernel, GLU stage, down
    kernel; then the final norm and the head. Every call works on the first B rows of `buf`
    (default B: all its rows) except the MLGRU stage, which also advances the recurrent states:
    `states[l]` is layer l's state arena [capacity, E] and `runs` ((row, slot, length), see
    `runs_of`; default: rows 0..B-1 are slots 0..B-1) says which arena rows each stretch of buffer
    rows advances, one stage call per run, in order. Runs may name one slot several times: rows
    t = 0..T-1 as T runs (t, slot, 1) are T tokens of one sequence, each stage call advancing
    the state by one token (a prompt through batched kernels, see `HGRNFusedPlan.prefill`).
    head_rows: "all" (logits of every row), "last" (the final norm and head on row B-1 only,
    logits in row 0; `head_isa` its kernel level) or "none" (no head: a prompt's inner chunk).
    threads(lin, rows): the kernel threads for a call on `rows` rows. kernel_isa / stage_isa:
    the ISA levels (csrc/mf_common.h's integers) of the ternary kernel calls and of the
    elementwise decode stages (mulfree.kernels.dispatch picks them per family). A Linear in
    the t81 layout runs C.t81_linear at `t81_isa` (default: the call's level), one in tq2
    C.tq2_linear at the family's level: the same arguments, the same bits."""
    B = buf.x.shape[0] if B is None else int(B)
    runs = ((0, 0, B),) if runs is None else runs
    if sum(n for _, _, n in runs) != B:
        raise ValueError(f"runs {runs} do not cover {B} rows")
    d = buf.x.shape[1]
    E, inter = buf.y_i.shape[1], buf.z_i.shape[1]
    F32 = 4  # bytes per float32: the plan's addresses are byte addresses

    def kernel(lin: Linear, u, out, rows: int = B, isa: int = kernel_isa):
        fn = C.tq2_linear
        if lin.layout == "t81":
            fn, isa = C.t81_linear, isa if t81_isa is None else t81_isa
        elif lin.layout != "tq2":
            raise ValueError(f"unknown weight layout {lin.layout!r}")
        return fn, (ptr(u), rows, lin.in_features, ptr(lin.data), lin.out_features,
                              float(lin.scale), ptr(lin.row_scales), ptr(out), 0,
                              threads(lin, rows), isa)  # fmt: skip

    plan, pending = [], 0  # pending: the residual add folded into the next norm
    for L, state in zip(layers, states, strict=True):
        if L.ifg is not None:
            plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(L.attn_norm), eps,
                                       bl_eps, ptr(L.ifg.norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
            plan.append(kernel(L.ifg, buf.h, buf.y_ifg))
            base, stride = ptr(buf.y_ifg), 3 * E  # rows [i | f | g], E floats each
            yi, yf, yg = base, base + F32 * E, base + 2 * F32 * E
        else:
            plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(L.attn_norm), eps,
                                       bl_eps, ptr(L.i.norm_w), ptr(buf.h),
                                       ptr(L.f.norm_w), ptr(buf.h_f),
                                       ptr(L.g.norm_w), ptr(buf.h_g))))  # fmt: skip
            plan.append(kernel(L.i, buf.h, buf.y_i))
            plan.append(kernel(L.f, buf.h_f, buf.y_f))
            plan.append(kernel(L.g, buf.h_g, buf.y_g))
            yi, yf, yg, stride = ptr(buf.y_i), ptr(buf.y_f), ptr(buf.y_g), E
        for row, slot, n in runs:  # rows [row, row + n) advance arena rows [slot, slot + n)
            y, s, t = F32 * row * stride, F32 * slot * E, F32 * row * E
            plan.append((C.dec_mlgru, (yi + y, yf + y, yg + y, stride, n, E, ptr(L.lb),
                                       ptr(L.one_minus_lb), ptr(state) + s, ptr(L.g_norm),
                                       L.g_eps, ptr(L.o.norm_w), bl_eps, ptr(buf.t_e) + t,
                                       stage_isa)))  # fmt: skip
        plan.append(kernel(L.o, buf.t_e, buf.y_d))
        plan.append((C.dec_norm2, (ptr(buf.x), ptr(buf.y_d), B, d, ptr(L.mlp_norm), eps,
                                   bl_eps, ptr(L.gate.norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
        plan.append(kernel(L.gate, buf.h, buf.y_gu))
        plan.append((C.dec_glu, (ptr(buf.y_gu), B, inter, ptr(L.down.norm_w), bl_eps,
                                 ptr(buf.z_i), stage_isa)))  # fmt: skip
        plan.append(kernel(L.down, buf.z_i, buf.y_d))
        pending = ptr(buf.y_d)
    if head_rows == "all":
        plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(final_norm), eps, bl_eps,
                                   ptr(head.norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
        plan.append(kernel(head, buf.h, buf.logits))
    elif head_rows == "last":  # row B-1's residual add, norms and head; h and logits row 0
        last = F32 * (B - 1) * d
        plan.append((C.dec_norm2, (ptr(buf.x) + last, pending + last, 1, d, ptr(final_norm), eps,
                                   bl_eps, ptr(head.norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
        plan.append(kernel(head, buf.h, buf.logits, 1, kernel_isa if head_isa is None else head_isa))
    elif head_rows != "none":
        raise ValueError(f"head_rows must be all, last or none, not {head_rows!r}")
    return plan


# --- the plan as one compiled call (csrc/mf_plan.c) -------------------------------------------
# Kept apart from fused_plan on purpose: it only re-encodes the list fused_plan returns, so the
# decoders can switch to `C.plan_run(words.ctypes.data, words.size)` without any other change.
def encode_plan(C, plan: list[tuple[Callable, tuple]]):
    """The plan as one int64 NumPy array for `C.plan_run(address, len)`, which runs the same
    calls in the same order in one C call (the same functions the Python entry points run:
    the same bits). Per call: [op id, slot count, slots...], the slots in the order of the op's
    format (`C.plan_ops()`): addresses and ints as they are, floats ('d') as the bit pattern of
    the float64. The array holds addresses only: the caller keeps the plan's arrays alive."""
    import numpy as np

    ops = {name: (i, fmt) for i, (name, fmt) in enumerate(C.plan_ops())}
    words: list[int] = []
    for fn, args in plan:
        name = getattr(fn, "__name__", repr(fn))
        if name not in ops:
            raise ValueError(f"encode_plan: {name} is not an op of plan_run ({', '.join(ops)})")
        op, fmt = ops[name]
        if len(args) != len(fmt):
            raise ValueError(f"encode_plan: {name} takes {len(fmt)} arguments, got {len(args)}")
        words += [op, len(fmt)]
        for f, a in zip(fmt, args, strict=True):
            words.append(int(np.float64(a).view(np.int64)) if f == "d" else int(a))
    return np.array(words, dtype=np.int64)
