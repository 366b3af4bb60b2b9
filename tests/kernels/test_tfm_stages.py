"""The compiled transformer decode stages (csrc/mf_tfm.c) equal their NumPy twins
(engine/bitnet_ref.py) bit for bit, at every ISA level this CPU has (tolerance EXACT: the twins
run the same float32 operations in the same order, tests/_tolerances.py). Shapes leave vector
tails (n % 8 != 0, positions past a key tile), heads share kv heads (GQA), every cache dtype,
exact and L-Mul products; bad arguments raise one ValueError."""

from __future__ import annotations

import numpy as np
import pytest

from mulfree import kernels
from mulfree.engine import bitnet_ref as ref
from mulfree.kernels import ISA_LEVELS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

LEVELS = [i for i in kernels.available_isas() if i in ISA_LEVELS] if kernels.available() else []
f32 = np.float32


def _core():
    from mulfree.kernels._core import core

    return core()


def _p(a) -> int:
    if a is None:
        return 0
    assert a.flags.c_contiguous
    return a.ctypes.data


def _same_bits(got, want, what=""):
    g, w = np.ascontiguousarray(got, dtype=f32), np.ascontiguousarray(want, dtype=f32)
    assert g.shape == w.shape, what
    diff = np.flatnonzero(g.view(np.uint32) != w.view(np.uint32))
    assert diff.size == 0, f"{what}: {diff.size} of {g.size} differ, first at {diff[:5]}"


def _rand(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(f32)


@pytest.mark.parametrize("n", [1, 7, 64, 100])
@pytest.mark.parametrize("add", [False, True])
def test_norm(n, add):
    C = _core()
    x, a, w = _rand((3, n), 1, 3.0), _rand((3, n), 2), _rand(n, 3)
    want_x, want = ref.norm(x, a if add else None, w, 1e-6)
    out = np.zeros_like(x)
    C.tfm_norm(_p(x), _p(a) if add else 0, 3, n, _p(w), 1e-6, _p(out))
    _same_bits(x, want_x, "x")
    _same_bits(out, want, "out")


def test_norm_wide_range():
    """Squares of very different sizes, where the float64 sum's order shows in the last bits:
    the 8-lane order of the C and the twin agree."""
    v = np.array([1e30, 1.0, 3.0, 1e-3, 7.0, 1.0, 1e20, 1.0, -1e30] * 3, dtype=f32)
    C = _core()
    x, w, out = v[None].copy(), np.ones(v.size, dtype=f32), np.zeros((1, v.size), dtype=f32)
    C.tfm_norm(_p(x), 0, 1, v.size, _p(w), 0.0, _p(out))
    _same_bits(out, ref.norm(v[None], None, w, 0.0)[1])


@pytest.mark.parametrize("hd", [2, 16, 24])
def test_rope(hd):
    C = _core()
    B, nh, ctx = 3, 5, 40
    x = _rand((B, nh, hd), 4)
    cos, sin = np.cos(_rand((ctx, hd), 5)).astype(f32), np.sin(_rand((ctx, hd), 6)).astype(f32)
    pos = np.array([0, 17, 39])
    rows = np.stack([np.arange(B), pos], 1).astype(np.int64)
    want = ref.rope(x, cos, sin, pos)
    got = x.copy()
    C.tfm_rope(_p(got), B, nh * hd, nh, hd, _p(cos), _p(sin), _p(rows))
    _same_bits(got, want)


def _cache_pair(dtype, slots, Hkv, hd, ctx):
    a, b = ref.Cache(slots, Hkv, hd, ctx, dtype), ref.Cache(slots, Hkv, hd, ctx, dtype)
    return a, b


def _write_c(C, cache, k, v, rows):
    B, Hkv, hd = k.shape
    x = np.concatenate([k.reshape(B, -1), v.reshape(B, -1)], 1).copy()  # [B, k | v]
    C.tfm_kv_write(_p(x), B, x.shape[1], 0, Hkv * hd, _p(cache.k), _p(cache.v), _p(cache.ks),
                   _p(cache.vs), ref.KV_DTYPES[cache.dtype], Hkv, hd, cache.ctx, _p(rows))  # fmt: skip


@pytest.mark.parametrize("dtype", list(ref.KV_DTYPES))
def test_kv_write(dtype):
    C = _core()
    Hkv, hd, ctx = 2, 12, 24
    mine, theirs = _cache_pair(dtype, 3, Hkv, hd, ctx)
    for seed, slots, pos in ((0, [0, 2], [0, 5]), (1, [2, 1], [23, 8])):
        k, v = _rand((2, Hkv, hd), 10 + seed, 50.0), _rand((2, Hkv, hd), 20 + seed, 1e-3)
        k[0, 0, :3] = [0.0, -0.0, 1e-9]  # zeros and a float16 subnormal
        rows = np.array(list(zip(slots, pos, strict=True)), dtype=np.int64)
        _write_c(C, mine, k, v, rows)
        ref.kv_write(theirs, k, v, slots, pos)
    for name in ("k", "v", "ks", "vs"):
        a, b = getattr(mine, name), getattr(theirs, name)
        if a is not None:
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=name)


def _filled(C, dtype, slots, Hkv, hd, ctx, n, seed):
    """A C-written cache whose slots hold n positions of random k, v."""
    cache = ref.Cache(slots, Hkv, hd, ctx, dtype)
    for p in range(n):
        k, v = _rand((slots, Hkv, hd), seed + 2 * p, 2.0), _rand((slots, Hkv, hd), seed + 2 * p + 1)
        rows = np.stack([np.arange(slots), np.full(slots, p)], 1).astype(np.int64)
        _write_c(C, cache, k, v, rows)
    return cache


def _attend_c(C, cache, q, rows, mbits, isa: str | int = -1, threads: int = 1, scaling=None):
    """tfm_attend on the C side: q [B, H, hd] at rows [B, 2] (slot, position) -> (out, level)."""
    B, H, hd = q.shape
    out = np.zeros_like(q)
    level = ISA_LEVELS[isa] if isinstance(isa, str) else isa
    used = C.tfm_attend(_p(q), B, H * hd, _p(out), H * hd, _p(cache.k), _p(cache.v),
                        _p(cache.ks), _p(cache.vs), ref.KV_DTYPES[cache.dtype], H,
                        cache.k.shape[1], hd, cache.ctx, _p(rows),
                        hd**-0.5 if scaling is None else scaling,
                        -1 if mbits is None else mbits, level, threads)  # fmt: skip
    return out, used


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("dtype", list(ref.KV_DTYPES))
@pytest.mark.parametrize("mbits", [None, 3], ids=["exact", "lmul3"])
def test_attend(isa, dtype, mbits):
    C = _core()
    H, Hkv, hd, ctx = 6, 2, 40, 32  # G = 3 heads per kv head; hd 40 = two 16-chunks + one 8
    cache = _filled(C, dtype, 2, Hkv, hd, ctx, 19, 7)
    pos = [18, 4]  # n = 19: two whole tiles and a tail of 3; n = 5 inside the first tile
    rows = np.array([[0, pos[0]], [1, pos[1]]], dtype=np.int64)
    q = _rand((2, H, hd), 9, 2.0)
    out, used = _attend_c(C, cache, q, rows, mbits, isa)
    assert used <= ISA_LEVELS[isa]
    _same_bits(out, ref.attend(cache, q, [0, 1], pos, hd**-0.5, mbits), f"{isa} {dtype}")


@pytest.mark.parametrize("mbits", [None, 3], ids=["exact", "lmul3"])
def test_attend_threads(mbits):
    """Two threads split the (row, kv head) items (enough work for a second thread: more than
    2 x TFM_MIN_WORK products): the same bits as the twin."""
    C = _core()
    H, Hkv, hd, ctx, n = 8, 2, 64, 640, 600
    cache = ref.Cache(2, Hkv, hd, ctx, "bfloat16")
    rng = np.random.default_rng(8)
    cache.k[...] = ref.bf16_round(rng.standard_normal(cache.k.shape).astype(f32))
    cache.v[...] = ref.bf16_round(rng.standard_normal(cache.v.shape).astype(f32))
    q = _rand((2, H, hd), 9)
    rows = np.array([[0, n - 1], [1, n - 7]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, mbits, threads=2)
    _same_bits(out, ref.attend(cache, q, [0, 1], [n - 1, n - 7], hd**-0.5, mbits))


@pytest.mark.parametrize("isa", [i for i in LEVELS if i != "scalar"])
@pytest.mark.parametrize("mbits", [None, 3], ids=["exact", "lmul3"])
@pytest.mark.parametrize("H,hd,inf", [(20, 64, False), (15, 64, False), (20, 40, True)])
def test_attend_threads_split_last_kv_head(isa, mbits, H, hd, inf):
    """5 kv heads on 2 threads (the 2B4T layer): the fifth is split by query heads (2 + 2, or
    1 + 2 with 3 heads per kv head), one part per thread, each part a route of its own (the
    fast L-Mul one, or with an inf value in that kv head the full one): the twin's bits."""
    C = _core()
    Hkv, ctx, n = 5, 608, 600  # 2 n H hd products: enough work for 2 threads
    cache = _random_cache("bfloat16", 1, Hkv, hd, ctx, 12)
    if inf:
        cache.v[0, 4, 10, 3] = 0x7F80  # +inf (bfloat16 bits) in the split kv head
    q = _rand((1, H, hd), 13, 2.0)
    rows = np.array([[0, n - 1]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, mbits, isa, threads=2)
    _same_bits(out, ref.attend(cache, q, [0], [n - 1], hd**-0.5, mbits), f"{isa}")


def test_attend_odd_head_dim_runs_scalar():
    """hd % 8 != 0: the scalar code at any level, still equal to the twin."""
    C = _core()
    H, Hkv, hd, ctx = 2, 1, 6, 8
    cache = _filled(C, "bfloat16", 1, Hkv, hd, ctx, 3, 1)
    q, rows = _rand((1, H, hd), 2), np.array([[0, 2]], dtype=np.int64)
    out, used = _attend_c(C, cache, q, rows, None, scaling=0.5)
    assert used == 0
    _same_bits(out, ref.attend(cache, q, [0], [2], 0.5))


def test_softmax_sums_to_one_and_matches_exp():
    """The twin's softmax is a softmax (not only equal to the C): within 1e-6 of float64."""
    s = _rand(37, 3, 4.0)
    p = ref.softmax(s)
    e = np.exp(s.astype(np.float64) - s.max())
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("act", list(ref.ACTS))
@pytest.mark.parametrize("I,norm", [(37, True), (64, False)])
def test_glu(isa, act, I, norm):
    C = _core()
    gu = _rand((2, 2 * I), 11, 3.0)
    gu[0, :4] = [0.0, -0.0, 100.0, -100.0]
    w = _rand(I, 12) if norm else None
    out = np.zeros((2, I), dtype=f32)
    C.tfm_glu(_p(gu), 2, I, _p(w), 1e-5, _p(out), ref.ACTS[act], ISA_LEVELS[isa])
    _same_bits(out, ref.glu(gu, w, 1e-5, act), f"{isa} {act}")


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("V,D,threads", [(37, 100, 1), (9, 64, 1), (8203, 40, 2), (6, 2560, 1),
                                          (9219, 200, 2)])  # fmt: skip
def test_head_i8(isa, V, D, threads):
    """Rows past a block of 4, D tails past 32 bytes, 2B4T's width, codes -128..127 (a file may
    hold -128), two threads over the rows (chunks of TFM_HEAD_CHUNK rows, several per thread)."""
    C = _core()
    rng = np.random.default_rng(V)
    codes = rng.integers(-128, 128, (V, D)).astype(np.int8)
    step = (rng.random(V) * 1e-2).astype(f32)
    x = _rand((2, D), 3, 5.0)
    x[1] = 0.0  # an all-zero row: absmax floor
    out = np.zeros((2, V), dtype=f32)
    used = C.tfm_head_i8(_p(x), 2, D, _p(codes), V, _p(step), _p(out), threads, ISA_LEVELS[isa])
    _same_bits(out, ref.head_i8(x, codes, step), f"{isa}")
    assert used == ISA_LEVELS["scalar" if isa == "scalar" else "avx2"]  # AVX2 code above scalar


def test_head_i8_is_the_int8_product():
    """The twin is a head: within its activation quantization step of the float product."""
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (50, 64)).astype(np.int8)
    step = np.full(50, 0.01, dtype=f32)
    x = _rand((1, 64), 2)
    want = x.astype(np.float64) @ (codes.astype(np.float64) * 0.01).T
    bound = np.abs(codes.astype(np.float64) * 0.01).sum(1) * np.abs(x).max() / 127  # 1/2 step each
    assert (np.abs(ref.head_i8(x, codes, step) - want) <= bound).all()


def test_bad_arguments_raise():
    C = _core()
    x = np.zeros((1, 16), dtype=f32)
    rows = np.array([[0, 8]], dtype=np.int64)  # position 8 >= ctx 8
    with pytest.raises(ValueError, match="tfm_kv_write"):
        C.tfm_kv_write(_p(x), 1, 16, 0, 8, _p(x), _p(x), 0, 0, 0, 1, 8, 8, _p(rows))
    with pytest.raises(ValueError, match="tfm_attend"):  # int8 without steps
        C.tfm_attend(_p(x), 1, 16, _p(x), 16, _p(x), _p(x), 0, 0, 3, 1, 1, 8, 8, _p(rows * 0),
                     1.0, -1, -1, 1)  # fmt: skip
    with pytest.raises(ValueError, match="tfm_glu"):
        C.tfm_glu(_p(x), 1, 8, 0, 1e-5, _p(x), 7, -1)
    with pytest.raises(ValueError, match="tfm_rope"):
        C.tfm_rope(_p(x), 1, 16, 1, 3, _p(x), _p(x), _p(rows))


@pytest.mark.parametrize("isa", LEVELS)
def test_attend_lmul_special_values_take_the_full_route(isa):
    """L-Mul attention with an inf value and zero / huge operands: the AVX2 level's fast route
    hands such rows to the full one (csrc/mf_tfm.c); the bits are still the twin's. (NaN
    inputs are outside the bit-exact contract: the SIMD max of NaN scores is not the scalar's.)"""
    C = _core()
    H, Hkv, hd, ctx = 4, 2, 16, 16
    cache = _filled(C, "float32", 1, Hkv, hd, ctx, 6, 3)
    cache.v[0, 1, 2, 5] = np.inf  # one value of kv head 1
    cache.k[0, 0, 0, 3, 1] = 3e38  # a key whose products overflow to inf in the scores
    q = _rand((1, H, hd), 4)
    q[0, 0, :2] = 0.0
    rows = np.array([[0, 5]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, 3, isa, threads=2)
    _same_bits(out, ref.attend(cache, q, [0], [5], hd**-0.5, 3))


@pytest.mark.parametrize("isa", LEVELS)
def test_attend_lmul_peaky_softmax(isa):
    """Scores hundreds apart: probabilities flush to zero in L-Mul's operand rounding, which
    the fast route hands to the full one; the bits are still the twin's."""
    C = _core()
    H, Hkv, hd, ctx = 2, 1, 16, 16
    cache = _filled(C, "bfloat16", 1, Hkv, hd, ctx, 9, 5)
    cache.k[0, 0, 0] = cache.k[0, 0, 0, :, :1]  # positions 0..7 one key: in one of the two heads
    q = _rand((1, H, hd), 6, 100.0)  # (q and -q) they share the top score, p_8 ~ 2^-129 / 8
    q[0, 1] = -q[0, 0]
    rows = np.array([[0, 8]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, 3, isa)
    _same_bits(out, ref.attend(cache, q, [0], [8], hd**-0.5, 3))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_attend_lmul_zero_operands(isa, dtype):
    """Zero q elements (frequent after ternary projections: an integer sum of 0) and zero
    cached values (int8 code 0) on the fast route: the same bits as the twin."""
    C = _core()
    H, Hkv, hd, ctx = 4, 2, 16, 16
    cache = _filled(C, dtype, 1, Hkv, hd, ctx, 11, 2)
    q = _rand((1, H, hd), 7)
    q[0, :, ::3] = 0.0
    rows = np.array([[0, 10]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, 3, isa)
    _same_bits(out, ref.attend(cache, q, [0], [10], hd**-0.5, 3))


def _random_cache(dtype, slots, Hkv, hd, ctx, seed, zeros=0.0):
    """A cache filled directly (every position, so tiles past n hold live-looking data)."""
    cache = ref.Cache(slots, Hkv, hd, ctx, dtype)
    rng = np.random.default_rng(seed)
    k, v = (rng.standard_normal((slots, Hkv, ctx, hd)).astype(f32) for _ in range(2))
    for a in (k, v):
        a[rng.random(a.shape) < zeros] = 0.0
    for p in range(ctx):  # the twin's writer: the same codes and steps as the C's (test_kv_write)
        ref.kv_write(cache, k[:, :, p], v[:, :, p], list(range(slots)) if slots > 1 else [0], [p] * slots)
    return cache


@pytest.mark.parametrize("isa", [i for i in LEVELS if i != "scalar"])
@pytest.mark.parametrize("dtype", list(ref.KV_DTYPES))
@pytest.mark.parametrize("G", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("hd", [32, 48])
@pytest.mark.parametrize("mbits", [None, 3], ids=["exact", "lmul3"])
def test_attend_groups_and_contexts(isa, dtype, G, hd, mbits):
    """The AVX2 routes and the AVX-512 ones (16 lanes where head_dim % 16 == 0), exact and fast
    L-Mul, at GQA groups 1..5 (4 heads per register block, then a remainder), head_dim 32 (two
    16-lane vectors) and 48 (three: a P V block short of 4), contexts 1, 7, 9 and 63 (a lone key
    tile, odd pairs of tiles, tails), exact zeros among q, keys and values: the twin's bits."""
    C = _core()
    Hkv, ctx = 2, 64
    cache = _random_cache(dtype, 1, Hkv, hd, ctx, 31 + G, zeros=0.2)
    q = _rand((1, G * Hkv, hd), 5 + G, 2.0)
    q[np.random.default_rng(G).random(q.shape) < 0.25] = 0.0
    for n in (1, 7, 9, 63):
        rows = np.array([[0, n - 1]], dtype=np.int64)
        out, used = _attend_c(C, cache, q, rows, mbits, isa)
        assert used == ISA_LEVELS[isa]
        want = ref.attend(cache, q, [0], [n - 1], hd**-0.5, mbits)
        _same_bits(out, want, f"{isa} {dtype} G={G} n={n}")


@pytest.mark.parametrize("isa", [i for i in LEVELS if i != "scalar"])
def test_attend_wide_route_is_taken(isa):
    """head_dim 128 (the 2B4T shape): the AVX-512 level reports its 16-lane routes, exact and
    L-Mul (so the tests above check them, not the AVX2 ones); head_dim 40 runs the AVX2 code."""
    C = _core()
    for hd, level in ((128, ISA_LEVELS[isa]), (40, ISA_LEVELS["avx2"])):
        cache = _random_cache("bfloat16", 1, 1, hd, 16, 3)
        q, rows = _rand((1, 2, hd), 4), np.array([[0, 12]], dtype=np.int64)
        for mbits in (3, None):
            assert _attend_c(C, cache, q, rows, mbits, isa)[1] == level


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("mbits", [None, 3], ids=["exact", "lmul3"])
def test_attend_2b4t_shape_context_2048(isa, mbits):
    """One kv head of the 2B4T layer (4 query heads, head_dim 128) at context 2048, bfloat16."""
    C = _core()
    cache = ref.Cache(1, 1, 128, 2048, "bfloat16")
    rng = np.random.default_rng(20)
    cache.k[...] = ref.bf16_round(rng.standard_normal(cache.k.shape).astype(f32))
    cache.v[...] = ref.bf16_round(rng.standard_normal(cache.v.shape).astype(f32))
    q = _rand((1, 4, 128), 21, 2.0)
    q[rng.random(q.shape) < 0.25] = 0.0
    rows = np.array([[0, 2047]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, mbits, isa)
    _same_bits(out, ref.attend(cache, q, [0], [2047], 128**-0.5, mbits), f"{isa}")


@pytest.mark.parametrize("isa", [i for i in LEVELS if i != "scalar"])
@pytest.mark.parametrize("scale", [1e-21, 1e18, 1.2e19], ids=["underflow", "large", "overflow"])
def test_attend_lmul_extreme_magnitudes(isa, scale):
    """Products at the ends of float32 on the fast route's borders: |q k| ~ 1e-42 underflows to
    +-0 inside the fast route (the threshold test); ~1e36 stays on it (below the hand-off bound);
    ~1.4e38 may pass float32's largest value, so the row goes to the full route (lmf_ok). The
    bits are the twin's in every case."""
    C = _core()
    H, Hkv, hd, ctx = 4, 1, 32, 24
    cache = ref.Cache(1, Hkv, hd, ctx, "float32")
    rng = np.random.default_rng(9)
    cache.k[...] = rng.standard_normal(cache.k.shape).astype(f32) * f32(scale)
    cache.v[...] = rng.standard_normal(cache.v.shape).astype(f32) * f32(min(scale, 1e30))
    q = _rand((1, H, hd), 10, scale)
    rows = np.array([[0, 20]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, 3, isa, scaling=1.0 if scale < 1 else 1e-30)
    _same_bits(out, ref.attend(cache, q, [0], [20], 1.0 if scale < 1 else 1e-30, 3))


def _three_bit(rng, shape, lo, hi, zeros=0.1):
    """+-(1 + m / 8) 2^e, e uniform in [lo, hi), a fraction `zeros` 0: values L-Mul's 3-bit
    rounding keeps as they are."""
    e = rng.integers(lo, hi, shape).astype(np.float64)
    m = 1 + rng.integers(0, 8, shape) / 8
    s = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    v = (s * m * 2.0**e).astype(f32)
    v[rng.random(shape) < zeros] = 0.0
    return v


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("hd", [32, 40])
@pytest.mark.parametrize("q_exp,k_exp,k_zeros,scaling", [((-70, -56), (-70, -56), 0.1, 110),
                                                         ((40, 60), (-126, -118), 0.5, 60)],
                         ids=["straddle", "zero-keys"])  # fmt: skip
def test_attend_lmul_underflow_threshold(isa, hd, q_exp, k_exp, k_zeros, scaling):
    """Products straddling float32's smallest normal (2^-126), some exactly on it (kept) or one
    L-Mul step below (+-0): q k products at 2^-140..2^-112 with scaling 2^110, so the scores
    show them; p v products likewise, in outputs of ~2^-120 nothing else hides. "zero-keys":
    huge q against tiny keys, half of them 0: a zero key times q (q above the threshold's
    range) must add nothing, where a product of the smallest normal would show in the scores.
    Guards the fast routes' threshold compare (a > thr) at its edges."""
    C = _core()
    rng = np.random.default_rng(hd)
    H, Hkv, ctx, n = 4, 1, 16, 13
    cache = ref.Cache(1, Hkv, hd, ctx, "float32")
    k = _three_bit(rng, (ctx, hd), *k_exp, zeros=k_zeros)
    v = _three_bit(rng, (ctx, hd), -124, -112)
    cache.k[0, 0] = k.reshape(ctx // 8, 8, hd).transpose(0, 2, 1)  # [tile, hd, 8]
    cache.v[0, 0] = v
    q = _three_bit(rng, (1, H, hd), *q_exp)
    rows = np.array([[0, n - 1]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, 3, isa, scaling=2.0**scaling)
    want = ref.attend(cache, q, [0], [n - 1], 2.0**scaling, 3)
    assert np.count_nonzero(want) > want.size // 2  # the outputs are not all flushed away
    _same_bits(out, want, f"{isa} hd={hd}")


def test_attend_avx512_under_simde(tmp_path, capfd):
    """The AVX-512 routes (exact, L-Mul) compiled on SIMDe's AVX-512 emulation (so an AVX2-only machine
    checks it too) through the real driver, against the scalar spec, bit for bit
    (tests/kernels/avx512_tfm_harness.c)."""
    from pathlib import Path

    from tests.kernels.test_avx512_emulated import SIMDE, build_on_simde

    if not SIMDE.exists() or "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("needs x86-64 with AVX2, gcc and SIMDe headers (libsimde-dev)")
    lib = build_on_simde(Path(__file__).with_name("avx512_tfm_harness.c"), tmp_path)
    fails = lib.mf_tfm_avx512_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 10 * 4 * 2 * 2, report  # cases x dtypes x routes x threads


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("mbits", [1, 2, 7, 23])
def test_attend_lmul_mantissa_bits(isa, mbits):
    """Other mantissa widths than 3: no rounding (23, the fast routes' drop = 0 case), one bit
    kept (a carry into the exponent is frequent), and between; L-Mul's offset l(k) changes
    with k too."""
    C = _core()
    cache = _random_cache("float32", 1, 2, 32, 24, 40 + mbits, zeros=0.1)
    q = _rand((1, 8, 32), 41, 2.0)
    rows = np.array([[0, 20]], dtype=np.int64)
    out, _ = _attend_c(C, cache, q, rows, mbits, isa)
    _same_bits(out, ref.attend(cache, q, [0], [20], 32**-0.5, mbits), f"{isa} k={mbits}")

