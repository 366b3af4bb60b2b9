"""Launchers of the compiled L-Mul kernels (csrc/mf_lmul_ew.c, csrc/mf_lmatmul.c) behind
`lmul` and `lmatmul`.

Each returns None when the compiled route does not apply (no compiled core, ISA forced to
"torch", a non-CPU tensor, or an option the kernel does not cover); the caller then runs the
torch reference. What the kernels cover:
- elementwise: every format and mode (float32/bfloat16/float16 in SIMD, fp8 in scalar C);
- L-Matmul: float32 accumulation of float32 operands (both modes) and of bfloat16 operands in
  int mode (bfloat16 int-mode L-Mul equals float32-container L-Mul with k <= 7 exactly, so the
  operands are widened; eq1 would need a rounding step per product and stays on torch).
"""

from __future__ import annotations

import torch

from mulfree.kernels import (
    ISA_LEVELS,
    LMATMUL,
    LMUL_EW,
    TORCH,
    core,
    resolve_isa,
    resolve_threads,
)
from mulfree.lmul.formats import FloatFormat
from mulfree.lmul.ops import canonicalize_nan_

FORMAT_IDS = {"float32": 0, "bfloat16": 1, "float16": 2, "float8_e4m3fn": 3, "float8_e5m2": 4}
MODE_IDS = {"int": 0, "eq1": 1}


def _level(family: str, *tensors: torch.Tensor) -> str:
    if any(t.device.type != "cpu" for t in tensors):
        return TORCH
    return resolve_isa(None, family)


def lmul_elementwise(
    a: torch.Tensor, b: torch.Tensor, f: FloatFormat, k: int, mode: str
) -> torch.Tensor | None:
    """Broadcast a, b (dtype f.dtype) and L-Mul them in C; None if the kernel does not apply."""
    level = _level(LMUL_EW, a, b)
    if level == TORCH:
        return None
    a, b = torch.broadcast_tensors(a, b)
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty(a.shape, dtype=a.dtype)
    if out.numel():
        core().lmul_ew(
            a.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(), FORMAT_IDS[f.name], k,
            MODE_IDS[mode], ISA_LEVELS[level], resolve_threads(),
        )  # fmt: skip
    return out


def lmatmul_3d(
    a: torch.Tensor,
    b: torch.Tensor,
    f: FloatFormat,
    k: int,
    mode: str,
    acc_dtype: torch.dtype,
    *,
    route: str = "auto",
) -> torch.Tensor | None:
    """[B, M, K] x [B, K, N] -> [B, M, N] float32 in C; None if the kernel does not apply.

    route="full" skips the fast route (used by tests to exercise both).
    """
    if acc_dtype != torch.float32:
        return None
    if f.name == "bfloat16" and mode == "int":
        a, b = a.float(), b.float()  # exact widening; k <= 7 keeps bf16 semantics
    elif f.name != "float32":
        return None
    level = _level(LMATMUL, a, b)
    if level == TORCH:
        return None
    a, b = a.contiguous(), b.contiguous()
    bsz, m_rows, k_dim = a.shape
    n_cols = b.shape[2]
    out = torch.empty(bsz, m_rows, n_cols, dtype=torch.float32)
    if out.numel():
        all_fast = core().lmatmul_f32(
            a.data_ptr(), b.data_ptr(), out.data_ptr(), bsz, m_rows, k_dim, n_cols, k,
            MODE_IDS[mode], ISA_LEVELS[level], resolve_threads(), 0 if route == "full" else -1,
        )  # fmt: skip
        # The fast route sums finite products only: an overflowing sum stays +-inf, never NaN.
        if all_fast:
            return out
    return canonicalize_nan_(out)
