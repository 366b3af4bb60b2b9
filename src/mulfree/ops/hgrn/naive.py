"""The HGRN (MLGRU) recurrence, written as the plain loop it is: the spec.

    h_t = f_t * h_{t-1} + x_t        (elementwise, h_{-1} = initial_state or 0)

This is what the official `fused_recurrent_hgrn` Triton kernel computes (its `g` argument is the
forget gate itself, not its log). The fast form in `chunk.py` must equal it on outputs and
gradients.
"""

from __future__ import annotations

import torch


def naive_recurrent_hgrn(
    x: torch.Tensor,
    f: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mul=torch.mul,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequential reference of h_t = f_t * h_{t-1} + x_t, accumulated in float32 (or float64).

    Args:
        x: [..., T, D] input (already gated: the model passes SiLU(i) * (1 - f)).
        f: [..., T, D] forget gate in [0, 1], same shape as x.
        initial_state: [..., D] state before the first step, or None for zeros.
        output_final_state: also return h_{T-1}.
        mul: the product f_t * h_{t-1} (an `ElementwiseMul` in L-Mul mode: the fully
            multiplication-free model runs this loop, since L-Mul is not associative and the
            chunked scan would change its value).

    Returns:
        (o, final_state): o is [..., T, D] in x's dtype holding every h_t; final_state is
        [..., D] float32 (float64 for float64 x) or None.
    """
    if x.shape != f.shape:
        raise ValueError(
            f"x and f must have the same shape, got {tuple(x.shape)} and {tuple(f.shape)}"
        )
    T = x.shape[-2]
    dt = torch.promote_types(x.dtype, torch.float32)  # float32 state, float64 for float64 inputs
    h = x.new_zeros(x.shape[:-2] + x.shape[-1:], dtype=dt)
    if initial_state is not None:
        h = h + initial_state.to(dt)
    outs = []
    for t in range(T):
        h = mul(f[..., t, :].to(dt), h) + x[..., t, :].to(dt)
        outs.append(h)
    o = torch.stack(outs, dim=-2) if outs else x.new_zeros(x.shape, dtype=dt)
    return o.to(x.dtype), (h if output_final_state else None)
