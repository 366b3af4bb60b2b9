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

# A kernel call gets one thread per this many weights (at least one, at most `threads`).
# Measured with benchmarks/bench_decode.py on the idle 2-core dev machine (libgomp's default wait
# policy): 370M decode 71.9 tok/s with 3M (only the head on 2 threads), 90.3 with 500K, 91.8 with
# every call on 2 threads; 1.3B 27.8 / 40.5 / 41.2. Below ~256K weights (the bundled model's
# layers) a call is a few microseconds and a second thread's fork/join costs about as much.
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
    data: Any  # tq2 bytes
    out_features: int
    in_features: int
    scale: float
    row_scales: Any | None
    nnz: int | None = None  # for the energy counter, computed on first counted call


@dataclass
class Buffers:
    """The step's float32 buffers, [batch, n] each (torch tensors or NumPy arrays)."""

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


def threads_for(lin: Linear, threads: int, min_weights: int = MIN_WEIGHTS_PER_THREAD) -> int:
    """Kernel threads for one projection: small weights on one thread (waking a worker costs
    more than it saves)."""
    return max(1, min(threads, lin.out_features * lin.in_features // min_weights))


def fused_plan(C, buf: Buffers, states: list, layers: list[dict], final_norm, head: Linear,
               eps: float, bl_eps: float, threads: Callable[[Linear], int], kernel_isa: int,
               stage_isa: int, ptr: Callable[[Any], int]) -> list[tuple[Callable, tuple]]:  # fmt: skip
    """The step as (C function, args) pairs: per layer attn_norm + BitLinear norms, i/f/g
    kernel(s), MLGRU stage, o kernel, mlp norms, gate|up kernel, GLU stage, down kernel; then
    the final norm and the head. `layers[i]` holds attn_norm, ifg (a fused Linear or None),
    i/f/g/o/gate/down (Linear), lb / one_minus_lb (or None), g_norm, g_eps, mlp_norm.
    kernel_isa / stage_isa: the ISA levels (csrc/mf_common.h's integers) of the ternary kernel
    calls and of the elementwise decode stages (mulfree.kernels.dispatch picks them per family)."""
    B, d = buf.x.shape
    E, inter = buf.y_i.shape[1], buf.z_i.shape[1]

    def kernel(lin: Linear, u, out):
        return C.tq2_linear, (ptr(u), u.shape[0], lin.in_features, ptr(lin.data), lin.out_features,
                              float(lin.scale), ptr(lin.row_scales), ptr(out), 0, threads(lin), kernel_isa)  # fmt: skip

    plan, pending = [], 0  # pending: the residual add folded into the next norm
    for L, state in zip(layers, states, strict=True):
        if L["ifg"] is not None:
            plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(L["attn_norm"]), eps,
                                       bl_eps, ptr(L["ifg"].norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
            plan.append(kernel(L["ifg"], buf.h, buf.y_ifg))
            base, stride = ptr(buf.y_ifg), 3 * E  # rows [i | f | g], E floats each
            yi, yf, yg = base, base + 4 * E, base + 8 * E  # byte addresses (float32)
        else:
            plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(L["attn_norm"]), eps,
                                       bl_eps, ptr(L["i"].norm_w), ptr(buf.h),
                                       ptr(L["f"].norm_w), ptr(buf.h_f),
                                       ptr(L["g"].norm_w), ptr(buf.h_g))))  # fmt: skip
            plan.append(kernel(L["i"], buf.h, buf.y_i))
            plan.append(kernel(L["f"], buf.h_f, buf.y_f))
            plan.append(kernel(L["g"], buf.h_g, buf.y_g))
            yi, yf, yg, stride = ptr(buf.y_i), ptr(buf.y_f), ptr(buf.y_g), E
        plan.append((C.dec_mlgru, (yi, yf, yg, stride, B, E, ptr(L["lb"]), ptr(L["one_minus_lb"]),
                                   ptr(state), ptr(L["g_norm"]), L["g_eps"], ptr(L["o"].norm_w),
                                   bl_eps, ptr(buf.t_e), stage_isa)))  # fmt: skip
        plan.append(kernel(L["o"], buf.t_e, buf.y_d))
        plan.append((C.dec_norm2, (ptr(buf.x), ptr(buf.y_d), B, d, ptr(L["mlp_norm"]), eps,
                                   bl_eps, ptr(L["gate"].norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
        plan.append(kernel(L["gate"], buf.h, buf.y_gu))
        plan.append((C.dec_glu, (ptr(buf.y_gu), B, inter, ptr(L["down"].norm_w), bl_eps,
                                 ptr(buf.z_i), stage_isa)))  # fmt: skip
        plan.append(kernel(L["down"], buf.z_i, buf.y_d))
        pending = ptr(buf.y_d)
    plan.append((C.dec_norm2, (ptr(buf.x), pending, B, d, ptr(final_norm), eps, bl_eps,
                               ptr(head.norm_w), ptr(buf.h), 0, 0, 0, 0)))  # fmt: skip
    plan.append(kernel(head, buf.h, buf.logits))
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
