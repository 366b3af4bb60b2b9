"""Parallel (chunked) form of the HGRN recurrence h_t = f_t * h_{t-1} + x_t, for training and prefill.

The step (a, b): h -> a * h + b composes associatively: (a2, b2) after (a1, b1) = (a2 a1, a2 b1 + b2).
So the whole sequence is a prefix scan:
1. split time into chunks of CHUNK steps and scan inside every chunk at once with the doubling
   (Hillis-Steele) scan: log2(CHUNK) passes over the whole [N, T, D] tensor;
2. scan the per-chunk summaries (the last (a, b) of each chunk) the same way, giving the state that
   enters every chunk;
3. add that state, decayed by the chunk-local gate products: h = b + a * h_in.
Gate products stay in linear space: they are products of numbers in [0, 1], so they can only
underflow towards 0, which is the correct limit (a log-space cumsum would need exp(-A) and can
overflow). All arithmetic is float32 (float64 if the inputs are float64).

The backward pass is the same recurrence run backwards in time (dL/dh_t = do_t + f_{t+1} dL/dh_{t+1}),
so it reuses the scan instead of storing log2(T) autograd intermediates.
"""

from __future__ import annotations

import torch

# Steps per chunk. 64 keeps the in-chunk passes at 6 and the cross-chunk scan short for T up to
# tens of thousands; any power of two gives the same result up to float32 rounding.
CHUNK = 64


def _inclusive_scan(
    a: torch.Tensor, b: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Doubling scan along `dim` from a zero state: returns (prod_{s<=t} a_s, h_t)."""
    L = a.shape[dim]
    k = 1
    while k < L:
        a_hi, a_lo = a.narrow(dim, k, L - k), a.narrow(dim, 0, L - k)
        b_hi, b_lo = b.narrow(dim, k, L - k), b.narrow(dim, 0, L - k)
        b = torch.cat([b.narrow(dim, 0, k), torch.addcmul(b_hi, a_hi, b_lo)], dim)
        a = torch.cat([a.narrow(dim, 0, k), a_hi * a_lo], dim)
        k *= 2
    return a, b


def _scan(x: torch.Tensor, f: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """x, f: [N, T, D], h0: [N, D] or None, all one float dtype -> h: [N, T, D]."""
    N, T, D = x.shape
    C = min(CHUNK, T)
    n = -(-T // C)
    pad = n * C - T
    if pad:
        # Steps appended after the end (f = 1, x = 0) cannot change any earlier state.
        x = torch.cat([x, x.new_zeros(N, pad, D)], 1)
        f = torch.cat([f, f.new_ones(N, pad, D)], 1)
    a, b = _inclusive_scan(f.view(N, n, C, D), x.view(N, n, C, D), dim=2)  # [N, n, C, D] each
    # State after each chunk from a zero start, and the gate product across chunks.
    pa, sb = _inclusive_scan(a[:, :, -1], b[:, :, -1], dim=1)  # [N, n, D] each
    if h0 is not None:
        sb = torch.addcmul(sb, pa, h0.unsqueeze(1))
    # State entering chunk j is the state after chunk j - 1 (h0 or zero for the first chunk).
    first = h0.unsqueeze(1) if h0 is not None else x.new_zeros(N, 1, D)
    h_in = torch.cat([first, sb[:, :-1]], 1)  # [N, n, D]
    h = torch.addcmul(b, a, h_in.unsqueeze(2))  # [N, n, C, D]
    return h.reshape(N, n * C, D)[:, :T]


class _ChunkHGRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, h0):
        h = _scan(x, f, h0)
        ctx.save_for_backward(f, h, h0)
        return h

    @staticmethod
    def backward(ctx, dh):
        f, h, h0 = ctx.saved_tensors
        N, T, D = f.shape
        # g_t = dL/dh_t (total) = dh_t + f_{t+1} g_{t+1}: the forward scan on time-reversed inputs.
        f_next = torch.cat([f[:, 1:], f.new_zeros(N, 1, D)], 1)  # [N, T, D], f_next_t = f_{t+1}
        g = _scan(dh.flip(1).contiguous(), f_next.flip(1).contiguous(), None).flip(1)
        h_prev = torch.cat(
            [h0.unsqueeze(1) if h0 is not None else h.new_zeros(N, 1, D), h[:, :-1]], 1
        )
        df = g * h_prev
        dh0 = g[:, 0] * f[:, 0] if h0 is not None and ctx.needs_input_grad[2] else None
        return g, df, dh0


def chunk_hgrn(
    x: torch.Tensor,
    f: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parallel h_t = f_t * h_{t-1} + x_t (float32 inside); same contract as `naive_recurrent_hgrn`.

    Args:
        x: [..., T, D] input (already gated: the model passes SiLU(i) * (1 - f)).
        f: [..., T, D] forget gate in [0, 1], same shape as x.
        initial_state: [..., D] state before the first step, or None for zeros.
        output_final_state: also return h_{T-1}.

    Returns:
        (o, final_state): o is [..., T, D] in x's dtype holding every h_t; final_state is
        [..., D] float32 (float64 for float64 x) or None. Differentiable in x, f and initial_state.
    """
    if x.shape != f.shape:
        raise ValueError(
            f"x and f must have the same shape, got {tuple(x.shape)} and {tuple(f.shape)}"
        )
    lead, T, D = x.shape[:-2], x.shape[-2], x.shape[-1]
    if initial_state is not None and initial_state.shape != lead + (D,):
        raise ValueError(
            f"initial_state must have shape {tuple(lead + (D,))}, got {tuple(initial_state.shape)}"
        )
    # float32 state, or float64 for float64 inputs.
    dt = torch.promote_types(x.dtype, torch.float32)
    if T == 0:
        final = (
            initial_state.to(dt)
            if initial_state is not None
            else x.new_zeros(lead + (D,), dtype=dt)
        )
        return x, (final if output_final_state else None)
    xf = x.to(dt).reshape(-1, T, D).contiguous()  # [N, T, D], N = prod(lead)
    ff = f.to(dt).reshape(-1, T, D).contiguous()  # [N, T, D]
    h0 = (
        initial_state.to(dt).reshape(-1, D).contiguous() if initial_state is not None else None
    )  # [N, D]
    if T == 1:
        # One decoding step: the recurrence itself, as the spec loop writes it (no scan set-up).
        prev = h0.unsqueeze(1) if h0 is not None else xf.new_zeros(xf.shape)  # [N, 1, D]
        h = ff * prev + xf  # [N, 1, D]
    else:
        h = _ChunkHGRNFunction.apply(xf, ff, h0)  # [N, T, D]
    o = h.reshape(x.shape)  # [..., T, D]
    final = h[:, -1].reshape(lead + (D,)) if output_final_state else None  # [..., D]
    return o.to(x.dtype), final
