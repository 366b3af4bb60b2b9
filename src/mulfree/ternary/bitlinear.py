"""BitLinear: the ternary-weight, int8-activation linear layer of the MatMul-free LM (QAT form).

Forward, as in the official `mmfreelm.ops.bitnet.BitLinear`:
    x_n = RMSNorm(x)                (own weight `norm.weight`, eps 1e-8, float32 inside)
    x_q = int8 absmax fake-quant of x_n per token       (mulfree.ternary.quant)
    w_q = ternary absmean fake-quant of W per tensor    (mulfree.ternary.quant)
    y   = x_q @ w_q^T (+ bias)
While gradients are being recorded, the quantizers pass gradients straight through
(`x + (q(x) - x).detach()`). Without autograd the exact quantized values are used: the STE sum
equals them only up to one float rounding, and exact values are what the packed kernels compute.

`quantize_(model, TernaryConfig())` turns a model's `nn.Linear` layers into BitLinear in place.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mulfree._swap import swap_modules_
from mulfree.errors import MulfreeError
from mulfree.lmul.emul import ElementwiseMul
from mulfree.ternary.quant import act_fake_quant, weight_fake_quant

# Epsilon of BitLinear's input RMSNorm in the official code (not the model's rms_norm_eps).
BITLINEAR_NORM_EPS = 1e-8


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype for norms and recurrences: float32, or float64 when the input is float64."""
    return torch.promote_types(x.dtype, torch.float32)


class RMSNorm(nn.Module):
    """y = x * (1 / sqrt(mean(x^2) + eps)) * weight, computed in float32, returned in x's dtype.

    Same arithmetic as the official fused RMSNorm kernel (which loads to float32 and stores in the
    input dtype). Shared by BitLinear's input norm and the model's norms. (float64 inputs stay
    float64, which tests use to rule out rounding-order effects.)
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        # The fully multiplication-free model switches this to L-Mul (set_elementwise_mul).
        self.emul = ElementwiseMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = acc_dtype(x)
        xf = x.to(dt)
        if self.emul.exact:
            rstd = 1.0 / torch.sqrt(xf.square().mean(-1, keepdim=True) + self.eps)
            return (xf * rstd * self.weight.to(dt)).to(x.dtype)
        mul = self.emul  # squares and scalings as L-Mul; the inverse square root remains
        rstd = torch.rsqrt(mul(xf, xf).mean(-1, keepdim=True) + self.eps)
        return mul(mul(xf, rstd), self.weight.to(dt)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class BitLinear(nn.Linear):
    """Ternary-weight linear layer with its own input RMSNorm (`norm.weight`).

    Subclasses nn.Linear like the official class, so `weight` [out, in] (and optional `bias`)
    keep their usual names, shapes and initialisation hooks.

    In eval mode without autograd the quantized weight is computed once and kept (a second copy
    of the weight, not saved in the state dict) until the weight changes: re-quantizing every
    weight on every decoding step would cost many times the matmul itself. train() drops the copy.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.norm = RMSNorm(in_features, eps=BITLINEAR_NORM_EPS)
        if device is not None or dtype is not None:
            self.norm.to(device=device, dtype=dtype)
        self._wq_cache: tuple[tuple, torch.Tensor] | None = None

    def _quantized_weight(self) -> torch.Tensor:
        w = self.weight
        # _version changes on every in-place update (optimizer steps, load_state_dict, copy_),
        # data_ptr on reassignment or .to(): either invalidates the cached value.
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._wq_cache is None or self._wq_cache[0] != key:
            self._wq_cache = (key, weight_fake_quant(w))
        return self._wq_cache[1]

    def train(self, mode: bool = True):
        if mode:
            self._wq_cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        w = self.weight
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            x_q = x + (act_fake_quant(x) - x).detach()
            w_q = w + (weight_fake_quant(w) - w).detach()
        else:
            x_q = act_fake_quant(x)
            w_q = weight_fake_quant(w) if self.training else self._quantized_weight()
        return F.linear(x_q, w_q, self.bias)


@dataclass
class TernaryConfig:
    """What `quantize_` converts.

    skip: fnmatch patterns of module names (as in `model.named_modules()`) to leave as nn.Linear;
        the output head is skipped by default, as BitNet-style recipes usually do.
    """

    skip: tuple[str, ...] = ("lm_head", "*.lm_head")

    def __post_init__(self):
        if isinstance(self.skip, str):
            raise MulfreeError(
                "TernaryConfig.skip must be a tuple of patterns, not a single string"
            )
        self.skip = tuple(self.skip)


def quantize_(model: nn.Module, config: TernaryConfig | None = None) -> nn.Module:
    """Replace every nn.Linear of `model` (except those matching `config.skip`) by a BitLinear.

    In place; weights and biases are kept (the same Parameter objects), the new input-norm weights
    are ones, so the converted layer computes the ternary/int8 quantization of RMSNorm(x) @ W^T.
    Returns the model for chaining.
    """
    config = config or TernaryConfig()

    def ternary(name: str, old: nn.Module) -> BitLinear | None:
        if type(old) is not nn.Linear or any(fnmatch.fnmatchcase(name, p) for p in config.skip):
            return None
        new = BitLinear(old.in_features, old.out_features, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)  # fmt: skip
        new.weight = old.weight
        if old.bias is not None:
            new.bias = old.bias
        return new

    swap_modules_(model, ternary)
    return model
