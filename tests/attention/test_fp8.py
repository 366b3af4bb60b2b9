"""fp8 attention products against a scalar twin: power-of-two scales from math.frexp, fp8 rounding
of single values, float64 sums. The torch path sums in float32 (BLAS order), so the comparison
allows FP32_SUM_RTOL; the fp8 operands themselves must agree exactly (checked through scales)."""

from __future__ import annotations

import math

import pytest
import torch

from mulfree.attention import LMulConfig, _fp8_pv, _fp8_qk, _pow2_exponent
from tests._tolerances import FP32_REASSOC

FP32_SUM_RTOL = FP32_REASSOC.rtol
FMT = {"fp8_e4m3": (torch.float8_e4m3fn, 448.0), "fp8_e5m2": (torch.float8_e5m2, 57344.0)}


def scale_exp(amax: float, fmax: float) -> int:
    """Largest e with amax * 2^e <= fmax (0 for amax == 0)."""
    if amax == 0:
        return 0
    e = math.floor(math.log2(fmax / amax)) + 1
    while amax * 2.0**e > fmax:
        e -= 1
    return e


def q8(x: float, e: int, fp8) -> float:
    return torch.tensor(x * 2.0**e, dtype=torch.float32).to(fp8).item()


@pytest.mark.parametrize("amax", [1e-20, 0.3, 1.0, 447.9, 448.0, 449.0, 3e6])
def test_pow2_exponent(amax):
    e = _pow2_exponent(torch.tensor([amax]), 9).item()
    assert e == scale_exp(amax, 448.0)


def test_pow2_exponent_edge_cases():
    e = _pow2_exponent(torch.tensor([0.0, float("inf"), 1e-35]), 9).tolist()
    assert e == [0, 0, 100]  # zero and non-finite: no scaling; tiny maxima: clamped to 2^100


@pytest.mark.parametrize("kind", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("scaling", ["per_token", "per_tensor"])
def test_fp8_products_equal_scalar_twin(kind, scaling):
    fp8, fmax = FMT[kind]
    cfg = LMulConfig(kind=kind, fp8_scaling=scaling)
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, S, D = 1, 4, 2, 3, 5, 6
    groups = H // Hkv
    q = torch.randn(B, H, T, D, generator=g) * 3
    k = torch.randn(B, Hkv, S, D, generator=g)
    v = torch.randn(B, Hkv, S, D, generator=g) * 10
    p = torch.rand(B, H, T, S, generator=g).softmax(-1)
    got_s = _fp8_qk(q, k, cfg, groups)
    got_o = _fp8_pv(p, v, cfg, groups)
    per_token = scaling == "per_token"
    for h in range(H):
        kv = h // groups
        qm, km, vm, pm = q[0, h].tolist(), k[0, kv].tolist(), v[0, kv].tolist(), p[0, h].tolist()
        amax = lambda rows: max(abs(x) for r in rows for x in r)  # noqa: E731
        eq = [scale_exp(amax([r]) if per_token else amax(qm), fmax) for r in qm]
        ek = [scale_exp(amax([r]) if per_token else amax(km), fmax) for r in km]
        ev = [scale_exp(amax([r]) if per_token else amax(vm), fmax) for r in vm]
        for i in range(T):
            for j in range(S):
                s = sum(q8(qm[i][d], eq[i], fp8) * q8(km[j][d], ek[j], fp8) for d in range(D))
                want = s * 2.0 ** -(eq[i] + ek[j])
                assert got_s[0, h, i, j].item() == pytest.approx(want, rel=FP32_SUM_RTOL, abs=1e-30)
            # P·V: per token, v's per-key scale is folded into p before p is scaled per row.
            pr = [pm[i][j] * (2.0 ** -ev[j] if per_token else 1.0) for j in range(S)]
            ep = scale_exp(max(abs(x) for x in pr) if per_token else amax(pm), fmax)
            for d in range(D):
                o = sum(q8(pr[j], ep, fp8) * q8(vm[j][d], ev[j], fp8) for j in range(S))
                want = o * 2.0 ** -(ep + (0 if per_token else ev[0]))
                assert got_o[0, h, i, d].item() == pytest.approx(want, rel=FP32_SUM_RTOL, abs=1e-6)
