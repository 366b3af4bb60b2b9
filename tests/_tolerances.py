"""Named tolerances for the test suite: one place, each with the reason it is what it is.

Three kinds, by what lies between the two things compared (../shared/STYLE.md, habit 16):

- **Bit-exact** (`EXACT`): integer and packing paths, and float paths that run the same
  operations in the same order (a compiled stage and its Python twin, a batched packed step and
  single steps). Any difference is a bug.
- **Float equivalence**: two float paths that compute the same function with sums in another
  order. Run them in float64 wherever the code allows (`F64`): re-association then moves results
  by ~1e-15 relative, which can never reach an int8 rounding boundary by luck. `FP32_REASSOC` is
  for float32 paths with *no* quantizer downstream (BLAS blockings, scans).
- **Through int8 quantization**: float32 paths that differ by rounding *before* a quantizer
  (BitLinear's per-token absmax int8 activations). A 1e-7 difference can flip one code and move
  that activation by its token's amax / 127, so no elementwise atol is safe on every CPU. Compare
  instead with a relative RMSE bound (`assert_close_through_int8`) and greedy choices only where
  the reference's top-2 gap is wider than the bound (`assert_argmax_agrees`): a real bug (a state
  one step off, a wrong gate) shows up as an O(1) relative error and as wrong decisions at wide
  margins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    why: str

    def kw(self) -> dict:
        """As keyword arguments of torch.testing.assert_close / np.testing.assert_allclose."""
        return {"rtol": self.rtol, "atol": self.atol}


EXACT = Tol(0.0, 0.0, "same operations in the same order, or integer arithmetic")
F64 = Tol(1e-9, 1e-9, "float64 re-association: ~1e-15 relative, far from any int8 boundary")
F64_GRAD = Tol(1e-8, 1e-9, "float64 gradients: the backward sums over more terms than the forward")
FP32_REASSOC = Tol(1e-5, 1e-5, "float32 sums in another order (BLAS blocking, scan), no quantizer")
FP32_LOGITS = Tol(0.0, 1e-5, "float32 logits of size ~1 through float matmuls only: a few ulps")
# The doubling scan (chunk_hgrn) re-associates the loop's float32 products and sums; gates in
# [0, 1] and inputs of size ~1 keep the difference to a few ulps times log2(T).
SCAN = Tol(1e-5, 1e-5, "float32 scan vs loop, no quantizer")
# Batched, right-padded log-likelihoods vs one forward per request: BLAS on other shapes, summed
# over a continuation's tokens (float32, no quantizer in the scored models).
LOGLIK = Tol(0.0, 1e-4, "float32 BLAS blocking summed over a continuation")
# Training runs that cut one global batch differently (micro-batches, 1 vs 2 ranks) sum the same
# gradient terms in another order; AdamW over a few steps keeps losses within 1e-5 relative and
# weights within 1e-4 (seen <= 7e-6 after 10 steps: ~10x headroom).
TRAIN_LOSS = Tol(1e-5, 0.0, "gradient sums in another order, a few optimizer steps")
TRAIN_WEIGHT = Tol(0.0, 1e-4, "gradient sums in another order, 10 optimizer steps")
# The AVX2 decode stages use a polynomial exp (<= 2 ulp) where the scalar ones call libm expf,
# then one division and an RMS normalization: a few ulp relative, plus 1e-6 of the largest value
# because 1 - sigmoid(v) near 0 amplifies exp's relative error. A wrong lane is O(1).
STAGE_EXP = Tol(1e-5, 1e-6, "polynomial vs libm exp through one normalization")

# One int8 flip moves one activation by amax/127 (~0.8 % of its token's largest); a handful of
# flips across a tiny model move logits by well under 1 % RMS. 2 % leaves margin and is still
# ~50x below what a real bug gives (relative RMSE ~ 1).
INT8_REL_RMSE = 0.02


def rel_rmse(got, want) -> float:
    """RMS of (got - want) over RMS of want, in float64."""
    g = torch.as_tensor(np.asarray(got) if not torch.is_tensor(got) else got).double()
    w = torch.as_tensor(np.asarray(want) if not torch.is_tensor(want) else want).double()
    assert g.shape == w.shape, (g.shape, w.shape)
    den = w.square().mean().sqrt().item()
    return (g - w).square().mean().sqrt().item() / max(den, 1e-30)


def assert_close_through_int8(got, want, bound: float = INT8_REL_RMSE, what: str = "") -> None:
    """Float32 paths separated by rounding before an int8 quantizer (module docstring)."""
    e = rel_rmse(got, want)
    assert e <= bound, f"{what}relative RMSE {e:.3g} > {bound} (through int8 quantization)"


def assert_argmax_agrees(got, want, margin: float | None = None) -> None:
    """Greedy choices agree wherever they are decidable.

    Rows are the last dimension's distributions. Where the reference's best logit leads its
    second by more than `margin`, the choices must be equal; elsewhere (a near tie, which a
    rounding flip may legitimately break) the chosen token must be within `margin` of the best.
    `margin` defaults to 2 x the largest absolute difference seen, so the check adapts to the run
    and still catches a wrong choice at a wide gap.
    """
    g = torch.as_tensor(got).double().reshape(-1, torch.as_tensor(got).shape[-1])
    w = torch.as_tensor(want).double().reshape(-1, torch.as_tensor(want).shape[-1])
    if margin is None:
        margin = 2.0 * (g - w).abs().max().item()
    top2 = w.topk(2, dim=-1).values
    decidable = (top2[:, 0] - top2[:, 1]) > margin
    pick_g, pick_w = g.argmax(-1), w.argmax(-1)
    bad = decidable & (pick_g != pick_w)
    assert not bad.any(), (
        f"greedy choice differs at a gap > {margin:.3g} in rows {bad.nonzero().flatten().tolist()}"
    )
    chosen = w.gather(1, pick_g[:, None])[:, 0]
    assert (top2[:, 0] - chosen <= margin).all(), "a chosen token is far below the reference's best"
