"""Launchers of the fused hgrn_bit decode stages of the compiled core (csrc/mf_decode.c) as torch
dispatcher ops (kernels._ops.define_op: no custom_op wrapper cost per call), and the core's
decode functions over them for a counted step.

    torch.ops.mulfree.dec_norm2   x += add; out_c = rmsnorm(rmsnorm(x; eps1) * w1; eps2) * w2_c
    torch.ops.mulfree.dec_mlgru   gates, h = i + f h, rmsnorm(g) * gw * silu(h), o_proj's norm
    torch.ops.mulfree.dec_glu     silu(gate) * up, then down_proj's norm

Each op checks shapes and dtypes before the C call (one MulfreeError), has a fake
implementation (tracing and compile see it) and a cost formula registered with the energy
counter (`mulfree.energy.counter.register_op_cost`): the arithmetic of its scalar C spec
(`mulfree.engine.decode_ref` is the readable twin), counted per row, so a counted decode step
prices what runs. The formulas, with R(n) = one RMS of n floats (`inv_rms`: n float64 squares
and n float64 adds, the mean's float64 division, + eps, sqrtf and 1 / that):
    dec_norm2  per row: n adds when `add` is given; R(n), 2n multiplies; R(n); 2n multiplies
               per output (one to three)
    dec_mlgru  per row and element: 3 exp, 3 divisions (sigmoid, two silu), 5 adds and 7
               multiplies (+1 of each with the forget gate's lower bound); per row 2 R(E)
    dec_glu    per row and element: 1 exp, 1 division, 1 add (silu), 3 multiplies; per row R(I)
A sign flip (the -v of exp(-v)) is not counted: it is a bit, not an operation.
Bytes: norm weights and lower bounds are weight reads, the rest activation reads, the outputs
(and the advanced state and residual) activation writes.

`OpsCore` has the compiled core's decode functions (`tq2_linear`, `dec_norm2`, `dec_mlgru`,
`dec_glu`) with the same argument lists, but addresses as `Ref`s (a tensor and a byte offset)
instead of ints: `mulfree.engine.plan.fused_plan(OpsCore(), ..., ptr=Ref.of)` builds the same
calls in the same order as on the real core, each one a custom op the counter sees.
"""

from __future__ import annotations

import numpy as np
import torch

from mulfree.energy.counter import register_op_cost
from mulfree.errors import MulfreeError
from mulfree.kernels._core import core
from mulfree.kernels._ops import define_op
from mulfree.kernels.ternary import tq2_nbytes

F32 = torch.float32


def _lib():
    C = core()
    if C is None:  # the fused step needs the core; callers check fused_step_applies first
        raise RuntimeError("mulfree._C is not available")
    return C


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _rows(name: str, what: str, t: torch.Tensor, B: int, n: int, row_stride: int | None = None):
    """t must be float32 [B, n] with unit column stride and row stride n (or `row_stride`)."""
    rs = n if row_stride is None else row_stride
    if t.dtype != F32 or t.dim() != 2 or tuple(t.shape) != (B, n) or (
        B > 1 and t.stride(0) != rs) or (n > 1 and t.stride(1) != 1):  # fmt: skip
        raise MulfreeError(f"{name}: {what} must be float32 [{B}, {n}] rows {rs} floats apart, "
                           f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}")  # fmt: skip


def _vec(name: str, what: str, t: torch.Tensor | None, n: int, optional: bool = False) -> None:
    if t is None and optional:
        return
    if t is None or t.dtype != F32 or t.numel() != n or not t.is_contiguous():
        got = "None" if t is None else f"{t.dtype} {tuple(t.shape)}"
        raise MulfreeError(f"{name}: {what} must be contiguous float32 [{n}], got {got}")


# --- dec_norm2 -----------------------------------------------------------------------------------
def _check_norm2(x, add, w1, w2, out, w2_b, out_b, w2_c, out_c) -> None:
    if x.dim() != 2:
        raise MulfreeError(f"dec_norm2: x must be [B, n], got {tuple(x.shape)}")
    B, n = x.shape
    _rows("dec_norm2", "x", x, B, n)
    if add is not None:
        _rows("dec_norm2", "add", add, B, n)
    _vec("dec_norm2", "w1", w1, n)
    for w, o, tag in ((w2, out, ""), (w2_b, out_b, "_b"), (w2_c, out_c, "_c")):
        if (w is None) != (o is None) or (tag == "" and w is None):
            raise MulfreeError(f"dec_norm2: w2{tag} and out{tag} come together (w2, out required)")
        if o is not None:
            _vec("dec_norm2", f"w2{tag}", w, n)
            _rows("dec_norm2", f"out{tag}", o, B, n)


def _dec_norm2(x: torch.Tensor, add: torch.Tensor | None, w1: torch.Tensor, eps1: float,
               eps2: float, w2: torch.Tensor, out: torch.Tensor, w2_b: torch.Tensor | None,
               out_b: torch.Tensor | None, w2_c: torch.Tensor | None,
               out_c: torch.Tensor | None) -> None:  # fmt: skip
    """x [B, n] += add; out = rmsnorm(rmsnorm(x; eps1) * w1; eps2) * w2 (and out_b, out_c)."""
    _check_norm2(x, add, w1, w2, out, w2_b, out_b, w2_c, out_c)
    if x.numel():
        _lib().dec_norm2(x.data_ptr(), _ptr(add), x.shape[0], x.shape[1], w1.data_ptr(),
                         float(eps1), float(eps2), w2.data_ptr(), out.data_ptr(), _ptr(w2_b),
                         _ptr(out_b), _ptr(w2_c), _ptr(out_c))  # fmt: skip


def _dec_norm2_fake(x, add, w1, eps1, eps2, w2, out, w2_b, out_b, w2_c, out_c) -> None:
    _check_norm2(x, add, w1, w2, out, w2_b, out_b, w2_c, out_c)


define_op("dec_norm2", _dec_norm2, _dec_norm2_fake, mutates_args=("x", "out", "out_b", "out_c"))


# --- dec_mlgru -----------------------------------------------------------------------------------
def _check_mlgru(yi, yf, yg, lb, olb, state, gw, ow, out) -> None:
    if yi.dim() != 2:
        raise MulfreeError(f"dec_mlgru: yi must be [B, E], got {tuple(yi.shape)}")
    B, E = yi.shape
    ys = yi.stride(0) if B > 1 else E
    for what, t in (("yi", yi), ("yf", yf), ("yg", yg)):
        _rows("dec_mlgru", what, t, B, E, ys)
    if (lb is None) != (olb is None):
        raise MulfreeError("dec_mlgru: lb and olb (1 - lb) come together")
    _vec("dec_mlgru", "lb", lb, E, optional=True)
    _vec("dec_mlgru", "olb", olb, E, optional=True)
    _rows("dec_mlgru", "state", state, B, E)
    _vec("dec_mlgru", "gw", gw, E)
    _vec("dec_mlgru", "ow", ow, E)
    _rows("dec_mlgru", "out", out, B, E)


def _dec_mlgru(yi: torch.Tensor, yf: torch.Tensor, yg: torch.Tensor, lb: torch.Tensor | None,
               olb: torch.Tensor | None, state: torch.Tensor, gw: torch.Tensor, g_eps: float,
               ow: torch.Tensor, o_eps: float, out: torch.Tensor, isa: int) -> None:  # fmt: skip
    """The MLGRU after i/f/g (rows [B, E], one row stride): state advances; out [B, E] is
    o_proj's normed input. `isa`: csrc/mf_common.h's level (scalar libm or AVX2 exp)."""
    _check_mlgru(yi, yf, yg, lb, olb, state, gw, ow, out)
    B, E = yi.shape
    if B:
        _lib().dec_mlgru(yi.data_ptr(), yf.data_ptr(), yg.data_ptr(), yi.stride(0) if B > 1 else E,
                         B, E, _ptr(lb), _ptr(olb), state.data_ptr(), gw.data_ptr(),
                         float(g_eps), ow.data_ptr(), float(o_eps), out.data_ptr(), int(isa))  # fmt: skip


def _dec_mlgru_fake(yi, yf, yg, lb, olb, state, gw, g_eps, ow, o_eps, out, isa) -> None:
    _check_mlgru(yi, yf, yg, lb, olb, state, gw, ow, out)


define_op("dec_mlgru", _dec_mlgru, _dec_mlgru_fake, mutates_args=("state", "out"))


# --- dec_glu -------------------------------------------------------------------------------------
def _check_glu(gu, dw, out) -> None:
    if out.dim() != 2:
        raise MulfreeError(f"dec_glu: out must be [B, I], got {tuple(out.shape)}")
    B, inter = out.shape
    _rows("dec_glu", "gu", gu, B, 2 * inter)
    _vec("dec_glu", "dw", dw, inter)
    _rows("dec_glu", "out", out, B, inter)


def _dec_glu(gu: torch.Tensor, dw: torch.Tensor, d_eps: float, out: torch.Tensor,
             isa: int) -> None:  # fmt: skip
    """out [B, I] = down_proj's normed input of silu(gate) * up, gu [B, 2I] = [gate | up]."""
    _check_glu(gu, dw, out)
    if out.shape[0]:
        _lib().dec_glu(gu.data_ptr(), out.shape[0], out.shape[1], dw.data_ptr(), float(d_eps),
                       out.data_ptr(), int(isa))  # fmt: skip


def _dec_glu_fake(gu, dw, d_eps, out, isa) -> None:
    _check_glu(gu, dw, out)


define_op("dec_glu", _dec_glu, _dec_glu_fake, mutates_args=("out",))


# --- the cost formulas (see the module docstring) ------------------------------------------------
def _rms_cost(c, rows: int, n: int) -> None:
    """R(n) on `rows` rows: inv_rms in csrc/mf_decode.c."""
    c[("fp_mul", 64)] += rows * n
    c[("fp_add", 64)] += rows * n
    c[("div", 64)] += rows
    c[("fp_add", 32)] += rows
    c[("sqrt", 32)] += rows
    c[("div", 32)] += rows


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _norm2_cost(counter, args, kwargs, out) -> None:
    x, add, w1, _, _, w2, o, w2_b, o_b, w2_c, o_c = _args(args, kwargs, _NORM2)
    B, n = x.shape
    outs = sum(t is not None for t in (o, o_b, o_c))
    c, b = counter.counts, counter.bytes
    if add is not None:
        c[("fp_add", 32)] += B * n
    _rms_cost(c, 2 * B, n)
    c[("fp_mul", 32)] += 2 * B * n * (1 + outs)
    b["weight_read"] += _nbytes(w1, w2, w2_b, w2_c)
    b["act_read"] += _nbytes(x, add)
    b["act_write"] += _nbytes(x, o, o_b, o_c)


def _mlgru_cost(counter, args, kwargs, out) -> None:
    yi, yf, yg, lb, olb, state, gw, _, ow, _, o, _ = _args(args, kwargs, _MLGRU)
    B, E = yi.shape
    n, extra = B * E, int(lb is not None)
    c, b = counter.counts, counter.bytes
    c[("exp", 32)] += 3 * n
    c[("div", 32)] += 3 * n
    c[("fp_add", 32)] += (5 + extra) * n
    c[("fp_mul", 32)] += (7 + extra) * n
    _rms_cost(c, 2 * B, E)
    b["weight_read"] += _nbytes(lb, olb, gw, ow)
    b["act_read"] += _nbytes(yi, yf, yg, state)
    b["act_write"] += _nbytes(state, o)


def _glu_cost(counter, args, kwargs, out) -> None:
    gu, dw, _, o, _ = _args(args, kwargs, _GLU)
    B, inter = o.shape
    n = B * inter
    c, b = counter.counts, counter.bytes
    c[("exp", 32)] += n
    c[("div", 32)] += n
    c[("fp_add", 32)] += n
    c[("fp_mul", 32)] += 3 * n
    _rms_cost(c, B, inter)
    b["weight_read"] += _nbytes(dw)
    b["act_read"] += _nbytes(gu)
    b["act_write"] += _nbytes(o)


_NORM2 = ("x", "add", "w1", "eps1", "eps2", "w2", "out", "w2_b", "out_b", "w2_c", "out_c")
_MLGRU = ("yi", "yf", "yg", "lb", "olb", "state", "gw", "g_eps", "ow", "o_eps", "out", "isa")
_GLU = ("gu", "dw", "d_eps", "out", "isa")


def _args(args, kwargs, names) -> list:
    """An op call's arguments in schema order (positional, then by name)."""
    return [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]


register_op_cost("mulfree::dec_norm2", _norm2_cost)
register_op_cost("mulfree::dec_mlgru", _mlgru_cost)
register_op_cost("mulfree::dec_glu", _glu_cost)


# --- the core's decode functions over the ops ----------------------------------------------------
class Ref:
    """An address as a tensor and a byte offset into it: what `OpsCore` takes where the
    compiled core takes an int (`ptr + nbytes` moves it, as fused_plan does with ints)."""

    __slots__ = ("t", "off")

    def __init__(self, t: torch.Tensor, off: int = 0):
        self.t, self.off = t, int(off)

    @staticmethod
    def of(a) -> Ref | int:
        """fused_plan's `ptr`: an array (torch or NumPy, the same memory) -> Ref; None -> 0."""
        if a is None:
            return 0
        if isinstance(a, torch.Tensor):
            return Ref(a)
        with torch.inference_mode(False):  # an ordinary tensor (costs read version counters)
            return Ref(torch.from_numpy(np.asarray(a)))

    def __add__(self, nbytes: int) -> Ref:
        return Ref(self.t, self.off + int(nbytes))

    __radd__ = __add__

    def view(self, shape: tuple[int, ...], row_stride: int | None = None) -> torch.Tensor:
        """The tensor at this address: contiguous `shape`, or [B, n] rows `row_stride` apart."""
        flat = self.t.reshape(-1)  # a view: the plan's arrays are contiguous
        start = self.off // flat.element_size()
        if row_stride is None:
            return flat[start : start + int(np.prod(shape))].view(shape)
        return flat.as_strided(shape, (row_stride, 1), flat.storage_offset() + start)


def _opt(r, shape) -> torch.Tensor | None:
    return None if isinstance(r, int) and r == 0 else r.view(shape)


def _ternary_op(name: str):
    """OpsCore's entry for the compiled linear `name` (tq2_linear / t81_linear), as its op."""

    def call(x, M, K, w, N, w_scale, row_scales, out, acc, threads, isa) -> None:
        if not (isinstance(acc, int) and acc == 0):
            raise MulfreeError(f"OpsCore.{name}: the int32 accumulators are not an op output")
        getattr(torch.ops.mulfree, name)(x.view((M, K)), w.view((tq2_nbytes(N, K),)), N,
                                         float(w_scale), int(threads), int(isa),
                                         _opt(row_scales, (N,)), out.view((M, N)))  # fmt: skip

    call.__name__ = call.__qualname__ = name
    return staticmethod(call)


class OpsCore:
    """The compiled core's decode entry points (see csrc/mf_decode.c and csrc/mf_ternary.c for
    the argument lists) with `Ref` addresses, each running as its torch custom op: the per-call
    twin of the plan runner, visible to torch's dispatch (and so to the energy counter)."""

    tq2_linear = _ternary_op("tq2_linear")
    t81_linear = _ternary_op("t81_linear")  # tq2_linear's arguments, t81 weights

    @staticmethod
    def dec_norm2(x, add, B, n, w1, eps1, eps2, w2, out, w2_b, out_b, w2_c, out_c) -> None:
        rows, vec = (B, n), (n,)
        torch.ops.mulfree.dec_norm2(x.view(rows), _opt(add, rows), w1.view(vec), eps1, eps2,
                                    w2.view(vec), out.view(rows), _opt(w2_b, vec),
                                    _opt(out_b, rows), _opt(w2_c, vec), _opt(out_c, rows))  # fmt: skip

    @staticmethod
    def dec_mlgru(yi, yf, yg, ys, B, E, lb, olb, state, gw, g_eps, ow, o_eps, out, isa) -> None:
        rows, vec = (B, E), (E,)
        torch.ops.mulfree.dec_mlgru(yi.view(rows, ys), yf.view(rows, ys), yg.view(rows, ys),
                                    _opt(lb, vec), _opt(olb, vec), state.view(rows),
                                    gw.view(vec), g_eps, ow.view(vec), o_eps, out.view(rows),
                                    int(isa))  # fmt: skip

    @staticmethod
    def dec_glu(gu, B, inter, dw, d_eps, out, isa) -> None:
        torch.ops.mulfree.dec_glu(gu.view((B, 2 * inter)), dw.view((inter,)), d_eps,
                                  out.view((B, inter)), int(isa))  # fmt: skip
