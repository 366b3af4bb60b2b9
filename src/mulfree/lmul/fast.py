"""The compiled route of `lmul` and `lmatmul`: when the L-Mul kernels (csrc/mf_lmul_ew.c,
csrc/mf_lmatmul.c; their custom ops and launchers are mulfree.kernels.lmul) apply.

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

from mulfree.kernels import LMATMUL, LMUL_EW, TORCH, resolve_isa, resolve_threads
from mulfree.kernels import lmul as KL
from mulfree.lmul.formats import FloatFormat

FORMAT_IDS, MODE_IDS = KL.FORMAT_IDS, KL.MODE_IDS  # re-exported (csrc/mf_lmul.h's ids)


def _level(family: str, *tensors: torch.Tensor) -> str:
    if any(t.device.type != "cpu" for t in tensors):
        return TORCH
    return resolve_isa(None, family)


def lmul_elementwise(
    a: torch.Tensor, b: torch.Tensor, f: FloatFormat, k: int, mode: str
) -> torch.Tensor | None:
    """Broadcast a, b (dtype f.dtype) and L-Mul them in C (torch.ops.mulfree.lmul_ew); None if
    the kernel does not apply."""
    level = _level(LMUL_EW, a, b)
    if level == TORCH:
        return None
    a, b = torch.broadcast_tensors(a, b)
    return KL.lmul_ew(a.contiguous(), b.contiguous(), k, mode, isa=level,
                      threads=resolve_threads())  # fmt: skip


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
    """[B, M, K] x [B, K, N] -> [B, M, N] float32 in C (torch.ops.mulfree.lmatmul_f32); None if
    the kernel does not apply. route="full" skips the fast route (used by tests to exercise
    both)."""
    if acc_dtype != torch.float32:
        return None
    if not (f.name == "float32" or (f.name == "bfloat16" and mode == "int")):
        return None  # bf16 eq1 would need a rounding step per product: torch
    level = _level(LMATMUL, a, b)
    if level == TORCH:
        return None
    return KL.lmatmul_f32(a.contiguous(), b.contiguous(), k, mode, isa=level,
                          threads=resolve_threads(), route=route)  # fmt: skip
