"""Readable NumPy twins of the fused decode stages in csrc/mf_decode.c — their spec and oracle.

Each function does what its C stage does, operation by operation in the same order and the same
precision, so the compiled stage must equal it bit for bit (tests/engine/test_decode_ref.py runs
every stage at every ISA level the CPU has):

    norm2    x += add; out_c = rmsnorm(rmsnorm(x; eps1) * w1; eps2) * w2_c      (dec_norm2)
    mlgru    gates, h = i + f h, rmsnorm(g) * gw * silu(h), then o_proj's norm  (dec_mlgru)
    glu      silu(gate) * up, then down_proj's norm                             (dec_glu)

What "the same" takes, spelled out (each point is a place a twin could silently drift):
- every elementwise product and sum is one float32 operation (NumPy float32 ufuncs, no FMA
  contraction; the C is compiled with -std=c11, which turns contraction off);
- the RMS sum is float64 in 8 interleaved partial sums (sum l adds v[l], v[l + 8], ... left to
  right: `np.cumsum`, not `np.sum`'s pairwise order), combined in inv_rms's fixed order, then
  divided in float64 and rounded to float32, as `inv_rms` does;
- the scalar stages call libm's `expf` (here through ctypes, the same function); the AVX2 stages
  use `exp_avx2`, a Cephes-style polynomial written below with the intrinsics' exact semantics,
  including `_mm256_max_ps`/`_mm256_min_ps` returning the second operand when the first is NaN;
- the AVX2 stages run lanes of 8 and finish a tail of E % 8 with the scalar formulas.

The torch decode step (`Decoder(..., fused=False)`, engine/decode.py) is the model-level spec;
these twins pin down the compiled stages exactly, so a rounding difference between the fused and
the torch paths is known to come from the documented exp and sum-order choices, nothing else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

f32 = np.float32

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_libm.expf.restype = ctypes.c_float
_libm.expf.argtypes = [ctypes.c_float]
_expf_u = np.frompyfunc(lambda v: _libm.expf(v), 1, 1)


def quiet_fp(fn):
    """Stages see saturating inputs (exp -> inf, v / inf): IEEE results, not warnings."""

    @functools.wraps(fn)
    def run(*a, **k):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*a, **k)

    return run


@quiet_fp
def expf(v: np.ndarray) -> np.ndarray:
    """libm's expf, elementwise (the function the scalar C stages call)."""
    v = np.asarray(v, dtype=f32)
    return _expf_u(v).astype(f32).reshape(v.shape)


@quiet_fp
def exp_avx2(x: np.ndarray) -> np.ndarray:
    """exp_avx2 of csrc/mf_decode.c, lane by lane: 2^n exp(r), Cody-Waite reduction, Cephes poly.

    Note (pinned by the tests): for x in [~88.38, 88.7] it returns +inf where exp is still
    finite, since n reaches 128 there; the stages only use it as 1 + exp(-v).
    """
    x = np.asarray(x, dtype=f32)
    lo, hi = f32(-87.3), f32(88.7)
    x = np.where(x > lo, x, lo)  # _mm256_max_ps(x, lo): lo when x is NaN
    x = np.where(x < hi, x, hi)  # _mm256_min_ps(x, hi)
    n = np.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(0.693359375)
    r = r - n * f32(-2.12194440e-4)
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(c)
    p = (p * r) * r + r + f32(1.0)
    e = ((np.rint(n).astype(np.int32) + np.int32(127)) << np.int32(23)).view(f32)  # 2^n
    return (p * e).astype(f32)


def inv_rms(v: np.ndarray, eps: float) -> np.float32:
    """1 / sqrt(mean(v^2) + eps): float64 sums of every 8th square (C's a[0..7]), combined as
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)); mean rounded to float32."""
    v = np.asarray(v, dtype=f32)
    sq = v.astype(np.float64) ** 2  # exact: a float32 square fits a float64
    a = [float(np.cumsum(sq[lane::8])[-1]) if sq[lane::8].size else 0.0 for lane in range(8)]
    s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    mean = f32(s / float(v.size))
    return f32(1.0) / np.sqrt(mean + f32(eps))


def _split(n: int, isa: str) -> int:
    """How many leading elements the stage's vector loop covers (the rest is the scalar tail)."""
    if isa not in ("scalar", "avx2"):
        raise ValueError(f"decode stages have scalar and avx2 levels, not {isa!r}")
    return n - n % 8 if isa == "avx2" else 0


@quiet_fp
def norm2(x, add, w1, eps1, eps2, w2s):
    """dec_norm2 on rows of x [B, n]: returns (x + add, [out_c for each w2_c])."""
    x = np.array(x, dtype=f32, copy=True)
    if add is not None:
        x = x + np.asarray(add, dtype=f32)
    outs = [np.empty_like(x) for _ in w2s]
    for b in range(x.shape[0]):
        r1 = inv_rms(x[b], eps1)
        o = (x[b] * r1) * np.asarray(w1, dtype=f32)
        r2 = inv_rms(o, eps2)
        for out, w2 in zip(outs, w2s, strict=True):
            out[b] = (o * r2) * np.asarray(w2, dtype=f32)
    return x, outs


@quiet_fp
def mlgru(yi, yf, yg, lb, olb, state, gw, g_eps, ow, o_eps, isa="scalar"):
    """dec_mlgru on rows [B, E]: returns (new state, out). lb / olb (= 1 - lb) may be None."""
    yi, yf, yg = (np.asarray(a, dtype=f32) for a in (yi, yf, yg))
    h_all = np.array(state, dtype=f32, copy=True)
    out = np.empty_like(h_all)
    one, zero = f32(1.0), f32(0.0)
    E = h_all.shape[1]
    v = _split(E, isa)
    for b in range(h_all.shape[0]):
        ri, rf, rg, h = yi[b], yf[b], yg[b], h_all[b]
        # gates and recurrence: vector lanes [0, v), then the scalar tail [v, E)
        f = np.empty(E, dtype=f32)
        silu_i = np.empty(E, dtype=f32)
        f[:v] = one / (one + exp_avx2(zero - rf[:v]))
        silu_i[:v] = ri[:v] / (one + exp_avx2(zero - ri[:v]))
        f[v:] = one / (one + expf(-rf[v:]))
        silu_i[v:] = ri[v:] / (one + expf(-ri[v:]))
        if lb is not None:
            f = f * np.asarray(olb, dtype=f32) + np.asarray(lb, dtype=f32)
        i = (one - f) * silu_i
        h[:] = i + f * h
        # output: rmsnorm(g) * gw * silu(h), then o_proj's BitLinear norm
        rg_ = inv_rms(rg, g_eps)
        silu_h = np.empty(E, dtype=f32)
        silu_h[:v] = h[:v] / (one + exp_avx2(zero - h[:v]))
        silu_h[v:] = h[v:] / (one + expf(-h[v:]))
        o = ((rg * rg_) * np.asarray(gw, dtype=f32)) * silu_h
        ro = inv_rms(o, o_eps)
        out[b] = (o * ro) * np.asarray(ow, dtype=f32)
    return h_all, out


@quiet_fp
def glu(gu, dw, d_eps, isa="scalar"):
    """dec_glu on rows gu [B, 2I] = [gate | up]: returns out [B, I]."""
    gu = np.asarray(gu, dtype=f32)
    I = gu.shape[1] // 2
    v = _split(I, isa)
    one, zero = f32(1.0), f32(0.0)
    out = np.empty((gu.shape[0], I), dtype=f32)
    for b in range(gu.shape[0]):
        g, u = gu[b, :I], gu[b, I:]
        s = np.empty(I, dtype=f32)
        s[:v] = g[:v] / (one + exp_avx2(zero - g[:v]))
        s[v:] = g[v:] / (one + expf(-g[v:]))
        o = s * u
        r = inv_rms(o, d_eps)
        out[b] = (o * r) * np.asarray(dw, dtype=f32)
    return out
