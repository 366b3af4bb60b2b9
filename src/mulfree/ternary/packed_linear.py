"""Inference-only linear layer on packed ternary weights (BitLinear's forward, without multiplies).

`ternary_linear(x, packed)` computes exactly what BitLinear's fake-quant forward computes,
    F.linear(act_fake_quant(x), weight_fake_quant(w)),
as y = acc / (s_x * s_w), where acc = q_x · q_w is an exact int32 sum of adds/subtracts of int8
activations (csrc/mf_ternary.c). The two differ only by the fp32 rounding of the reference's
K products and its summation: |y - ref| <= (K + 2) * 2^-24 * sum_k |x_fq[k] * w_fq[k]| (each
term of the reference carries <= 3 roundings of 2^-24 relative plus the summation error; the
int path is exact up to its one division). Against the int path itself the compiled kernels
and the pure-torch path are bit-identical. Inference only: outputs carry no autograd graph
(train with BitLinear, then pack).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import ternary as K_
from mulfree.ternary.packing import FORMATS, PackedTernary, packed_nbytes, recode_
from mulfree.ternary.quant import act_quant_int8

# fp32 holds every partial sum of the int reference exactly while 128 * K < 2^24.
MAX_IN_FEATURES = (1 << 24) // 128 - 1


def ternary_linear_torch(
    x2d: torch.Tensor, packed: PackedTernary, *, return_acc: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The pure-torch path (also the int reference): x2d [M, K] float32 -> y [M, N] float32.

    acc = F.linear(q_x, q_w) in fp32 is exact: every product and partial sum is an integer of
    magnitude <= 128 K < 2^24. Then y = acc / (s_x * s_w), the same fp32 ops as the kernels.
    """
    q, s = act_quant_int8(x2d)  # [M, K] int8, [M, 1] fp32
    acc = F.linear(q.float(), packed.q_float())  # [M, N], integer-valued
    y = acc / (s * packed.scale)
    return (y, acc.to(torch.int32)) if return_acc else y


def ternary_linear(
    x: torch.Tensor,
    packed: PackedTernary,
    bias: torch.Tensor | None = None,
    *,
    threads: int | None = None,
    isa: str | None = None,
) -> torch.Tensor:
    """y = BitLinear fake-quant forward of x with a packed ternary weight.

    Args:
        x: [..., K] float (any float dtype; quantized from its fp32 value), K = in_features.
        packed: PackedTernary of an [N, K] weight: tq2; t81 (runs its VBMI kernel where the
            CPU has AVX-512 VBMI and `isa` allows AVX-512, else is converted); tq1 (converted).
        bias: optional [N], added after the rescale.
        threads: kernel threads (default torch.get_num_threads()).
        isa: "auto" | "avx512" | "avx2" | "scalar" | "torch" (default: mulfree.kernels setting).
    Returns:
        y: [..., N] in x's dtype.
    """
    K, N = packed.in_features, packed.out_features
    if not x.is_cpu:
        raise MulfreeError(f"ternary_linear runs on the CPU; got x on {x.device}")
    if x.shape[-1] != K:
        raise MulfreeError(f"ternary_linear: x has {x.shape[-1]} features, weight expects {K}")
    if K > MAX_IN_FEATURES:
        raise MulfreeError(f"ternary_linear: in_features {K} > {MAX_IN_FEATURES} is not supported")
    # per-call work kept small: decode calls this ~170 times per token
    x2d = x
    if x.dim() != 2 or x.dtype != torch.float32 or not x.is_contiguous():
        x2d = x.reshape(-1, K).to(torch.float32).contiguous()  # [M, K]
    path = kernels.resolve_isa(isa, kernels.ternary_family(x2d.shape[0]))
    # t81 runs at the level `isa` resolves to, not the tq2 family's pick (the decoders' rule)
    t81 = kernels.resolve_isa(isa) if packed.format == "t81" and path != kernels.TORCH else None
    if t81 is not None and K_.t81_runs_simd(t81):
        nt = torch.get_num_threads() if threads is None else kernels.resolve_threads(threads)
        y = K_.t81_linear(x2d, packed.data, N, packed.scale_value, threads=nt, isa=t81)
    elif path == kernels.TORCH:
        y = ternary_linear_torch(x2d, packed)
    else:
        if packed.format != "tq2":  # tq1, or t81 where its SIMD kernel does not run
            packed = packed.to_format("tq2")
        nt = torch.get_num_threads() if threads is None else kernels.resolve_threads(threads)
        y = K_.tq2_linear(x2d, packed.data, N, packed.scale_value, threads=nt, isa=path)
    if bias is not None:
        y = y.add_(bias)
    if x.dim() != 2:
        y = y.reshape(*x.shape[:-1], N)  # [..., N]
    return y if x.dtype == torch.float32 else y.to(x.dtype)


class PackedTernaryLinear(nn.Module):
    """Inference form of BitLinear: optional input norm, then `ternary_linear` on packed weights.

    Buffers (saved in state_dict): `weight_packed` uint8 [packed_nbytes("tq2", N, K)],
    `weight_scale` float32 0-d, `bias` [N] when present; `norm` is BitLinear's input RMSNorm
    when built with `from_bitlinear` (None for a bare linear). In memory `weight_packed` may
    hold the same weight re-coded as t81 (`to_layout_`, `layout`): state dicts still see tq2
    bytes (converted on save; bytes loaded into a t81 layer are re-coded).
    For fp32 inputs the output equals BitLinear's no-grad forward within the tolerance stated in
    this module's docstring; for other dtypes activations are quantized from their fp32 value
    (quant.act_quant_int8), as the packed engine does.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.norm = norm
        self.in_features, self.out_features = in_features, out_features
        nbytes = packed_nbytes("tq2", out_features, in_features)
        # 0x55 = four codes 1 = an all-zero weight until one is loaded
        self.register_buffer("weight_packed", torch.full((nbytes,), 0x55, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
        else:
            self.bias = None
        self._packed: PackedTernary | None = None
        self._packed_key: tuple[int, int, int, int] | None = None

    layout = "tq2"  # what weight_packed holds in memory: "tq2" or "t81" (set by to_layout_)

    def to_layout_(self, layout: str) -> PackedTernaryLinear:
        """Re-code weight_packed in place as `layout` ("tq2" or "t81": the same weight and size;
        t81 runs the AVX-512 VBMI kernel, mulfree.ternary.packing). Returns the layer."""
        if layout not in ("tq2", "t81"):
            raise MulfreeError(f"layout must be tq2 or t81, not {layout!r}")
        if layout != self.layout:
            with torch.no_grad():
                recode_(self.weight_packed, self.layout, layout, self.out_features, self.in_features)
            self.layout = layout
            self._packed = None
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight_packed"
        if self.layout != "tq2" and key in destination:  # the state dict's format is tq2
            destination[key] = self.packed().to_format("tq2").data

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight_packed"
        src = state_dict.get(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        wp = self.weight_packed
        if self.layout != "tq2" and src is not None and wp.numel():  # tq2 bytes just came in
            if wp.data_ptr() == src.data_ptr():  # load_state_dict(assign=True): not the caller's
                self.weight_packed = wp = wp.clone()
            with torch.no_grad():
                recode_(wp, "tq2", self.layout, self.out_features, self.in_features)
            self._packed = None

    @classmethod
    def from_packed(
        cls,
        packed: PackedTernary,
        bias: torch.Tensor | None = None,
        norm: nn.Module | None = None,
    ) -> PackedTernaryLinear:
        """From a PackedTernary (tq1 is converted to tq2), with optional bias and input norm."""
        if packed.format not in FORMATS:
            raise MulfreeError(f"unknown packed format {packed.format!r}")
        packed = packed.to_format("tq2")
        m = cls(packed.in_features, packed.out_features, bias=bias is not None, norm=norm)
        m.weight_packed.copy_(packed.data)
        m.weight_scale.copy_(packed.scale)
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        return m

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> PackedTernaryLinear:
        """From a float weight [N, K], quantized with BitLinear's rule (absmean ternary)."""
        return cls.from_packed(PackedTernary.from_float(weight), bias)

    @classmethod
    def from_bitlinear(cls, module: nn.Module) -> PackedTernaryLinear:
        """From a BitLinear (or any nn.Linear-like module): its .weight, .bias and, when it has
        one, a copy of its input norm `.norm`, so that forward(x) equals module(x)."""
        norm = getattr(module, "norm", None)
        norm = copy.deepcopy(norm).requires_grad_(False) if norm is not None else None
        packed = PackedTernary.from_float(module.weight)
        return cls.from_packed(packed, getattr(module, "bias", None), norm)

    def packed(self) -> PackedTernary:
        """The weight as a PackedTernary view of the buffers (rebuilt if they were replaced)."""
        # rebuilt when a buffer is replaced (new address) or modified in place (version counter,
        # e.g. load_state_dict)
        wp, ws = self.weight_packed, self.weight_scale
        key = (wp.data_ptr(), wp._version, ws.data_ptr(), ws._version)
        if self._packed is None or key != self._packed_key:
            self._packed = PackedTernary(wp, ws, self.out_features, self.in_features, self.layout)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return ternary_linear(x, self.packed(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, format={self.layout}"
