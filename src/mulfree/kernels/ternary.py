"""Launchers of the ternary kernels of the compiled core (csrc/mf_ternary.c, csrc/mf_pack.c).

These take plain contiguous tensors and do no shape juggling; the public API is
`mulfree.ternary.packed_linear.ternary_linear` and `mulfree.ternary.packing`.
"""

from __future__ import annotations

import torch

from mulfree.kernels._core import ISA_LEVELS, core


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
    M, K = x.shape
    y = torch.empty(M, out_features, dtype=torch.float32) if out is None else out
    acc = torch.empty(M, out_features, dtype=torch.int32) if return_acc else None
    if M > 0:
        _lib().tq2_linear(
            x.data_ptr(), M, K, w.data_ptr(), out_features, float(w_scale),
            row_scales.data_ptr() if row_scales is not None else 0, y.data_ptr(),
            acc.data_ptr() if acc is not None else 0, threads, ISA_LEVELS[isa],
        )  # fmt: skip
    return (y, acc) if return_acc else y


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
