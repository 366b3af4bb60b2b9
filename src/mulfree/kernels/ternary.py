"""Launchers of the ternary kernels of the compiled core (csrc/mf_ternary.c, csrc/mf_pack.c).

These take plain contiguous tensors and do no shape juggling; the public API is
`mulfree.ternary.packed_linear.ternary_linear` and `mulfree.ternary.packing`.

The packed linear is a dispatcher op, `torch.ops.mulfree.tq2_linear` (kernels._ops): shapes
and dtypes are checked before the C call, a fake implementation lets tracing and compile see it,
and its cost formula is registered with the energy counter (`mulfree.energy.counter`), so a
counted forward prices the kernel that runs, with no bookkeeping in the callers.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from mulfree.energy.counter import register_op_cost
from mulfree.errors import MulfreeError
from mulfree.kernels._core import ISA_LEVELS, core
from mulfree.kernels._ops import define_op
from mulfree.kernels.dispatch import t81_runs_simd  # noqa: F401  (re-exported)


def _lib():
    C = core()
    if C is None:  # callers resolve the ISA first, which routes to torch when _C is missing
        raise RuntimeError("mulfree._C is not available")
    return C


def tq2_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    out_features: int,
    w_scale: float,
    *,
    threads: int,
    isa: str,
    return_acc: bool = False,
    out: torch.Tensor | None = None,
    row_scales: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] float32 contiguous, w: tq2 bytes of an [N, K] weight -> y [M, N] float32.

    With return_acc, also the int32 accumulators acc [M, N] (y = acc / (s_x * w_scale)).
    `out`: optional preallocated contiguous float32 [M, N] to write y into (no allocation).
    `row_scales`: optional contiguous float32 [N] used instead of w_scale per output row, to run
    several weights that share an input as one (rows concatenated, each its own tensor scale);
    `packing.fuse_rows` builds such a weight.
    """
    return _linear("tq2_linear", x, w, out_features, w_scale, threads, isa, return_acc, out,
                   row_scales)  # fmt: skip


def t81_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    out_features: int,
    w_scale: float,
    *,
    threads: int,
    isa: str,
    return_acc: bool = False,
    out: torch.Tensor | None = None,
    row_scales: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """tq2_linear on t81 bytes (tq2_to_t81 of a tq2 weight): the same shapes, the same
    results (int32 accumulators equal); the VBMI kernel where the CPU and `isa` allow AVX-512
    with VBMI, else the scalar spec."""
    return _linear("t81_linear", x, w, out_features, w_scale, threads, isa, return_acc, out,
                   row_scales)  # fmt: skip


def _linear(name, x, w, out_features, w_scale, threads, isa, return_acc, out, row_scales):
    """Both layouts' call: the torch op (what the energy counter prices), or with return_acc
    the compiled entry point directly, which also writes the int32 sums (a test view)."""
    M, K = x.shape
    y = torch.empty(M, out_features, dtype=torch.float32) if out is None else out
    if not return_acc:
        getattr(torch.ops.mulfree, name)(x, w, out_features, float(w_scale), threads,
                                         ISA_LEVELS[isa], row_scales, y)  # fmt: skip
        return y
    acc = torch.empty(M, out_features, dtype=torch.int32)
    if M > 0:
        _check_linear(x, w, out_features, row_scales, y)
        getattr(_lib(), name)(
            x.data_ptr(), M, K, w.data_ptr(), out_features, float(w_scale),
            row_scales.data_ptr() if row_scales is not None else 0, y.data_ptr(),
            acc.data_ptr(), threads, ISA_LEVELS[isa],
        )  # fmt: skip
    return y, acc


def tq2_to_t81(w: torch.Tensor, n: int, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """tq2 bytes of an [n, k] weight -> its t81 bytes (`out` may be `w`: in place)."""
    out = torch.empty_like(w) if out is None else out
    _lib().tq2_to_t81(w.data_ptr(), n, k, out.data_ptr())
    return out


def t81_to_tq2(w: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, int]:
    """t81 bytes of an [n, k] weight -> (tq2 bytes, number of invalid t81 bytes >= 81)."""
    out = torch.empty_like(w)
    bad = _lib().t81_to_tq2(w.data_ptr(), n, k, out.data_ptr())
    return out, bad


def act_quant_i8(x: torch.Tensor, *, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] float32 contiguous -> (q [M, K] int8, scale [M, 1] float32), as quant.py."""
    assert x.dtype == torch.float32 and x.is_contiguous() and x.dim() == 2
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8)
    s = torch.empty(M, 1, dtype=torch.float32)
    _lib().act_quant_i8(x.data_ptr(), M, K, q.data_ptr(), s.data_ptr(), ISA_LEVELS[isa])
    return q, s


def tq2_pack(q: torch.Tensor, nbytes: int) -> torch.Tensor:
    """q: [N, K] int8 contiguous in {-1, 0, 1} -> tq2 bytes [nbytes] uint8."""
    out = torch.empty(nbytes, dtype=torch.uint8)
    _lib().tq2_pack(q.data_ptr(), q.shape[0], q.shape[1], out.data_ptr())
    return out


def tq2_unpack(w: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """tq2 bytes -> q [n, k] int8."""
    q = torch.empty(n, k, dtype=torch.int8)
    _lib().tq2_unpack(w.data_ptr(), n, k, q.data_ptr())
    return q


def tq1_pack(q: torch.Tensor, nbytes: int) -> torch.Tensor:
    """q: [N, K] int8 contiguous in {-1, 0, 1} -> tq1 bytes [nbytes] uint8."""
    out = torch.empty(nbytes, dtype=torch.uint8)
    _lib().tq1_pack(q.data_ptr(), q.shape[0], q.shape[1], out.data_ptr())
    return out


def tq1_unpack(w: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, int]:
    """tq1 bytes -> (q [n, k] int8, number of invalid bytes >= 243)."""
    q = torch.empty(n, k, dtype=torch.int8)
    bad = _lib().tq1_unpack(w.data_ptr(), n, k, q.data_ptr())
    return q, bad


def tq1_to_tq2(w: torch.Tensor, n: int, k: int, nbytes: int) -> tuple[torch.Tensor, int]:
    """tq1 bytes -> (tq2 bytes [nbytes], number of invalid tq1 bytes)."""
    out = torch.empty(nbytes, dtype=torch.uint8)
    bad = _lib().tq1_to_tq2(w.data_ptr(), n, k, out.data_ptr())
    return out, bad


def tq2_nbytes(n: int, k: int) -> int:
    """packing.packed_nbytes("tq2", n, k): 32-row blocks of 16 inputs, 4 weights per byte."""
    return -(-n // 32) * 32 * -(-k // 16) * 16 // 4


def _check_linear(x, w, n, row_scales, out) -> None:
    if x.dtype != torch.float32 or x.dim() != 2 or not x.is_contiguous():
        raise MulfreeError(f"tq2_linear: x must be contiguous float32 [M, K], got {x.dtype} {tuple(x.shape)}")
    m, k = x.shape
    if w.dtype != torch.uint8 or not w.is_contiguous() or w.numel() != tq2_nbytes(n, k):
        raise MulfreeError(f"tq2_linear: w must be {tq2_nbytes(n, k)} contiguous uint8 bytes "
                           f"(tq2 of [{n}, {k}]), got {w.numel()} {w.dtype}")  # fmt: skip
    if out.dtype != torch.float32 or tuple(out.shape) != (m, n) or not out.is_contiguous():
        raise MulfreeError(f"tq2_linear: out must be contiguous float32 [{m}, {n}], "
                           f"got {out.dtype} {tuple(out.shape)}")  # fmt: skip
    if row_scales is not None and (row_scales.dtype != torch.float32 or row_scales.numel() != n
                                   or not row_scales.is_contiguous()):  # fmt: skip
        raise MulfreeError(f"tq2_linear: row_scales must be contiguous float32 [{n}]")


def _tq2_linear_op(x: torch.Tensor, w: torch.Tensor, out_features: int, w_scale: float,
                   threads: int, isa: int, row_scales: torch.Tensor | None,
                   out: torch.Tensor) -> None:  # fmt: skip
    """out [M, N] = the packed ternary linear of x [M, K] (int8 absmax inside; csrc/mf_ternary.c)."""
    _check_linear(x, w, out_features, row_scales, out)
    if x.shape[0] > 0:
        _lib().tq2_linear(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), out_features,
                          float(w_scale), row_scales.data_ptr() if row_scales is not None else 0,
                          out.data_ptr(), 0, int(threads), int(isa))  # fmt: skip


def _tq2_linear_fake(x, w, out_features, w_scale, threads, isa, row_scales, out) -> None:
    _check_linear(x, w, out_features, row_scales, out)


define_op("tq2_linear", _tq2_linear_op, _tq2_linear_fake, mutates_args=("out",))


def _t81_linear_op(x: torch.Tensor, w: torch.Tensor, out_features: int, w_scale: float,
                   threads: int, isa: int, row_scales: torch.Tensor | None,
                   out: torch.Tensor) -> None:  # fmt: skip
    """out [M, N] = the packed ternary linear of x [M, K] on t81 weights (csrc/mf_ternary.c)."""
    _check_linear(x, w, out_features, row_scales, out)
    if x.shape[0] > 0:
        _lib().t81_linear(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), out_features,
                          float(w_scale), row_scales.data_ptr() if row_scales is not None else 0,
                          out.data_ptr(), 0, int(threads), int(isa))  # fmt: skip


define_op("t81_linear", _t81_linear_op, _tq2_linear_fake, mutates_args=("out",))


# --- the cost formula the energy counter uses for the op ----------------------------------------
_TQ2_NNZ = torch.tensor(  # non-zero weights per tq2 byte (four 2-bit codes, code 1 = zero)
    [sum(((b >> (2 * i)) & 3) != 1 for i in range(4)) for b in range(256)], dtype=torch.int64
)
_T81_NNZ = torch.tensor(  # non-zero weights per t81 byte (four base-3 digits, digit 1 = zero)
    [sum((b // 3**i) % 3 != 1 for i in range(4)) if b < 81 else 0 for b in range(256)],
    dtype=torch.int64,
)
_nnz_cache: dict[tuple, tuple] = {}  # key -> (weakref to the owning tensor, nnz)
_DENSE = [False]  # priced_as_dense's switch


def tq2_nnz(data: torch.Tensor) -> int:
    """Non-zero weights of a tq2-packed tensor (its ternary add/sub count per token)."""
    return int(_TQ2_NNZ[data.long()].sum())


def _nnz(w: torch.Tensor, table: torch.Tensor = _TQ2_NNZ) -> int:
    # Keyed by address, size and version, and checked against a weak reference to the tensor
    # that owns the memory: a weight freed and another allocated at the same address (a second
    # model in the process) must not get the first one's count.
    base = w._base if w._base is not None else w
    key = (w.data_ptr(), w.numel(), base._version, table is _T81_NNZ)
    hit = _nnz_cache.get(key)
    if hit is not None and hit[0]() is base:
        return hit[1]
    if len(_nnz_cache) > 4096:
        _nnz_cache.clear()
    n = int(table[w.long()].sum())
    _nnz_cache[key] = (weakref.ref(base), n)
    return n


@contextlib.contextmanager
def priced_as_dense(on: bool = True):
    """Inside, the counter prices every tq2_linear as a dense fp32 F.linear of its shape (K
    multiplies and K - 1 adds per output, 4 bytes per weight): the counterfactual of
    mulfree.engine.decode.Decoder.step_energy."""
    before, _DENSE[0] = _DENSE[0], bool(on)
    try:
        yield
    finally:
        _DENSE[0] = before


def _tq2_linear_cost(counter, args, kwargs, out, nnz_table: torch.Tensor = _TQ2_NNZ) -> None:
    """One call's ops and bytes. Per token: the int8 absmax quantizer (|x| max: K compares;
    x * s: K fp32 multiplies; clamp: 2K compares; s = 127 / amax: 1 division), nnz(W) int8
    adds/subtracts into int32 accumulators, and per output one fp32 division acc / (s_x * s_w)
    (+ the product s_x * s_w once per token). Bytes: the packed weight, x and out."""
    x, w, n = args[0], args[1], args[2]
    y = args[7] if len(args) > 7 else kwargs["out"]
    t, k = x.shape
    c, b = counter.counts, counter.bytes
    b["act_read"] += x.numel() * x.element_size()
    b["act_write"] += y.numel() * y.element_size()
    if _DENSE[0]:
        c[("fp_mul", 32)] += t * n * k
        c[("fp_add", 32)] += t * n * (k - 1)
        b["weight_read"] += 4 * n * k
        return
    c[("cmp", 32)] += 3 * t * k
    c[("fp_mul", 32)] += t * (k + 1)
    c[("div", 32)] += t * (n + 1)
    c[("ternary_add", 32)] += t * _nnz(w, nnz_table)
    b["weight_read"] += w.numel()  # the packed weight (its bytes, 2 bits per weight)


register_op_cost("mulfree::tq2_linear", _tq2_linear_cost)
register_op_cost(  # the same work on t81 bytes (their own non-zero count)
    "mulfree::t81_linear", lambda c, a, k, o: _tq2_linear_cost(c, a, k, o, _T81_NNZ)
)

