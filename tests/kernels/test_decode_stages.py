"""The fused decode stages of csrc/mf_decode.c: the AVX2 variants against the scalar spec.

The scalar stages use libm expf; the AVX2 ones a polynomial exponential (exp_avx2, <= 2 ulp), so
the two differ by float rounding only. Tolerance: rtol 1e-5 plus atol 1e-6 x the largest |value|
(a few ulp through exp, one division and the RMS normalization that follows; 1 - sigmoid(v)
near 0 amplifies exp's relative error) — a wrong formula or lane shows up as O(1) differences.
Inputs include the extremes where exp saturates (|v| up to 200) and lengths that leave tails.
(The scalar and AVX2 stages are each pinned bit for bit by their NumPy twins in
mulfree.engine.decode_ref, tests/engine/test_decode_ref.py; the whole step against the torch decode
step in tests/engine.)
"""

import pytest
import torch

from mulfree import kernels
from mulfree.kernels import ISA_LEVELS
from mulfree.kernels._core import core
from tests._tolerances import STAGE_EXP

pytestmark = pytest.mark.skipif(
    not kernels.available() or "avx2" not in kernels.available_isas(),
    reason="needs the compiled core on a CPU with AVX2",
)


def _inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g) * 4
    v[:6] = torch.tensor([0.0, -0.0, 88.0, -88.0, 200.0, -200.0])[: min(6, n)]
    return v


def _rtol_close(a, b):
    torch.testing.assert_close(
        a, b, rtol=STAGE_EXP.rtol, atol=STAGE_EXP.atol * float(b.abs().max())
    )


@pytest.mark.parametrize("n", [8, 13, 1024, 2819])
@pytest.mark.parametrize("batch", [1, 2])
def test_glu_avx2_equals_scalar(n, batch):
    gu = torch.stack([torch.cat([_inputs(n, b), _inputs(n, 10 + b)]) for b in range(batch)])
    dw = _inputs(n, 99).abs() + 0.1
    outs = {}
    for isa in ("scalar", "avx2"):
        out = torch.empty(batch, n)
        used = core().dec_glu(gu.data_ptr(), batch, n, dw.data_ptr(), 1e-6, out.data_ptr(),
                              ISA_LEVELS[isa])  # fmt: skip
        assert used == ISA_LEVELS[isa]
        outs[isa] = out
    assert torch.isfinite(outs["scalar"]).all()
    _rtol_close(outs["avx2"], outs["scalar"])


@pytest.mark.parametrize("n", [8, 13, 1024])
@pytest.mark.parametrize("lower_bound", [False, True])
def test_mlgru_avx2_equals_scalar(n, lower_bound):
    B = 2
    ys = 3 * n  # rows [i | f | g], as the fused i/f/g projection writes them
    y = torch.stack([torch.cat([_inputs(n, 3 * b + k) for k in range(3)]) for b in range(B)])
    lb = torch.rand(n, generator=torch.Generator().manual_seed(5)) * 0.5
    olb = 1 - lb
    gw, ow = _inputs(n, 7).abs() + 0.1, _inputs(n, 8).abs() + 0.1
    h0 = _inputs(B * n, 9).reshape(B, n) * 0.1
    res = {}
    for isa in ("scalar", "avx2"):
        state, out = h0.clone(), torch.empty(B, n)
        base = y.data_ptr()
        core().dec_mlgru(base, base + 4 * n, base + 8 * n, ys, B, n,
                         lb.data_ptr() if lower_bound else 0, olb.data_ptr() if lower_bound else 0,
                         state.data_ptr(), gw.data_ptr(), 1e-6, ow.data_ptr(), 1e-6,
                         out.data_ptr(), ISA_LEVELS[isa])  # fmt: skip
        res[isa] = (state, out)
    assert torch.isfinite(res["scalar"][1]).all()
    _rtol_close(res["avx2"][0], res["scalar"][0])
    _rtol_close(res["avx2"][1], res["scalar"][1])
