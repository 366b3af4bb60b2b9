"""Launchers of the L-Mul kernels of the compiled core (csrc/mf_lmul_ew.c, csrc/mf_lmatmul.c) as
dispatcher ops (mulfree.kernels._ops). The public API is `mulfree.lmul.lmul` / `lmatmul` (which
choose when the compiled route applies: `mulfree.lmul.fast`); these take plain contiguous
tensors.

    torch.ops.mulfree.lmul_ew       out = a ⊙ b, every product one L-Mul (a, b, out one shape)
    torch.ops.mulfree.lmatmul_f32   out [B, M, N] = a [B, M, K] x b [B, K, N], float32 sums

Each checks shapes and dtypes before the C call, has a fake implementation, and registers its
cost with the energy counter (`register_op_cost`): one `lmul` (an integer add of the operands'
width, paper Sec. 3) per product, and for L-Matmul K - 1 float adds of the accumulator's width
per output; bytes are the operands (weights told apart) and the result. `price_twin` prices a
torch twin of an op (the pure-torch reference, run hidden from the counter) with the same
formula, so a counted L-Mul costs the same whichever implementation runs.
"""

from __future__ import annotations

import torch

from mulfree.energy.counter import price_as, register_op_cost
from mulfree.errors import MulfreeError
from mulfree.kernels._core import ISA_LEVELS, core
from mulfree.kernels._ops import define_op

#: csrc/mf_lmul.h's format and mode ids
FORMAT_IDS = {"float32": 0, "bfloat16": 1, "float16": 2, "float8_e4m3fn": 3, "float8_e5m2": 4}
MODE_IDS = {"int": 0, "eq1": 1}
_DTYPE_FORMAT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2,
                 torch.float8_e4m3fn: 3, torch.float8_e5m2: 4}  # fmt: skip


def _lib():
    C = core()
    if C is None:  # mulfree.lmul.fast resolves the ISA first, which routes to torch without _C
        raise RuntimeError("mulfree._C is not available")
    return C


def _check_mode(name: str, mode: int) -> None:
    if mode not in MODE_IDS.values():
        raise MulfreeError(f"{name}: mode must be one of {sorted(MODE_IDS.values())}, got {mode}")


def _check_ew(a, b, out, k, mode) -> None:
    if a.dtype not in _DTYPE_FORMAT or b.dtype != a.dtype or out.dtype != a.dtype:
        raise MulfreeError(f"lmul_ew: a, b and out must share an L-Mul format, got {a.dtype}, "
                           f"{b.dtype}, {out.dtype}")  # fmt: skip
    if a.shape != b.shape or a.shape != out.shape:
        raise MulfreeError(f"lmul_ew: a, b and out must have one shape (broadcast first), got "
                           f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(out.shape)}")  # fmt: skip
    if not (a.is_contiguous() and b.is_contiguous() and out.is_contiguous()):
        raise MulfreeError("lmul_ew: a, b and out must be contiguous")
    _check_mode("lmul_ew", mode)
    if k < 0:
        raise MulfreeError(f"lmul_ew: mantissa bits must be >= 0, got {k}")


def _lmul_ew(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, k: int, mode_id: int,
             isa: int, threads: int) -> None:  # fmt: skip
    """out = L-Mul(a, b) elementwise (k mantissa bits, mode id, ISA level, threads)."""
    _check_ew(a, b, out, k, mode_id)
    if out.numel():
        _lib().lmul_ew(a.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(),
                       _DTYPE_FORMAT[a.dtype], int(k), int(mode_id), int(isa), int(threads))  # fmt: skip


def _lmul_ew_fake(a, b, out, k, mode_id, isa, threads) -> None:
    _check_ew(a, b, out, k, mode_id)


define_op("lmul_ew", _lmul_ew, _lmul_ew_fake, mutates_args=("out",))


def lmul_ew(a: torch.Tensor, b: torch.Tensor, k: int, mode: str, *, isa: str,
            threads: int) -> torch.Tensor:  # fmt: skip
    """a, b: one shape and L-Mul dtype, contiguous -> a new tensor of L-Mul products."""
    out = torch.empty(a.shape, dtype=a.dtype)
    torch.ops.mulfree.lmul_ew(a, b, out, int(k), MODE_IDS[mode], ISA_LEVELS[isa], int(threads))
    return out


def _check_mm(a, b, out, k, mode) -> None:
    if a.dtype not in (torch.float32, torch.bfloat16) or b.dtype != a.dtype:
        raise MulfreeError(f"lmatmul_f32: a and b must both be float32 or bfloat16, got "
                           f"{a.dtype} and {b.dtype}")  # fmt: skip
    if a.dtype == torch.bfloat16 and mode != MODE_IDS["int"]:
        raise MulfreeError("lmatmul_f32: bfloat16 operands need int mode (eq1 rounds per product)")
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise MulfreeError(f"lmatmul_f32: need a [B, M, K] and b [B, K, N], got "
                           f"{tuple(a.shape)} and {tuple(b.shape)}")  # fmt: skip
    want = (a.shape[0], a.shape[1], b.shape[2])
    if out.dtype != torch.float32 or tuple(out.shape) != want or not out.is_contiguous():
        raise MulfreeError(f"lmatmul_f32: out must be contiguous float32 {list(want)}, got "
                           f"{out.dtype} {tuple(out.shape)}")  # fmt: skip
    if not (a.is_contiguous() and b.is_contiguous()):
        raise MulfreeError("lmatmul_f32: a and b must be contiguous")
    _check_mode("lmatmul_f32", mode)


def _lmatmul_f32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, k: int, mode_id: int,
                 isa: int, threads: int, route: int) -> None:  # fmt: skip
    """out [B, M, N] = the L-Matmul of a [B, M, K], b [B, K, N] summed in float32 over k in
    order, NaN results canonical (mulfree.lmul.ops.lmatmul_reference is the spec). bfloat16
    operands (int mode) are widened exactly first: bf16 int-mode L-Mul equals float32-container
    L-Mul with k <= 7. route: -1 the kernel's choice, 0 its full (non-fast) route (tests)."""
    _check_mm(a, b, out, k, mode_id)
    if not out.numel():
        return
    if a.dtype == torch.bfloat16:
        a, b = a.float(), b.float()
    all_fast = _lib().lmatmul_f32(
        a.data_ptr(), b.data_ptr(), out.data_ptr(), a.shape[0], a.shape[1], a.shape[2],
        b.shape[2], int(k), int(mode_id), int(isa), int(threads), int(route),
    )  # fmt: skip
    # The fast route sums finite products only: an overflowing sum stays +-inf, never NaN. The
    # full route's float adds pick which NaN they propagate: canonical, as canonicalize_nan_.
    if not all_fast:
        out.masked_fill_(out.isnan(), float("nan"))


def _lmatmul_f32_fake(a, b, out, k, mode_id, isa, threads, route) -> None:
    _check_mm(a, b, out, k, mode_id)


define_op("lmatmul_f32", _lmatmul_f32, _lmatmul_f32_fake, mutates_args=("out",))


def lmatmul_f32(a: torch.Tensor, b: torch.Tensor, k: int, mode: str, *, isa: str, threads: int,
                route: str = "auto") -> torch.Tensor:  # fmt: skip
    """a [B, M, K], b [B, K, N] contiguous float32 (or bfloat16, int mode) -> float32 [B, M, N].
    route="full" skips the kernel's fast route (tests exercise both)."""
    out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=torch.float32)
    torch.ops.mulfree.lmatmul_f32(a, b, out, int(k), MODE_IDS[mode], ISA_LEVELS[isa],
                                  int(threads), 0 if route == "full" else -1)  # fmt: skip
    return out


# --- the cost formulas ---------------------------------------------------------------------------
def _io(counter, inputs, outputs) -> None:
    for t in inputs:
        key = "weight_read" if counter.is_weight(t) else "act_read"
        counter.bytes[key] += t.numel() * t.element_size()
    for t in outputs:
        counter.bytes["act_write"] += t.numel() * t.element_size()


def _lmul_ew_cost(counter, args, kwargs, out) -> None:
    """One L-Mul per output element, at the operands' width."""
    a, b, o = args[:3]
    counter.counts[("lmul", a.element_size() * 8)] += o.numel()
    _io(counter, (a, b), (o,))


def _lmatmul_cost(counter, args, kwargs, out) -> None:
    """K L-Mul products at the operands' width and K - 1 adds at the accumulator's (the
    result's dtype) per output."""
    a, b, o = args[:3]
    k_dim, n_out = a.shape[-1], o.numel()
    counter.counts[("lmul", a.element_size() * 8)] += n_out * k_dim
    counter.counts[("fp_add", torch.finfo(o.dtype).bits)] += n_out * max(k_dim - 1, 0)
    _io(counter, (a, b), (o,))


register_op_cost("mulfree::lmul_ew", _lmul_ew_cost)
register_op_cost("mulfree::lmatmul_f32", _lmatmul_cost)


def price_twin(op: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """Price a torch twin's result as one call of `op` ("lmul_ew" / "lmatmul_f32") with
    operands a, b (a's dtype the L-Mul format) and result `out` (its dtype the accumulator's)."""
    price_as(f"mulfree::{op}", (a, b, out))
