"""BitLinear quantizers (the spec shared by the PyTorch model and the packed kernels).

Rules, as in the official MatMul-free `hgrn_bit` code:
- activations: per token (last dim) int8 absmax, scale = 127 / max(|x|).clamp_min(1e-5),
  q = round(x * scale).clamp(-128, 127);
- weights: per tensor ternary absmean, scale = 1 / mean(|W|).clamp_min(1e-5),
  q = round(W * scale).clamp(-1, 1).
`round` is torch.round (half to even). Dequantized values are q / scale.
"""

from __future__ import annotations

import torch

ACT_EPS = 1e-5
WEIGHT_EPS = 1e-5


def act_quant_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., K] float -> (q: [..., K] int8, scale: [..., 1] float32). x ≈ q / scale."""
    xf = x.float()
    scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp_min(ACT_EPS)
    q = (xf * scale).round().clamp_(-128, 127).to(torch.int8)
    return q, scale


def weight_quant_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] float -> (q: [N, K] int8 in {-1, 0, 1}, scale: 0-d float32). w ≈ q / scale."""
    wf = w.float()
    scale = 1.0 / wf.abs().mean().clamp_min(WEIGHT_EPS)
    q = (wf * scale).round().clamp_(-1, 1).to(torch.int8)
    return q, scale


def act_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize activations in x's dtype (forward value of BitLinear's STE)."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp_min(ACT_EPS)
    return (x * scale).round().clamp(-128, 127) / scale


def weight_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize weights in w's dtype (forward value of BitLinear's STE)."""
    scale = 1.0 / w.abs().mean().clamp_min(WEIGHT_EPS)
    return (w * scale).round().clamp(-1, 1) / scale
