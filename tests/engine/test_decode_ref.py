"""The compiled decode stages (csrc/mf_decode.c) equal their NumPy twins (engine/decode_ref.py)
bit for bit, stage by stage, at every ISA level this CPU has (tolerance EXACT: the twins run the
same float32 operations in the same order, tests/_tolerances.py). Inputs include the extremes
where exp saturates (|v| up to 200), +-0, NaN in the gate inputs, and lengths that leave
vector-loop tails; batch 1 and 2."""

from __future__ import annotations

import numpy as np
import pytest

from mulfree import kernels
from mulfree.engine import decode_ref as ref
from mulfree.kernels import ISA_LEVELS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

# every compiled level the CPU has ("torch" in available_isas() is the uncompiled fallback)
LEVELS = [i for i in kernels.available_isas() if i in ISA_LEVELS] if kernels.available() else []
NAME_OF = {v: k for k, v in ISA_LEVELS.items()}


def _core():
    from mulfree.kernels._core import core

    return core()


def _vals(n, seed, extremes=True):
    v = (np.random.default_rng(seed).standard_normal(n) * 4).astype(np.float32)
    if extremes:
        ex = np.array([0.0, -0.0, 88.0, -88.0, 200.0, -200.0, 87.5, -87.5], dtype=np.float32)
        v[: min(len(ex), n)] = ex[: min(len(ex), n)]
    return v


def _ptr(a: np.ndarray) -> int:
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data


def _same_bits(got, want, what):
    g, w = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert g.shape == w.shape, what
    diff = np.flatnonzero(g.view(np.uint32) != w.view(np.uint32))
    assert diff.size == 0, f"{what}: {diff.size} of {g.size} differ, first at {diff[:5]}"


def test_exp_twins():
    x = np.concatenate([_vals(4096, 1), np.linspace(-100, 100, 2001, dtype=np.float32)])
    # libm through ctypes is the function the scalar stages call: equal to a correctly rounded
    # exp within 1 ulp (a check that the binding is right, not a property we rely on)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    ok = np.isfinite(want) & (want > 1e-37)
    ulp = np.abs(ref.expf(x)[ok].view(np.int32) - want[ok].view(np.int32))
    assert ulp.max() <= 1
    # exp_avx2: within 4 ulp below ~88.38; from there 2^n overflows one step early (n = 128), so
    # it gives +inf where exp is still finite (< 3.4e38) — harmless in the stages, which use it
    # only as 1 + exp(-v) (sigmoid, silu -> 0 either way), and part of the spec the twin pins.
    e = ref.exp_avx2(x)
    near = ok & (x < 88.38)
    assert np.abs(e[near].view(np.int32) - want[near].view(np.int32)).max() <= 4
    assert np.isinf(ref.exp_avx2(np.float32([88.5, 89.0]))).all()
    assert ref.exp_avx2(np.float32([np.nan]))[0] == ref.exp_avx2(np.float32([-87.3]))[0]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n", [8, 13, 1024, 2819])
@pytest.mark.parametrize("batch", [1, 2])
def test_glu_stage_equals_twin(level, n, batch):
    gu = np.stack([np.concatenate([_vals(n, b), _vals(n, 10 + b)]) for b in range(batch)])
    dw = np.abs(_vals(n, 99, extremes=False)) + np.float32(0.1)
    out = np.empty((batch, n), dtype=np.float32)
    used = _core().dec_glu(_ptr(gu), batch, n, _ptr(dw), 1e-6, _ptr(out), ISA_LEVELS[level])
    _same_bits(out, ref.glu(gu, dw, 1e-6, isa=NAME_OF[used]), f"glu at {level}")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n", [8, 13, 1024])
@pytest.mark.parametrize("lower_bound", [False, True], ids=["no-lb", "lb"])
def test_mlgru_stage_equals_twin(level, n, lower_bound):
    B = 2
    y = np.stack([np.concatenate([_vals(n, 3 * b + k) for k in range(3)]) for b in range(B)])
    y[1, n + 3] = np.nan  # a NaN forget-gate input: propagates the same way in both
    lb = (np.random.default_rng(5).random(n) * 0.5).astype(np.float32)
    olb = (np.float32(1) - lb).astype(np.float32)
    gw = np.abs(_vals(n, 7, extremes=False)) + np.float32(0.1)
    ow = np.abs(_vals(n, 8, extremes=False)) + np.float32(0.1)
    h0 = (_vals(B * n, 9).reshape(B, n) * np.float32(0.1)).astype(np.float32)
    state, out = h0.copy(), np.empty((B, n), dtype=np.float32)
    base = _ptr(y)
    used = _core().dec_mlgru(
        base, base + 4 * n, base + 8 * n, 3 * n, B, n,
        _ptr(lb) if lower_bound else 0, _ptr(olb) if lower_bound else 0,
        _ptr(state), _ptr(gw), 1e-6, _ptr(ow), 1e-6, _ptr(out), ISA_LEVELS[level],
    )  # fmt: skip
    h_want, out_want = ref.mlgru(
        y[:, :n], y[:, n : 2 * n], y[:, 2 * n :], lb if lower_bound else None,
        olb if lower_bound else None, h0, gw, 1e-6, ow, 1e-6, isa=NAME_OF[used],
    )  # fmt: skip
    _same_bits(state, h_want, f"mlgru state at {level}")
    _same_bits(out, out_want, f"mlgru out at {level}")


@pytest.mark.parametrize("n", [5, 64, 2048])
@pytest.mark.parametrize("outs", [1, 3])
@pytest.mark.parametrize("with_add", [False, True], ids=["no-add", "add"])
def test_norm2_stage_equals_twin(n, outs, with_add):
    B = 2
    x = np.stack([_vals(n, 20 + b, extremes=False) for b in range(B)])
    add = np.stack([_vals(n, 30 + b, extremes=False) for b in range(B)])
    w1 = _vals(n, 40, extremes=False)
    w2s = [_vals(n, 50 + c, extremes=False) for c in range(outs)]
    got_x = x.copy()
    got = [np.empty((B, n), dtype=np.float32) for _ in range(outs)]
    extra = []
    for c in (1, 2):
        extra += [_ptr(w2s[c]), _ptr(got[c])] if c < outs else [0, 0]
    _core().dec_norm2(
        _ptr(got_x), _ptr(add) if with_add else 0, B, n, _ptr(w1), 1e-6, 1e-8,
        _ptr(w2s[0]), _ptr(got[0]), *extra,
    )  # fmt: skip
    want_x, want = ref.norm2(x, add if with_add else None, w1, 1e-6, 1e-8, w2s)
    _same_bits(got_x, want_x, "norm2 x")
    for c in range(outs):
        _same_bits(got[c], want[c], f"norm2 out {c}")


def test_norm2_rms_sum_order_is_pinned():
    """A row whose float32 mean of squares depends on the order of the float64 sum: 16 +
    2^-20 (a float32 tie after / 16) plus 2^-50 terms each below half an ulp of 16. Summed left
    to right they vanish (the mean rounds to 1.0); in inv_rms's 8 partial sums they add up to
    one ulp (the mean rounds up to 1 + 2^-23); with eps = 2^-23 that ulp reaches 1 / sqrt:
    1 - 2^-23 instead of 1. The second norm's eps (2^20) dominates its mean, so it passes r1's
    ulp on to the output instead of normalizing it away. The stage must take the twin's order."""
    n = 16
    x = np.zeros((1, n), dtype=np.float32)
    x[0, 0], x[0, 8], x[0, 1:8] = 4.0, 2.0**-10, 2.0**-25  # squares 16, 2^-20, 2^-50
    eps = np.float32(2.0**-23)
    sq = x[0].astype(np.float64) ** 2
    mean = np.float32(np.cumsum(sq)[-1] / n)  # the left-to-right order, which this tells apart
    assert mean == np.float32(1.0) and np.float32(1) / np.sqrt(mean + eps) == np.float32(1.0)
    assert ref.inv_rms(x[0], float(eps)) == np.float32(1.0 - 2.0**-23)
    w = np.ones(n, dtype=np.float32)
    got_x, got = x.copy(), np.empty((1, n), dtype=np.float32)
    _core().dec_norm2(_ptr(got_x), 0, 1, n, _ptr(w), float(eps), 2.0**20, _ptr(w), _ptr(got),
                      0, 0, 0, 0)  # fmt: skip
    _, want = ref.norm2(x, None, w, float(eps), 2.0**20, [w])
    # the left-to-right order's output: r1 = 1, so o = x
    l2r = (x[0] * ref.inv_rms(x[0], 2.0**20)) * w
    assert (want[0][0] != l2r).any()  # the two orders give different bits here
    _same_bits(got, want[0], "norm2 out")


def test_twins_refuse_an_unknown_level():
    with pytest.raises(ValueError, match="scalar and avx2"):
        ref.glu(np.zeros((1, 16), np.float32), np.ones(8, np.float32), 1e-6, isa="avx512")
