"""L-Mul as vectorized torch ops, with autograd. Must equal `mulfree.lmul.reference` bit for bit.

Public functions: `lmul` (elementwise, broadcasting) and `lmatmul` (torch.matmul batching
semantics, every product an L-Mul, accumulation in a documented order and dtype).
The bit-level work happens on integer views of the operands: int64 for float32 (sums of two
32-bit patterns overflow int32), int32 for the 16- and 8-bit formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mulfree import energy
from mulfree.errors import MulfreeError
from mulfree.kernels import lmul as KL
from mulfree.lmul import fast
from mulfree.lmul.formats import FloatFormat, check_mantissa_bits, get_format, offset_exponent
from mulfree.lmul.reference import MODES

ACC_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e4m3fn)

# Upper bound on the number of products materialized at once by the torch L-Matmul path.
_CHUNK_ELEMENTS = 1 << 22


# --- bit views ---------------------------------------------------------------------------------


def _work_dtype(f: FloatFormat) -> torch.dtype:
    return torch.int64 if f.bits == 32 else torch.int32


def to_bits(t: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    """Unsigned bit patterns of `t` (dtype f.dtype) as int64 (float32) or int32 (others)."""
    if f.bits == 32:
        return t.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if f.bits == 16:
        return t.view(torch.int16).to(torch.int32) & 0xFFFF
    return t.view(torch.uint8).to(torch.int32)


def from_bits(bits: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    """Inverse of `to_bits`: unsigned patterns -> a tensor of dtype f.dtype."""
    if f.bits == 8:
        return bits.to(torch.uint8).view(f.dtype)
    signed_dtype = torch.int32 if f.bits == 32 else torch.int16
    # Two's complement wrap of the unsigned pattern before narrowing (narrowing casts of
    # out-of-range values are not defined behaviour to rely on).
    wrapped = torch.where(bits >= (1 << (f.bits - 1)), bits - (1 << f.bits), bits)
    return wrapped.to(signed_dtype).view(f.dtype)


# --- the two halves of an L-Mul: operand preparation, then the combine ---------------------------


@dataclass
class Prepared:
    """Operands after flush-to-zero and rounding to k bits (see reference.prepare_operand)."""

    sign: torch.Tensor
    mag: torch.Tensor
    nan: torch.Tensor
    inf: torch.Tensor
    zero: torch.Tensor


def _is_nan(mag: torch.Tensor, f: FloatFormat) -> torch.Tensor:
    if f.has_inf:
        return mag > f.inf_mag
    return mag == f.nan_bits


def prepare(t: torch.Tensor, f: FloatFormat, k: int) -> Prepared:
    bits = to_bits(t, f)
    sign = bits & f.sign_mask
    mag = bits & (f.sign_mask - 1)
    nan = _is_nan(mag, f)
    mag = torch.where((mag >> f.man_bits) == 0, 0, mag)  # denormals-are-zero
    drop = f.man_bits - k
    if drop > 0:
        kept = mag >> drop
        rest = mag & ((1 << drop) - 1)
        half = 1 << (drop - 1)
        up = (rest > half) | ((rest == half) & ((kept & 1) == 1))
        rounded = (kept + up.to(kept.dtype)) << drop
        over_value = f.inf_mag if f.has_inf else (f.max_finite_mag >> drop) << drop
        rounded = torch.where(rounded > f.max_finite_mag, over_value, rounded)
        # NaN keeps its pattern (rounding a NaN's payload could turn it into inf); inf rounds
        # to itself.
        mag = torch.where(nan, mag, rounded)
    # Computed after rounding: a finite operand may have rounded up to inf.
    inf = mag == f.inf_mag if f.has_inf else torch.zeros_like(nan)
    return Prepared(sign, mag, nan, inf, mag == 0)


def combine(x: Prepared, y: Prepared, f: FloatFormat, k: int, mode: str) -> torch.Tensor:
    """L-Mul of prepared operands (broadcasting) -> unsigned result bit patterns."""
    m = f.man_bits
    l = offset_exponent(k)
    sign = x.sign ^ y.sign
    if mode == "int":
        r = x.mag + y.mag - ((f.bias << m) - ((1 << m) >> l))
        under = r < (1 << m)
    else:
        ex, mx = x.mag >> m, x.mag & f.man_mask
        ey, my = y.mag >> m, y.mag & f.man_mask
        s = (1 << m) + mx + my + ((1 << m) >> l)  # significand in units of 2^-m
        e = ex + ey - f.bias
        carry = s >= (2 << m)
        s_half = s >> 1
        s_half = s_half + (s & s_half & 1)  # round half to even on the dropped bit
        s = torch.where(carry, s_half, s)
        e = e + carry.to(e.dtype)
        under = e <= 0
        r = (e << m) | (s - (1 << m))
    over_mag = f.inf_mag if f.has_inf else f.max_finite_mag
    res = torch.where(r > f.max_finite_mag, over_mag, r)
    res = torch.where(under | x.zero | y.zero, 0, res) | sign
    if f.has_inf:
        res = torch.where(x.inf | y.inf, sign | f.inf_mag, res)
    nan = x.nan | y.nan | (x.inf & y.zero) | (x.zero & y.inf)
    return torch.where(nan, f.nan_bits, res)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise MulfreeError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def _common_format(a: torch.Tensor, b: torch.Tensor) -> FloatFormat:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise MulfreeError("L-Mul operands must be torch tensors")
    if a.dtype != b.dtype:
        raise MulfreeError(f"L-Mul operands must share a dtype; got {a.dtype} and {b.dtype}")
    return get_format(a.dtype)


# --- elementwise ---------------------------------------------------------------------------


def lmul_forward(
    a: torch.Tensor, b: torch.Tensor, *, mantissa_bits: int | None = None, mode: str = "int"
) -> torch.Tensor:
    """Elementwise L-Mul without autograd (broadcasting); result in the operands' dtype."""
    f = _common_format(a, b)
    k = check_mantissa_bits(f, mantissa_bits)
    _check_mode(mode)
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise MulfreeError(
            f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast"
        ) from None
    return _lmul_dispatch(a, b, f, k, mode)


def _lmul_dispatch(a, b, f, k, mode):
    """The compiled kernel (a torch custom op the energy counter prices) when it applies, else
    the torch twin, whose integer ops emulate the products: hidden, priced as the op."""
    out = fast.lmul_elementwise(a, b, f, k, mode)
    if out is None:
        with energy.opaque():
            out = lmul_reference(a, b, f, k, mode)
        KL.price_twin("lmul_ew", a, b, out)
    return out


def lmul_reference(a: torch.Tensor, b: torch.Tensor, f: FloatFormat, k: int, mode: str):
    """The pure-torch elementwise L-Mul (broadcasting): the twin of the compiled kernel."""
    return from_bits(combine(prepare(a, f, k), prepare(b, f, k), f, k, mode), f)


class _LMulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, mantissa_bits, mode, exact_backward):
        ctx.save_for_backward(a, b)
        ctx.cfg = (mantissa_bits, mode, exact_backward)
        return lmul_forward(a, b, mantissa_bits=mantissa_bits, mode=mode)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        mantissa_bits, mode, exact_backward = ctx.cfg
        ga = gb = None
        if exact_backward:
            if ctx.needs_input_grad[0]:
                ga = g * b
            if ctx.needs_input_grad[1]:
                gb = g * a
        else:
            g = g.to(a.dtype)
            if ctx.needs_input_grad[0]:
                ga = lmul_forward(g, b, mantissa_bits=mantissa_bits, mode=mode)
            if ctx.needs_input_grad[1]:
                gb = lmul_forward(g, a, mantissa_bits=mantissa_bits, mode=mode)
        return ga, gb, None, None, None


def lmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    mantissa_bits: int | None = None,
    mode: str = "int",
    exact_backward: bool = False,
) -> torch.Tensor:
    """Elementwise L-Mul `a ⊙ b` with broadcasting.

    a, b: tensors of one dtype in {float32, bfloat16, float16, float8_e4m3fn, float8_e5m2}.
    Returns the broadcast shape, same dtype. Semantics: `mulfree.lmul.reference`.
    Differentiable: the backward products are L-Mul too (grad_a = lmul(grad, b)), unless
    `exact_backward=True`, which uses exact products.
    """
    f = _common_format(a, b)
    check_mantissa_bits(f, mantissa_bits)
    _check_mode(mode)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        a, b = torch.broadcast_tensors(a, b)  # autograd reduces the broadcast for us
        return _LMulFn.apply(a, b, mantissa_bits, mode, exact_backward)
    return lmul_forward(a, b, mantissa_bits=mantissa_bits, mode=mode)


# --- matrix product ------------------------------------------------------------------------


def _accumulate(acc: torch.Tensor, p: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    """One step of the documented accumulation: acc <- round_acc(fp32(acc + p))."""
    if acc_dtype == torch.float32:
        return acc.add_(p)
    return (acc + p).to(acc_dtype).float()


def canonicalize_nan_(out: torch.Tensor) -> torch.Tensor:
    """Write every NaN of an L-Matmul result as the positive quiet NaN, in place.

    Products already are canonical, but float additions pick which NaN they propagate (and
    inf - inf makes x86's negative "indefinite" NaN), so the order of operands in an add would
    otherwise leak into the result's bits.
    """
    return out.masked_fill_(out.isnan(), float("nan"))


def lmatmul_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    mantissa_bits: int | None = None,
    mode: str = "int",
    acc_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pure-torch L-Matmul on [B, M, K] x [B, K, N] -> [B, M, N] in acc_dtype (no autograd).

    Order of accumulation (the spec every fast path follows): for each output,
    acc = +0.0 (float32); for k = 0 .. K-1: acc = round_acc(fp32(acc + float32(p_k))), where
    p_k = lmul(a[m, k], b[k, n]) in the operands' format and round_acc rounds to acc_dtype
    (identity for float32; bfloat16 round-to-nearest-even; float8_e4m3fn by torch's saturating
    cast). NaN results are written as the canonical positive quiet NaN.
    """
    f = get_format(a.dtype)
    k_bits = check_mantissa_bits(f, mantissa_bits)
    bsz, m_rows, k_dim = a.shape
    n_cols = b.shape[2]
    acc = torch.zeros(bsz, m_rows, n_cols, dtype=torch.float32)
    if k_dim == 0 or m_rows == 0 or n_cols == 0:
        return acc.to(acc_dtype)
    pa = prepare(a.permute(2, 0, 1).unsqueeze(-1), f, k_bits)  # [K, B, M, 1]
    pb = prepare(b.permute(1, 0, 2).unsqueeze(-2), f, k_bits)  # [K, B, 1, N]
    step = max(1, _CHUNK_ELEMENTS // max(1, bsz * m_rows * n_cols))
    for k0 in range(0, k_dim, step):
        k1 = min(k_dim, k0 + step)
        xa = Prepared(*(t[k0:k1] for t in (pa.sign, pa.mag, pa.nan, pa.inf, pa.zero)))
        xb = Prepared(*(t[k0:k1] for t in (pb.sign, pb.mag, pb.nan, pb.inf, pb.zero)))
        prod = from_bits(combine(xa, xb, f, k_bits, mode), f).float()  # [kc, B, M, N]
        for j in range(k1 - k0):
            acc = _accumulate(acc, prod[j], acc_dtype)
    return canonicalize_nan_(acc).to(acc_dtype)


def _lmatmul_3d(a, b, mantissa_bits, mode, acc_dtype):
    """Dispatch point for [B, M, K] x [B, K, N]: the compiled kernel (a torch custom op the
    energy counter prices) when it applies, else the torch twin: hidden, priced as the op."""
    f = get_format(a.dtype)
    k = check_mantissa_bits(f, mantissa_bits)
    out = fast.lmatmul_3d(a, b, f, k, mode, acc_dtype)
    if out is None:
        with energy.opaque():
            out = lmatmul_reference(a, b, mantissa_bits=mantissa_bits, mode=mode,
                                    acc_dtype=acc_dtype)  # fmt: skip
        KL.price_twin("lmatmul_f32", a, b, out)
    return out


class _LMatmulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, mantissa_bits, mode, acc_dtype, exact_backward):
        ctx.save_for_backward(a, b)
        ctx.cfg = (mantissa_bits, mode, acc_dtype, exact_backward)
        return _lmatmul_3d(a, b, mantissa_bits, mode, acc_dtype)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        mantissa_bits, mode, acc_dtype, exact_backward = ctx.cfg
        ga = gb = None
        if exact_backward:
            gf = g.float()
            if ctx.needs_input_grad[0]:
                ga = torch.matmul(gf, b.float().mT).to(a.dtype)
            if ctx.needs_input_grad[1]:
                gb = torch.matmul(a.float().mT, gf).to(b.dtype)
        else:
            # The backward products are L-Mul products in the operands' format.
            gq = g.to(a.dtype)
            if ctx.needs_input_grad[0]:
                ga = _lmatmul_3d(gq, b.mT, mantissa_bits, mode, acc_dtype).to(a.dtype)
            if ctx.needs_input_grad[1]:
                gb = _lmatmul_3d(a.mT, gq, mantissa_bits, mode, acc_dtype).to(b.dtype)
        return ga, gb, None, None, None, None


def _batch_shape(sa: torch.Size, sb: torch.Size) -> torch.Size | None:
    """torch.broadcast_shapes(sa, sb), None if they do not broadcast. Equal or empty batch dims
    (attention heads, a shared weight) are answered without it: it runs torch's Python
    reference code, ~10-30 us a call, more than a decode-step product in C."""
    if sa == sb or not sb:
        return sa
    if not sa:
        return sb
    try:
        return torch.broadcast_shapes(sa, sb)
    except RuntimeError:
        return None


def lmatmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    mantissa_bits: int | None = None,
    mode: str = "int",
    acc_dtype: torch.dtype = torch.float32,
    exact_backward: bool = False,
) -> torch.Tensor:
    """Matrix product with every scalar product an L-Mul.

    Shapes follow `torch.matmul`: a [..., M, K] @ b [..., K, N] -> [..., M, N] with broadcast
    batch dims; a 1-D `a` is [K] (a row), a 1-D `b` is [K] (a column), and the added dim is
    removed from the result. Operands share one dtype in {float32, bfloat16, float16,
    float8_e4m3fn, float8_e5m2}. Products follow `mulfree.lmul.reference` (with
    `mantissa_bits`, `mode`); accumulation is sequential over K in `acc_dtype` (float32,
    bfloat16, or float8_e4m3fn emulated), see `lmatmul_reference`. The result has dtype
    `acc_dtype`.
    Differentiable: grad_a = lmatmul(grad, b^T), grad_b = lmatmul(a^T, grad) with the grad
    first rounded to the operands' dtype; `exact_backward=True` uses exact float32 matmuls.
    """
    f = _common_format(a, b)
    check_mantissa_bits(f, mantissa_bits)
    _check_mode(mode)
    if acc_dtype not in ACC_DTYPES:
        raise MulfreeError(
            f"acc_dtype must be one of {', '.join(str(d) for d in ACC_DTYPES)}; got {acc_dtype}"
        )
    if a.dim() == 0 or b.dim() == 0:
        raise MulfreeError("lmatmul operands must have at least one dimension")
    squeeze_rows = a.dim() == 1
    squeeze_cols = b.dim() == 1
    a2 = a.unsqueeze(0) if squeeze_rows else a  # [K] -> [1, K]
    b2 = b.unsqueeze(-1) if squeeze_cols else b  # [K] -> [K, 1]
    if a2.shape[-1] != b2.shape[-2]:
        raise MulfreeError(
            f"lmatmul shape mismatch: {tuple(a.shape)} @ {tuple(b.shape)} "
            f"(inner dims {a2.shape[-1]} != {b2.shape[-2]})"
        )
    batch = _batch_shape(a2.shape[:-2], b2.shape[:-2])
    if batch is None:
        raise MulfreeError(
            f"lmatmul batch dims do not broadcast: {tuple(a.shape)} @ {tuple(b.shape)}"
        )
    m_rows, k_dim = a2.shape[-2:]
    n_cols = b2.shape[-1]
    if b2.dim() == 2:
        # One shared right operand: fold a's batch into its rows ([..., M, K] -> [1, B*M, K]),
        # so b is prepared once instead of once per batch element (same products, same order).
        a3 = a2.reshape(1, a2.shape[:-1].numel(), k_dim)  # not -1: K may be 0
        b3 = b2.unsqueeze(0)  # [1, K, N]; batch == a2.shape[:-2] here
    else:
        nb = batch.numel()  # not -1 in the reshapes: K (or M, N) may be 0
        a3 = a2.expand(*batch, m_rows, k_dim).reshape(nb, m_rows, k_dim)  # [B, M, K]
        b3 = b2.expand(*batch, k_dim, n_cols).reshape(nb, k_dim, n_cols)  # [B, K, N]
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        out = _LMatmulFn.apply(a3, b3, mantissa_bits, mode, acc_dtype, exact_backward)
    else:
        out = _lmatmul_3d(a3, b3, mantissa_bits, mode, acc_dtype)
    out = out.reshape(*batch, m_rows, n_cols)  # [B, M, N] -> [..., M, N]
    if squeeze_cols:
        out = out.squeeze(-1)
    if squeeze_rows:
        out = out.squeeze(-1 if squeeze_cols else -2)
    return out
