/* L-Matmul kernels (the L-Mul core, formats and scalar spec `lmul_one`: mf_lmul.h).
 * L-Matmul works on float32 containers (bfloat16 int-mode L-Mul is exactly float32-container
 * L-Mul with k <= 7, so the Python side widens bf16 operands) and accumulates in float32,
 * sequentially over K for every output: acc = +0; acc = fp32(acc + p_k). Two SIMD routes:
 *  - fast (int mode, no inf/NaN operand, no product can overflow — checked per call): operands
 *    are prepared once (flush-to-zero, rounding to k bits) and encoded as int32 words (the
 *    L-Mul constant folded into A); per multiply-accumulate: one int32 add of sign-carrying
 *    encodings (the product's bits), one fp32 add, and where a product may be invalid one
 *    compare (is its L-Mul result a normal number?) masking that add. Zeros are encoded as
 *    magnitudes that make every sum fall below the smallest normal, so a zero or an
 *    underflowing product adds nothing — which equals adding +-0, since the float32
 *    accumulator, starting at +0 and summing in round-to-nearest, is never -0. Small M (<= 8,
 *    decode attention) reads B in place (lmatmul_direct); larger M packs panels and picks a
 *    kernel per output tile and k-chunk from that chunk's operands (tile_route): skip an
 *    all-zero chunk, no compare where every product is normal, a row mask where A's zeros are
 *    the only invalid lanes (a causal mask's p in p v), else the compare.
 *  - full: every product with the complete IEEE-style handling (any operands, both modes).
 * No multiply instruction is used for the products.
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mf_common.h"
#include "mf_lmul.h"
#if MF_X86
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------------------------------------
 * L-Matmul (float32 containers, float32 accumulation)
 * ------------------------------------------------------------------------------------------- */
static const lm_fmt *f32_fmt(void) {
    static lm_fmt f;
    static int done = 0;
    if (!done) {
        fmt_init(0, &f);
        done = 1;
    }
    return &f;
}

static inline float bits_f32(uint32_t u) {
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* The scalar spec: every product by lmul_one, accumulated in order k = 0 .. K-1. */
static void lmatmul_scalar(const uint32_t *A, const uint32_t *B, float *C, int64_t M, int64_t K,
                           int64_t N, int k, int mode, int64_t m_lo, int64_t m_hi) {
    const lm_fmt *f = f32_fmt();
    for (int64_t i = m_lo; i < m_hi; ++i)
        for (int64_t j = 0; j < N; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < K; ++kk) acc += bits_f32(lmul_one(f, A[i * K + kk], B[kk * N + j], k, mode));
            C[i * N + j] = acc;
        }
}

#if MF_X86
/* Full-semantics rows: out row i = sum_k lmul(A[i,k], B[k,:]), vectorized over N. */
MF_TARGET_AVX512 static void lmatmul_full_avx512(const lm_vconst *c, const uint32_t *A,
                                                 const uint32_t *B, float *C, int64_t K, int64_t N,
                                                 int k, int mode, int64_t m_lo, int64_t m_hi) {
    const lm_fmt *f = f32_fmt();
    for (int64_t i = m_lo; i < m_hi; ++i) {
        int64_t j = 0;
        for (; j + 16 <= N; j += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t kk = 0; kk < K; ++kk) {
                const __m512i p = lmul512(c, V512(A[i * K + kk]), _mm512_loadu_si512(B + kk * N + j));
                acc = _mm512_add_ps(acc, _mm512_castsi512_ps(p));
            }
            _mm512_storeu_ps(C + i * N + j, acc);
        }
        for (; j < N; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < K; ++kk) acc += bits_f32(lmul_one(f, A[i * K + kk], B[kk * N + j], k, mode));
            C[i * N + j] = acc;
        }
    }
}

MF_TARGET_AVX2 static void lmatmul_full_avx2(const lm_vconst *c, const uint32_t *A,
                                             const uint32_t *B, float *C, int64_t K, int64_t N,
                                             int k, int mode, int64_t m_lo, int64_t m_hi) {
    const lm_fmt *f = f32_fmt();
    for (int64_t i = m_lo; i < m_hi; ++i) {
        int64_t j = 0;
        for (; j + 8 <= N; j += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t kk = 0; kk < K; ++kk) {
                const __m256i p = lmul256(c, V256(A[i * K + kk]),
                                          _mm256_loadu_si256((const __m256i *)(B + kk * N + j)));
                acc = _mm256_add_ps(acc, _mm256_castsi256_ps(p));
            }
            _mm256_storeu_ps(C + i * N + j, acc);
        }
        for (; j < N; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < K; ++kk) acc += bits_f32(lmul_one(f, A[i * K + kk], B[kk * N + j], k, mode));
            C[i * N + j] = acc;
        }
    }
}

/* Fast route, packed (M > LMATMUL_DIRECT_MAX_M). Panels: A in blocks of MR rows, [mb][K][MR];
 * B in panels of NR columns, [nb][K][NR]. Every operand is prepared once (flush-to-zero,
 * rounding to k bits: its magnitude g) and encoded as int32 words:
 *  - B: magnitude bm = g and signed bs = g | sign; a zero: zb for both;
 *  - A: with mag = g - C (C the L-Mul constant folded into A; a zero: za), signed
 *    as = mag + sign * 2^31 (mod 2^32) and threshold at = (2^23 - 1) - mag.
 * A product's magnitude sum r = mag + bm is its L-Mul result; it is a normal number iff
 * r >= 2^23, i.e. iff bm > at: one compare per product, no add (no sum here wraps: za and zb
 * are chosen so that every sum involving a zero lands below 2^23 without int32 overflow, see
 * lmatmul_fast). On a valid lane as + bs = r + (s_a + s_b) 2^31 = (s_a xor s_b) | r mod 2^32:
 * the float bits of the product, added to the fp32 accumulator; an invalid lane adds nothing,
 * which equals adding +-0, since the accumulator, starting at +0 and summing in
 * round-to-nearest, is never -0.
 * Each output tile (MR x NR) runs, chunk by k-chunk, one of three kernels chosen from the
 * chunk's operands (tile_route): none (an all-zero chunk: every product is +-0), unchecked
 * (no zero operand and the two smallest magnitudes make a normal product: every lane is
 * valid, so the compare is not computed) or checked. All three give the spec's sums. */
#ifndef LMATMUL_MR512
#define LMATMUL_MR512 8 /* rows of an AVX-512 tile; a multiple of 4 (the A packer's groups) */
#endif
#ifndef LMATMUL_NV512
#define LMATMUL_NV512 2 /* 16-column vectors of an AVX-512 tile */
#endif
#define MR512 LMATMUL_MR512
#define NR512 (16 * LMATMUL_NV512)
#ifndef LMATMUL_MR256
#define LMATMUL_MR256 4
#endif
#define MR256 LMATMUL_MR256
#define NR256 16
_Static_assert(MR512 % 4 == 0 && MR256 % 4 == 0, "the A packer writes rows in groups of 4");

/* The kernel of one tile chunk (tile_route): */
enum {
    TILE_NONE = 0,      /* a side is all zero: every product is +-0, nothing to add */
    TILE_CHECKED = 1,   /* the per-lane compare bm > at */
    TILE_UNCHECKED = 2, /* no zero, the two smallest magnitudes make a normal product: all valid */
    TILE_AZERO = 3,     /* as unchecked but for A's zeros: a mask per A element (az) */
};

MF_TARGET_AVX512 static inline __attribute__((always_inline)) void tile_avx512_impl(
    const uint32_t *at, const uint32_t *as, const uint32_t *az, const int32_t *bm,
    const uint32_t *bs, int64_t K, float *C, int64_t ldc, int rows, int cols, int cont,
    const int kind) {
    const int check = kind == TILE_CHECKED;
    enum { NV = LMATMUL_NV512 };
    __m512 acc[MR512][NV];
    for (int r = 0; r < MR512; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    if (cont) /* continue the sums of the earlier k-chunks (stored fp32: the same bits) */
        for (int r = 0; r < rows; ++r) {
            float tmp[NR512] = {0};
            const float *src = C + r * ldc;
            if (cols < NR512) {
                memcpy(tmp, src, (size_t)cols * sizeof(float));
                src = tmp;
            }
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(src + 16 * v);
        }
    for (int64_t kk = 0; kk < K; ++kk) {
        __m512i vs[NV], vm[NV];
        for (int v = 0; v < NV; ++v) {
            vs[v] = _mm512_loadu_si512(bs + kk * NR512 + 16 * v);
            vm[v] = check ? _mm512_loadu_si512(bm + kk * NR512 + 16 * v) : vs[v];
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR512; ++r) {
            const __m512i sa = V512(as[kk * MR512 + r]);
            if (kind == TILE_AZERO) { /* A's zeros are the only invalid lanes: a row mask */
                const __mmask16 ok = (__mmask16)az[kk * MR512 + r];
                for (int v = 0; v < NV; ++v) {
                    const __m512 p = _mm512_castsi512_ps(_mm512_add_epi32(sa, vs[v]));
                    acc[r][v] = _mm512_mask_add_ps(acc[r][v], ok, acc[r][v], p);
                }
            } else if (check) {
                const __m512i ta = V512(at[kk * MR512 + r]);
                for (int v = 0; v < NV; ++v) {
                    const __mmask16 ok = _mm512_cmpgt_epi32_mask(vm[v], ta);
                    const __m512 p = _mm512_castsi512_ps(_mm512_add_epi32(sa, vs[v]));
                    acc[r][v] = _mm512_mask_add_ps(acc[r][v], ok, acc[r][v], p);
                }
            } else {
                for (int v = 0; v < NV; ++v)
                    acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_castsi512_ps(_mm512_add_epi32(sa, vs[v])));
            }
        }
    }
    for (int r = 0; r < rows; ++r) {
        float tmp[NR512];
        float *dst = cols < NR512 ? tmp : C + r * ldc;
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(dst + 16 * v, acc[r][v]);
        if (cols < NR512) memcpy(C + r * ldc, tmp, (size_t)cols * sizeof(float));
    }
}

MF_TARGET_AVX2 static inline __attribute__((always_inline)) void tile_avx2_impl(
    const uint32_t *at, const uint32_t *as, const uint32_t *az, const int32_t *bm,
    const uint32_t *bs, int64_t K, float *C, int64_t ldc, int rows, int cols, int cont,
    const int kind) {
    const int check = kind == TILE_CHECKED;
    __m256 acc[MR256][2];
    for (int r = 0; r < MR256; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    if (cont) /* continue the sums of the earlier k-chunks (stored fp32: the same bits) */
        for (int r = 0; r < rows; ++r) {
            float tmp[NR256] = {0};
            const float *src = C + r * ldc;
            if (cols < NR256) {
                memcpy(tmp, src, (size_t)cols * sizeof(float));
                src = tmp;
            }
            acc[r][0] = _mm256_loadu_ps(src);
            acc[r][1] = _mm256_loadu_ps(src + 8);
        }
    for (int64_t kk = 0; kk < K; ++kk) {
        const __m256i s0 = _mm256_loadu_si256((const __m256i *)(bs + kk * NR256));
        const __m256i s1 = _mm256_loadu_si256((const __m256i *)(bs + kk * NR256 + 8));
        const __m256i m0 = check ? _mm256_loadu_si256((const __m256i *)(bm + kk * NR256)) : s0;
        const __m256i m1 = check ? _mm256_loadu_si256((const __m256i *)(bm + kk * NR256 + 8)) : s1;
#pragma GCC unroll 16
        for (int r = 0; r < MR256; ++r) {
            const __m256i sa = V256(as[kk * MR256 + r]);
            __m256i v0 = _mm256_add_epi32(sa, s0), v1 = _mm256_add_epi32(sa, s1);
            if (kind == TILE_AZERO) { /* A's zeros are the only invalid lanes: a row mask */
                const __m256i ok = V256(az[kk * MR256 + r]);
                v0 = _mm256_and_si256(ok, v0);
                v1 = _mm256_and_si256(ok, v1);
            } else if (check) { /* invalid lanes become +0.0: the accumulator is unchanged */
                const __m256i ta = V256(at[kk * MR256 + r]);
                v0 = _mm256_and_si256(_mm256_cmpgt_epi32(m0, ta), v0);
                v1 = _mm256_and_si256(_mm256_cmpgt_epi32(m1, ta), v1);
            }
            acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_castsi256_ps(v0));
            acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_castsi256_ps(v1));
        }
    }
    for (int r = 0; r < rows; ++r) {
        float tmp[NR256];
        float *dst = cols < NR256 ? tmp : C + r * ldc;
        _mm256_storeu_ps(dst, acc[r][0]);
        _mm256_storeu_ps(dst + 8, acc[r][1]);
        if (cols < NR256) memcpy(C + r * ldc, tmp, (size_t)cols * sizeof(float));
    }
}

/* One tile of one k-chunk by the kernel tile_route chose (TILE_UNCHECKED, TILE_CHECKED or
 * TILE_AZERO). */
MF_TARGET_AVX512 static void tile_avx512(const uint32_t *at, const uint32_t *as, const uint32_t *az,
                                         const int32_t *bm, const uint32_t *bs, int64_t K, float *C,
                                         int64_t ldc, int rows, int cols, int cont, int kind) {
    if (kind == TILE_CHECKED)
        tile_avx512_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_CHECKED);
    else if (kind == TILE_AZERO)
        tile_avx512_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_AZERO);
    else
        tile_avx512_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_UNCHECKED);
}

MF_TARGET_AVX2 static void tile_avx2(const uint32_t *at, const uint32_t *as, const uint32_t *az,
                                     const int32_t *bm, const uint32_t *bs, int64_t K, float *C,
                                     int64_t ldc, int rows, int cols, int cont, int kind) {
    if (kind == TILE_CHECKED)
        tile_avx2_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_CHECKED);
    else if (kind == TILE_AZERO)
        tile_avx2_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_AZERO);
    else
        tile_avx2_impl(at, as, az, bm, bs, K, C, ldc, rows, cols, cont, TILE_UNCHECKED);
}
#endif /* MF_X86 */

/* A direct-route matmul (M <= 8) below this many products runs on one thread. */
#define LMATMUL_DIRECT_MIN_PARALLEL (1 << 18)

#if MF_X86
/* prep256 for the fast route's operands: flush-to-zero and round to k bits, without the NaN /
 * inf / overflow selects. Equal to prep_mag on every finite magnitude whose rounding stays
 * finite, which the route check guarantees (fast_route_ok). For the route check itself: a NaN
 * or inf magnitude, or one that rounds to inf, still comes out >= 0x7F800000 (as an unsigned
 * maximum), so the check sees the same "special" operands as with prep256. */
MF_TARGET_AVX2 static inline __m256i prep_fin256(const lm_vconst *c, __m256i mag) {
    /* mag < 2^31 (sign cleared): the signed compare is the unsigned one */
    mag = _mm256_andnot_si256(_mm256_cmpgt_epi32(V256(c->min_normal), mag), mag);
    if (c->drop > 0) {
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        const __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(mag, sh), V256(1));
        const __m256i r = _mm256_add_epi32(_mm256_add_epi32(mag, V256(c->round_half_m1)), lsb);
        mag = _mm256_and_si256(r, V256(~((1u << c->drop) - 1))); /* (r >> drop) << drop */
    }
    return mag;
}
/* prep_fin256 in 16 lanes (the same operations; finite operands, the fast route). */
MF_TARGET_AVX512 static inline __m512i prep_fin512(const lm_vconst *c, __m512i mag) {
    mag = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(mag, V512(c->min_normal)), mag);
    if (c->drop > 0) {
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        const __m512i lsb = _mm512_and_si512(_mm512_srl_epi32(mag, sh), V512(1));
        const __m512i r = _mm512_add_epi32(_mm512_add_epi32(mag, V512(c->round_half_m1)), lsb);
        mag = _mm512_and_si512(r, V512(~((1u << c->drop) - 1))); /* (r >> drop) << drop */
    }
    return mag;
}
#endif

/* Prepared operand: sign word and magnitude after flush-to-zero and rounding (float32). */
static inline uint32_t prep_f32(uint32_t bits, int k, uint32_t *sign) {
    *sign = bits & 0x80000000u;
    return prep_mag(f32_fmt(), bits & 0x7FFFFFFFu, k);
}

/* Scan both operands: 1 if the fast route applies (no inf/NaN, no product can overflow, some
 * product can be normal), 0 if not; *all_under = 1 when every product underflows. Also returns
 * the largest prepared magnitudes. */
#if MF_X86
/* The end of a vector range scan: the w lanes' max / min, then the scalar remainder X[i, hi). */
static uint32_t prep_range_finish(const uint32_t *lanes, const uint32_t *nlanes, int w,
                                  const uint32_t *X, int64_t i, int64_t hi, int k, uint32_t *min_out) {
    uint32_t m = 0, n = 0xFFFFFFFFu;
    for (int j = 0; j < w; ++j) {
        m = lanes[j] > m ? lanes[j] : m;
        n = nlanes[j] < n ? nlanes[j] : n;
    }
    for (; i < hi; ++i) {
        uint32_t s;
        const uint32_t g = prep_f32(X[i], k, &s);
        m = g > m ? g : m;
        n = g < n ? g : n;
    }
    *min_out = n;
    return m;
}

/* Largest and smallest prepared magnitudes of X[lo, hi) (inf/NaN pass through preparation, so a
 * special value shows as a maximum >= 0x7F800000; a zero or flushed value as a minimum of 0).
 * Same result as the scalar loop in prep_range. */
MF_TARGET_AVX2 static uint32_t prep_range_avx2(const lm_vconst *c, const uint32_t *X, int64_t lo,
                                               int64_t hi, int k, uint32_t *min_out) {
    __m256i vm = _mm256_setzero_si256(), vn = _mm256_set1_epi32(-1);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        const __m256i mag = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(X + i)), V256(c->mag_mask));
        const __m256i g = prep_fin256(c, mag);
        vm = _mm256_max_epu32(vm, g);
        vn = _mm256_min_epu32(vn, g);
    }
    uint32_t lanes[8], nlanes[8];
    _mm256_storeu_si256((__m256i *)lanes, vm);
    _mm256_storeu_si256((__m256i *)nlanes, vn);
    return prep_range_finish(lanes, nlanes, 8, X, i, hi, k, min_out);
}
#endif

#if MF_X86
/* prep_range_avx2 in 16 lanes. */
MF_TARGET_AVX512 static uint32_t prep_range_avx512(const lm_vconst *c, const uint32_t *X,
                                                   int64_t lo, int64_t hi, int k, uint32_t *min_out) {
    __m512i vm = _mm512_setzero_si512(), vn = V512(0xFFFFFFFFu);
    int64_t i = lo;
    for (; i + 16 <= hi; i += 16) {
        const __m512i g = prep_fin512(c, _mm512_and_si512(_mm512_loadu_si512(X + i), V512(c->mag_mask)));
        vm = _mm512_max_epu32(vm, g);
        vn = _mm512_min_epu32(vn, g);
    }
    uint32_t lanes[16], nlanes[16];
    _mm512_storeu_si512(lanes, vm);
    _mm512_storeu_si512(nlanes, vn);
    return prep_range_finish(lanes, nlanes, 16, X, i, hi, k, min_out);
}
#endif

/* max (returned) and min (*min_out) over X[0, n) of the prepared magnitudes, threads splitting
 * the range */
static uint32_t prep_range(int level, const uint32_t *X, int64_t n, int k, int nt, uint32_t *min_out) {
    uint32_t m = 0, mn = 0xFFFFFFFFu;
#if MF_X86
    lm_vconst c;
    vconst_init(f32_fmt(), k, 0, &c);
    const int64_t chunk = 1 << 14;
#pragma omp parallel for num_threads(nt) reduction(max : m) reduction(min : mn) schedule(static) if (n > 2 * chunk)
    for (int64_t lo = 0; lo < n; lo += chunk) {
        uint32_t gn;
        const int64_t hi = lo + chunk < n ? lo + chunk : n;
        const uint32_t g = level >= MF_ISA_AVX512 ? prep_range_avx512(&c, X, lo, hi, k, &gn)
                                                  : prep_range_avx2(&c, X, lo, hi, k, &gn);
        m = g > m ? g : m;
        mn = gn < mn ? gn : mn;
    }
#else
    (void)nt, (void)level;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t s;
        const uint32_t g = prep_f32(X[i], k, &s);
        m = g > m ? g : m;
        mn = g < mn ? g : mn;
    }
#endif
    *min_out = mn;
    return m;
}

static int fast_route_ok(int level, const uint32_t *A, const uint32_t *B, int64_t nA, int64_t nB, int k,
                         uint32_t lconst, int64_t *amax_f, int64_t *bmax, int *all_under,
                         int *no_under, int nt) {
    /* the largest non-zero prepared magnitudes (-1: all zero); inf/NaN make the max special */
    uint32_t na, nb;
    const uint32_t ga = prep_range(level, A, nA, k, nt, &na), gb = prep_range(level, B, nB, k, nt, &nb);
    const int64_t am = ga ? (int64_t)ga : -1, bmx = gb ? (int64_t)gb : -1;
    const int special = ga >= 0x7F800000u || gb >= 0x7F800000u;
    *all_under = 0;
    if (special) return 0;
    if (am < 0 || bmx < 0 || am + bmx - (int64_t)lconst < (1 << 23)) {
        *all_under = 1; /* a zero operand, or every product underflows: the result is +0 */
        return 1;
    }
    if (am + bmx - (int64_t)lconst > 0x7F7FFFFF) return 0; /* some product may overflow */
    *amax_f = am - (int64_t)lconst;
    *bmax = bmx;
    /* no zero operand and even the two smallest magnitudes make a normal product */
    *no_under = na > 0 && nb > 0 && (int64_t)na + (int64_t)nb - (int64_t)lconst >= (1 << 23);
    return 1;
}

#if MF_X86
/* Small M (attention at decode: q kᵀ and p v with 1..8 query rows). Packing B into panels costs
 * about as much as the products when each B element meets only M <= 8 rows (profile, Zen 3,
 * [16, 1, 64] x [16, 64, 1024]: packing ~45 % of the call, the kernel ~7 %), so this route
 * reads B in place and encodes each loaded vector on the fly (the same encodings as
 * pack_b_panel, hence the same sums in the same k order: the same bits). RT rows x NC vectors
 * per tile; A's encodings (threshold at and signed as, as in the packed route) [K][RT] are
 * prepared once. */
MF_TARGET_AVX2 static inline __attribute__((always_inline)) void direct_tile_avx2(
    const lm_vconst *c, const uint32_t *at, const uint32_t *as, const uint32_t *B, int64_t K,
    int64_t N, float *C, int64_t ldc, int rows, int32_t zb, const int RT, const int NC,
    const int check) {
    __m256 acc[8][2];
    for (int r = 0; r < RT; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const __m256i vzb = V256(zb);
    for (int64_t kk = 0; kk < K; ++kk) {
        __m256i bm[2], bs[2];
        for (int ci = 0; ci < NC; ++ci) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(B + kk * N + 8 * ci));
            const __m256i g = prep_fin256(c, _mm256_and_si256(x, V256(c->mag_mask)));
            const __m256i zero = _mm256_cmpeq_epi32(g, _mm256_setzero_si256());
            bm[ci] = sel256(zero, vzb, g);
            bs[ci] = sel256(zero, vzb, _mm256_or_si256(g, _mm256_and_si256(x, V256(c->sign_mask))));
        }
        for (int r = 0; r < RT; ++r) {
            const __m256i sa = V256(as[kk * RT + r]);
            const __m256i ta = V256(at[kk * RT + r]);
            for (int ci = 0; ci < NC; ++ci) {
                __m256i v = _mm256_add_epi32(sa, bs[ci]);
                if (check) /* invalid lanes become +0.0: the accumulator is unchanged */
                    v = _mm256_and_si256(_mm256_cmpgt_epi32(bm[ci], ta), v);
                acc[r][ci] = _mm256_add_ps(acc[r][ci], _mm256_castsi256_ps(v));
            }
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int ci = 0; ci < NC; ++ci) _mm256_storeu_ps(C + r * ldc + 8 * ci, acc[r][ci]);
}

/* direct_tile_avx2 with 16-column vectors (one encoding of B per 16 columns shared by the RT
 * rows: half the instructions per product). */
MF_TARGET_AVX512 static inline __attribute__((always_inline)) void direct_tile_avx512(
    const lm_vconst *c, const uint32_t *at, const uint32_t *as, const uint32_t *B, int64_t K,
    int64_t N, float *C, int64_t ldc, int rows, int32_t zb, const int RT, const int NC,
    const int check) {
    __m512 acc[8][2];
    for (int r = 0; r < RT; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const __m512i vzb = V512(zb);
    for (int64_t kk = 0; kk < K; ++kk) {
        __m512i bm[2], bs[2];
        for (int ci = 0; ci < NC; ++ci) {
            const __m512i x = _mm512_loadu_si512(B + kk * N + 16 * ci);
            const __m512i g = prep_fin512(c, _mm512_and_si512(x, V512(c->mag_mask)));
            const __mmask16 zero = _mm512_cmpeq_epi32_mask(g, _mm512_setzero_si512());
            bm[ci] = _mm512_mask_mov_epi32(g, zero, vzb);
            bs[ci] = _mm512_mask_mov_epi32(_mm512_or_si512(g, _mm512_and_si512(x, V512(c->sign_mask))),
                                           zero, vzb);
        }
        for (int r = 0; r < RT; ++r) {
            const __m512i sa = V512(as[kk * RT + r]);
            const __m512i ta = V512(at[kk * RT + r]);
            for (int ci = 0; ci < NC; ++ci) {
                const __m512 p = _mm512_castsi512_ps(_mm512_add_epi32(sa, bs[ci]));
                if (check)
                    acc[r][ci] = _mm512_mask_add_ps(acc[r][ci], _mm512_cmpgt_epi32_mask(bm[ci], ta),
                                                    acc[r][ci], p);
                else
                    acc[r][ci] = _mm512_add_ps(acc[r][ci], p);
            }
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int ci = 0; ci < NC; ++ci) _mm512_storeu_ps(C + r * ldc + 16 * ci, acc[r][ci]);
}

/* Columns [j0, j1) (multiples of 8) of rows [0, RT) (RT = M <= 8). AVX2: tiles of 16 columns
 * (8 for RT > 4), then one of 8. AVX-512: tiles of 32 columns, then 16, then 8 (AVX2). The
 * last N % 8 columns: lmatmul_direct, by the scalar spec. */
#define DIRECT_TILES(RT, NC)                                                                    \
    MF_TARGET_AVX2 static void direct_rows##RT(const lm_vconst *c, const uint32_t *at,          \
                                               const uint32_t *as, const uint32_t *B, int64_t K, \
                                               int64_t N, float *C, int64_t j0, int64_t j1,     \
                                               int32_t zb, int check) {                         \
        int64_t j = j0;                                                                         \
        for (; j + 8 * NC <= j1; j += 8 * NC)                                                   \
            if (check)                                                                          \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, NC, 1);          \
            else                                                                                \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, NC, 0);          \
        if (NC == 2 && j + 8 <= j1) {                                                           \
            if (check)                                                                          \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 1);           \
            else                                                                                \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 0);           \
        }                                                                                       \
    }                                                                                           \
    MF_TARGET_AVX512 static void direct_rows##RT##_512(                                         \
        const lm_vconst *c, const uint32_t *at, const uint32_t *as, const uint32_t *B, int64_t K, \
        int64_t N, float *C, int64_t j0, int64_t j1, int32_t zb, int check) {                   \
        int64_t j = j0;                                                                         \
        for (; j + 32 <= j1; j += 32)                                                           \
            if (check)                                                                          \
                direct_tile_avx512(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 2, 1);         \
            else                                                                                \
                direct_tile_avx512(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 2, 0);         \
        if (j + 16 <= j1) {                                                                     \
            if (check)                                                                          \
                direct_tile_avx512(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 1);         \
            else                                                                                \
                direct_tile_avx512(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 0);         \
            j += 16;                                                                            \
        }                                                                                       \
        if (j + 8 <= j1) {                                                                      \
            if (check)                                                                          \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 1);           \
            else                                                                                \
                direct_tile_avx2(c, at, as, B + j, K, N, C + j, N, RT, zb, RT, 1, 0);           \
        }                                                                                       \
    }
DIRECT_TILES(1, 2)
DIRECT_TILES(2, 2)
DIRECT_TILES(3, 2)
DIRECT_TILES(4, 2)
DIRECT_TILES(5, 1)
DIRECT_TILES(6, 1)
DIRECT_TILES(7, 1)
DIRECT_TILES(8, 1)
/* Up to this M the direct route runs (one group of rows). At 16-64 rows (two to eight groups,
 * each encoding B again) the packed route was as fast or faster: [16, M, 64] x [16, 64, 1024]
 * and [16, M, 1024] x [16, 1024, 64], k = 3, one thread, Zen 3, loaded machine (min of 15). */
#define LMATMUL_DIRECT_MAX_M 8

typedef void (*direct_fn)(const lm_vconst *, const uint32_t *, const uint32_t *, const uint32_t *,
                          int64_t, int64_t, float *, int64_t, int64_t, int32_t, int);

/* C [M][N] by direct_rows*, in groups of <= DIRECT_RT_MAX rows (each group reads and encodes B
 * again: worth it while M is small, LMATMUL_DIRECT_MAX_M). */
#define DIRECT_RT_MAX 8
static void lmatmul_direct(int level, const uint32_t *A, const uint32_t *B, float *C, int64_t M,
                           int64_t K, int64_t N, int k, uint32_t lconst, int64_t amax_f,
                           int64_t bmax, int no_under, int nt) {
    static const direct_fn fns2[DIRECT_RT_MAX + 1] = {
        NULL,           direct_rows1, direct_rows2, direct_rows3, direct_rows4,
        direct_rows5, direct_rows6, direct_rows7, direct_rows8};
    static const direct_fn fns5[DIRECT_RT_MAX + 1] = {
        NULL,           direct_rows1_512, direct_rows2_512, direct_rows3_512, direct_rows4_512,
        direct_rows5_512, direct_rows6_512, direct_rows7_512, direct_rows8_512};
    const int wide = level >= MF_ISA_AVX512;
    const direct_fn *fns = wide ? fns5 : fns2;
    const int64_t lo = 1 << 23;
    const int32_t za = (int32_t)(lo - 1 - bmax), zb = (int32_t)(lo - 1 - amax_f);
    const size_t a_bytes = mf_align_up((size_t)(K * M) * 4);
    uint8_t *scratch = mf_scratch(2 * a_bytes);
    if (scratch == NULL) {
        lmatmul_scalar(A, B, C, M, K, N, k, 0, 0, M); /* out of memory: the slow, exact route */
        return;
    }
    uint32_t *at = (uint32_t *)scratch;
    uint32_t *as = (uint32_t *)(scratch + a_bytes);
    /* A's encodings (the spec: enc_a), group by group: [group][K][rows of the group] */
    for (int64_t i0 = 0; i0 < M; i0 += DIRECT_RT_MAX) {
        const int64_t rt = M - i0 < DIRECT_RT_MAX ? M - i0 : DIRECT_RT_MAX;
        for (int64_t kk = 0; kk < K; ++kk)
            for (int64_t r = 0; r < rt; ++r) {
                uint32_t s = 0;
                const uint32_t g = prep_f32(A[(i0 + r) * K + kk], k, &s);
                const int32_t mag = g ? (int32_t)((int64_t)g - lconst) : za;
                at[i0 * K + kk * rt + r] = (uint32_t)(lo - 1 - (int64_t)mag);
                as[i0 * K + kk * rt + r] = (uint32_t)mag + s; /* mod 2^32 */
            }
    }
    lm_vconst vc;
    vconst_init(f32_fmt(), k, 0, &vc);
    /* whole vectors (16 columns at AVX-512, 8 at AVX2) split over the threads; the last
     * thread also takes a last group of 8 */
    const int64_t w = wide ? 16 : 8, nv = N / w, n8 = N / 8 * 8;
#pragma omp parallel num_threads(nt) if (nt > 1 && M * K * N >= LMATMUL_DIRECT_MIN_PARALLEL)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const int tid = 0, T = 1;
#endif
        const int64_t j0 = w * (nv * tid / T), j1 = tid == T - 1 ? n8 : w * (nv * (tid + 1) / T);
        for (int64_t i0 = 0; i0 < M; i0 += DIRECT_RT_MAX) {
            const int64_t rt = M - i0 < DIRECT_RT_MAX ? M - i0 : DIRECT_RT_MAX;
            fns[rt](&vc, at + i0 * K, as + i0 * K, B, K, N, C + i0 * N, j0, j1, zb, !no_under);
        }
    }
    const lm_fmt *f = f32_fmt();
    for (int64_t i = 0; i < M; ++i) /* the last N % 8 columns */
        for (int64_t j = n8; j < N; ++j) {
            float acc = 0.0f;
            for (int64_t kk = 0; kk < K; ++kk) acc += bits_f32(lmul_one(f, A[i * K + kk], B[kk * N + j], k, 0));
            C[i * N + j] = acc;
        }
}
#endif

#if MF_X86
/* What tile_route needs of one k-chunk of a panel (its real rows or columns only: padding
 * lanes are computed but never stored): the smallest non-zero prepared magnitude
 * (0xFFFFFFFF: every operand is zero) and whether some operand is zero. For A also the first
 * and last k of the chunk where some row of the block is non-zero: the products outside add
 * only +-0, so a tile runs over [k_lo, k_hi] alone (a causal mask's p: the zeros past the
 * diagonal are not visited, whatever the chunk size). */
typedef struct {
    uint32_t min_nz, has_zero;
    int64_t k_lo, k_hi;
} lm_chunk;

/* The kernel of one tile chunk (TILE_*). A product of non-zero operands is normal iff its
 * magnitudes sum to >= 2^23 + C, so if the two smallest non-zero magnitudes do, only zero
 * operands make invalid lanes. */
static inline int tile_route(lm_chunk a, lm_chunk b, uint32_t lconst) {
    if (a.min_nz == 0xFFFFFFFFu || b.min_nz == 0xFFFFFFFFu) return TILE_NONE;
    const int normal = (int64_t)a.min_nz + b.min_nz - (int64_t)lconst >= (1 << 23);
    if (!normal || b.has_zero) return TILE_CHECKED;
    return a.has_zero ? TILE_AZERO : TILE_UNCHECKED;
}

/* lm_chunk of the lanes of a vector summary: vmin = min over lanes of (g, or all ones where g
 * is zero), vzero = or of the zero masks. */
MF_TARGET_AVX2 static inline lm_chunk chunk_of(__m256i vmin, __m256i vzero) {
    uint32_t mn[8], zr[8];
    _mm256_storeu_si256((__m256i *)mn, vmin);
    _mm256_storeu_si256((__m256i *)zr, vzero);
    lm_chunk s = {0xFFFFFFFFu, 0, INT64_MAX, -1};
    for (int j = 0; j < 8; ++j) {
        s.min_nz = mn[j] < s.min_nz ? mn[j] : s.min_nz;
        s.has_zero |= zr[j] != 0;
    }
    return s;
}

static inline void chunk_add(lm_chunk *s, uint32_t g) {
    if (g == 0)
        s->has_zero = 1;
    else if (g < s->min_nz)
        s->min_nz = g;
}

/* Scalar spec of the A encodings (one element: A[i][kk], or a padding row when !real). */
static inline void enc_a(const uint32_t *A, int64_t K, int64_t i, int64_t kk, int real, int k,
                         uint32_t lconst, int32_t za, uint32_t *at, uint32_t *as, uint32_t *az,
                         lm_chunk *s) {
    uint32_t sg = 0, g = 0;
    if (real) {
        g = prep_f32(A[i * K + kk], k, &sg);
        chunk_add(s, g);
    }
    const int32_t mag = g ? (int32_t)((int64_t)g - lconst) : za;
    *at = (uint32_t)((1 << 23) - 1 - (int64_t)mag);
    *as = (uint32_t)mag + sg; /* mod 2^32 */
    *az = g ? 0xFFFFFFFFu : 0;
}

/* A's encodings for one block of MR rows starting at row i0 (rows >= M are padding) over all
 * k, into the block's [K][MR] panels, and the block's lm_chunk for every k-chunk of KC. Groups
 * of 4 rows x 8 k are encoded as 4 vectors (one per row) and transposed into 8 stores of the 4
 * rows of one k; the remaining K % 8 by enc_a (the spec). Finite operands (the fast route). */
MF_TARGET_AVX2 static void pack_a_block(const lm_vconst *c, const uint32_t *A, int64_t M, int64_t K,
                                        int64_t i0, int MR, int64_t KC, int k, int32_t za,
                                        uint32_t *at, uint32_t *as, uint32_t *az, lm_chunk *sum) {
    const __m256i vza = V256(za), vlc = V256(c->lconst), vlo = V256((1u << 23) - 1);
    const int64_t nch = (K + KC - 1) / KC;
    for (int64_t ch = 0; ch < nch; ++ch) {
        const int64_t k0 = ch * KC, k1 = K - k0 < KC ? K : k0 + KC;
        const int64_t k8 = k0 + (k1 - k0) / 8 * 8;
        __m256i vmin = V256(0xFFFFFFFFu), vzero = _mm256_setzero_si256();
        int64_t k_lo = INT64_MAX, k_hi = -1;
        for (int r0 = 0; r0 < MR; r0 += 4) {
            for (int64_t kk = k0; kk < k8; kk += 8) {
                __m256i et[4], es[4], ez[4], nz = _mm256_setzero_si256();
                for (int r = 0; r < 4; ++r) {
                    const int64_t i = i0 + r0 + r;
                    const __m256i x = i < M ? _mm256_loadu_si256((const __m256i *)(A + i * K + kk))
                                            : _mm256_setzero_si256();
                    const __m256i g = prep_fin256(c, _mm256_and_si256(x, V256(c->mag_mask)));
                    const __m256i zero = _mm256_cmpeq_epi32(g, _mm256_setzero_si256());
                    const __m256i mag = sel256(zero, vza, _mm256_sub_epi32(g, vlc));
                    et[r] = _mm256_sub_epi32(vlo, mag);
                    es[r] = _mm256_add_epi32(mag, _mm256_and_si256(x, V256(c->sign_mask)));
                    ez[r] = _mm256_xor_si256(zero, V256(0xFFFFFFFFu)); /* all ones: valid */
                    if (i < M) {
                        vmin = _mm256_min_epu32(vmin, _mm256_or_si256(g, zero));
                        vzero = _mm256_or_si256(vzero, zero);
                        nz = _mm256_or_si256(nz, ez[r]);
                    }
                }
                const unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(nz));
                if (bits) { /* the k of these 8 where a real row is non-zero */
                    const int64_t lo8 = kk + __builtin_ctz(bits), hi8 = kk + 31 - __builtin_clz(bits);
                    k_lo = lo8 < k_lo ? lo8 : k_lo;
                    k_hi = hi8 > k_hi ? hi8 : k_hi;
                }
                uint32_t *outs[3] = {at + kk * MR + r0, as + kk * MR + r0, az + kk * MR + r0};
                const __m256i *ins[3] = {et, es, ez};
                for (int e = 0; e < 3; ++e) {
                    const __m256i *R = ins[e];
                    const __m256i t0 = _mm256_unpacklo_epi32(R[0], R[1]), t1 = _mm256_unpackhi_epi32(R[0], R[1]);
                    const __m256i t2 = _mm256_unpacklo_epi32(R[2], R[3]), t3 = _mm256_unpackhi_epi32(R[2], R[3]);
                    /* u0 = [k0 | k4], u1 = [k1 | k5], u2 = [k2 | k6], u3 = [k3 | k7] (4 rows each) */
                    const __m256i u[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                                          _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
                    for (int j = 0; j < 4; ++j) {
                        _mm_storeu_si128((__m128i *)(outs[e] + j * MR), _mm256_castsi256_si128(u[j]));
                        _mm_storeu_si128((__m128i *)(outs[e] + (j + 4) * MR), _mm256_extracti128_si256(u[j], 1));
                    }
                }
            }
        }
        lm_chunk s = chunk_of(vmin, vzero);
        for (int64_t kk = k8; kk < k1; ++kk)
            for (int r = 0; r < MR; ++r) {
                enc_a(A, K, i0 + r, kk, i0 + r < M, k, c->lconst, za, at + kk * MR + r,
                      as + kk * MR + r, az + kk * MR + r, &s);
                if (i0 + r < M && az[kk * MR + r]) {
                    k_lo = kk < k_lo ? kk : k_lo;
                    k_hi = kk > k_hi ? kk : k_hi;
                }
            }
        s.k_lo = k_lo, s.k_hi = k_hi;
        sum[ch] = s;
    }
}

/* B's encodings for one panel of NR columns starting at column j0 (columns >= N are padding)
 * over all k, into [K][NR], and its lm_chunk per k-chunk. Whole panels 8 columns at a time;
 * the last partial panel element by element (the spec). */
MF_TARGET_AVX2 static void pack_b_panel(const lm_vconst *c, const uint32_t *B, int64_t K, int64_t N,
                                        int64_t j0, int NR, int64_t KC, int k, int32_t zb,
                                        int32_t *bm, uint32_t *bs, lm_chunk *sum) {
    const __m256i vzb = V256(zb);
    const int64_t nch = (K + KC - 1) / KC;
    for (int64_t ch = 0; ch < nch; ++ch) {
        const int64_t k0 = ch * KC, k1 = K - k0 < KC ? K : k0 + KC;
        lm_chunk s = {0xFFFFFFFFu, 0, k0, k1 - 1}; /* k range: not used for B */
        if (j0 + NR <= N) {
            __m256i vmin = V256(0xFFFFFFFFu), vzero = _mm256_setzero_si256();
            for (int64_t kk = k0; kk < k1; ++kk)
                for (int i = 0; i < NR; i += 8) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(B + kk * N + j0 + i));
                    const __m256i g = prep_fin256(c, _mm256_and_si256(x, V256(c->mag_mask)));
                    const __m256i zero = _mm256_cmpeq_epi32(g, _mm256_setzero_si256());
                    const __m256i sg = _mm256_or_si256(g, _mm256_and_si256(x, V256(c->sign_mask)));
                    _mm256_storeu_si256((__m256i *)(bm + kk * NR + i), sel256(zero, vzb, g));
                    _mm256_storeu_si256((__m256i *)(bs + kk * NR + i), sel256(zero, vzb, sg));
                    vmin = _mm256_min_epu32(vmin, _mm256_or_si256(g, zero));
                    vzero = _mm256_or_si256(vzero, zero);
                }
            s = chunk_of(vmin, vzero);
            s.k_lo = k0, s.k_hi = k1 - 1;
        } else {
            for (int64_t kk = k0; kk < k1; ++kk)
                for (int i = 0; i < NR; ++i) {
                    uint32_t sg = 0, g = 0;
                    if (j0 + i < N) {
                        g = prep_f32(B[kk * N + j0 + i], k, &sg);
                        chunk_add(&s, g);
                    }
                    bm[kk * NR + i] = g ? (int32_t)g : zb;
                    bs[kk * NR + i] = g ? (g | sg) : (uint32_t)zb;
                }
        }
        sum[ch] = s;
    }
}
#endif

/* k-chunks of the packed route: a B panel chunk (KC x NR x 4 B, twice for the checked kernel)
 * stays near (L1/L2) while the row blocks of a group (A chunks of MR x KC x 4-8 B from L2) pass
 * over it; each tile's sums continue from C between chunks (fp32 stores: the same bits as
 * keeping them in registers). Without the chunks a long K (p v: K = ctx) streamed each K x NR
 * panel from L2 once per row block. A chunk is also the unit of tile_route. KC = 256 at
 * AVX-512 too: 2048^3 on one thread (Zen 4, loaded) 235 ms vs 280 ms at KC = 128 (each chunk
 * reloads the tile's C rows, which sit at a 2^k stride); the finer chunk's advantage for a
 * causal mask (less of the diagonal band visited) is kept by the k_lo / k_hi trim. */
#ifndef LMATMUL_KC256
#define LMATMUL_KC256 256
#endif
#ifndef LMATMUL_KC512
#define LMATMUL_KC512 256
#endif
#ifndef LMATMUL_MGROUP
#define LMATMUL_MGROUP 16
#endif

static void lmatmul_fast(int level, const uint32_t *A, const uint32_t *B, float *C, int64_t M,
                         int64_t K, int64_t N, int k, uint32_t lconst, int64_t amax_f,
                         int64_t bmax, int nt) {
#if MF_X86
    const int wide = level >= MF_ISA_AVX512;
    const int MR = wide ? MR512 : MR256, NR = wide ? NR512 : NR256;
    const int64_t KC = wide ? LMATMUL_KC512 : LMATMUL_KC256;
    const int64_t lo = 1 << 23;
    /* Zero encodings: every sum that involves one lands below the smallest normal without
     * int32 overflow (see the file comment and docs/lmul.md). */
    const int32_t za = (int32_t)(lo - 1 - bmax), zb = (int32_t)(lo - 1 - amax_f);
    const int64_t mblocks = (M + MR - 1) / MR, nblocks = (N + NR - 1) / NR;
    const int64_t mgroups = (mblocks + LMATMUL_MGROUP - 1) / LMATMUL_MGROUP;
    const int64_t nch = (K + KC - 1) / KC;
    /* panels in the calling thread's grow-only scratch: no malloc or page faults per call */
    const size_t a_bytes = mf_align_up((size_t)(mblocks * K * MR) * 4);
    const size_t b_bytes = mf_align_up((size_t)(nblocks * K * NR) * 4);
    const size_t sa_bytes = mf_align_up((size_t)(mblocks * nch) * sizeof(lm_chunk));
    const size_t sb_bytes = mf_align_up((size_t)(nblocks * nch) * sizeof(lm_chunk));
    uint8_t *scratch = mf_scratch(3 * a_bytes + 2 * b_bytes + sa_bytes + sb_bytes);
    if (scratch == NULL) {
        lmatmul_scalar(A, B, C, M, K, N, k, 0, 0, M); /* out of memory: the slow, exact route */
        return;
    }
    uint32_t *apt = (uint32_t *)scratch;
    uint32_t *aps = (uint32_t *)(scratch + a_bytes);
    uint32_t *apz = (uint32_t *)(scratch + 2 * a_bytes);
    int32_t *bpm = (int32_t *)(scratch + 3 * a_bytes);
    uint32_t *bps = (uint32_t *)(scratch + 3 * a_bytes + b_bytes);
    lm_chunk *asum = (lm_chunk *)(scratch + 3 * a_bytes + 2 * b_bytes);
    lm_chunk *bsum = (lm_chunk *)(scratch + 3 * a_bytes + 2 * b_bytes + sa_bytes);
    lm_vconst vc;
    vconst_init(f32_fmt(), k, 0, &vc);
    (void)lconst;
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static) nowait
        for (int64_t mb = 0; mb < mblocks; ++mb)
            pack_a_block(&vc, A, M, K, mb * MR, MR, KC, k, za, apt + mb * K * MR,
                         aps + mb * K * MR, apz + mb * K * MR, asum + mb * nch);
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < nblocks; ++nb)
            pack_b_panel(&vc, B, K, N, nb * NR, NR, KC, k, zb, bpm + nb * K * NR,
                         bps + nb * K * NR, bsum + nb * nch);
        /* Tiles: a k-chunk of a B panel is reused by every row block of a group before the
         * next chunk. Dynamic: all-zero chunks (a causal mask's) make the work uneven. */
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t nb = 0; nb < nblocks; ++nb)
            for (int64_t mg = 0; mg < mgroups; ++mg)
                for (int64_t ch = 0; ch < nch; ++ch) {
                    const int64_t kc0 = ch * KC, kc = K - kc0 < KC ? K - kc0 : KC;
                    const int64_t mb1 = (mg + 1) * LMATMUL_MGROUP < mblocks ? (mg + 1) * LMATMUL_MGROUP : mblocks;
                    const int cols = (int)(N - nb * NR < NR ? N - nb * NR : NR);
                    for (int64_t mb = mg * LMATMUL_MGROUP; mb < mb1; ++mb) {
                        const int rows = (int)(M - mb * MR < MR ? M - mb * MR : MR);
                        float *ct = C + mb * MR * N + nb * NR;
                        const int route = tile_route(asum[mb * nch + ch], bsum[nb * nch + ch], vc.lconst);
                        if (route == TILE_NONE) { /* every product +-0: the sums are unchanged */
                            if (ch == 0)
                                for (int r = 0; r < rows; ++r) memset(ct + r * N, 0, (size_t)cols * sizeof(float));
                            continue;
                        }
                        /* A's non-zero k range in the chunk (route != NONE: not empty) */
                        const lm_chunk *sa = asum + mb * nch + ch;
                        const int64_t ks = sa->k_lo > kc0 ? sa->k_lo : kc0;
                        const int64_t ke = sa->k_hi < kc0 + kc - 1 ? sa->k_hi : kc0 + kc - 1;
                        const int64_t ao = (mb * K + ks) * MR, bo = (nb * K + ks) * NR;
                        if (wide)
                            tile_avx512(apt + ao, aps + ao, apz + ao, bpm + bo, bps + bo, ke - ks + 1,
                                        ct, N, rows, cols, ch > 0, route);
                        else
                            tile_avx2(apt + ao, aps + ao, apz + ao, bpm + bo, bps + bo, ke - ks + 1,
                                      ct, N, rows, cols, ch > 0, route);
                    }
                }
    }
#else
    (void)level, (void)lconst, (void)amax_f, (void)bmax, (void)nt;
    lmatmul_scalar(A, B, C, M, K, N, k, 0, 0, M);
#endif
}

static void lmatmul_full(int level, const uint32_t *A, const uint32_t *B, float *C, int64_t M,
                         int64_t K, int64_t N, int k, int mode, int nt) {
    lm_vconst c;
    vconst_init(f32_fmt(), k, mode, &c);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < M; ++i) {
#if MF_X86
        if (level >= MF_ISA_AVX512) {
            lmatmul_full_avx512(&c, A, B, C, K, N, k, mode, i, i + 1);
            continue;
        }
        if (level >= MF_ISA_AVX2) {
            lmatmul_full_avx2(&c, A, B, C, K, N, k, mode, i, i + 1);
            continue;
        }
#endif
        lmatmul_scalar(A, B, C, M, K, N, k, mode, i, i + 1);
    }
}

/* One float32 L-Matmul on nt threads; route -1 = fast route when it applies, 0 = full semantics
 * only. Returns 0 (full route), 1 (fast route) or 2 (fast route, no-underflow kernel). */
static int lmatmul_one(int level, const uint32_t *A, const uint32_t *B, float *C, int64_t M,
                       int64_t K, int64_t N, int k, int mode, int nt, int route) {
    const uint32_t lconst = lmul_const(f32_fmt(), k);
    int64_t amax_f = 0, bmax = 0;
    int all_under = 0, no_under = 0;
    const int fast = route != 0 && mode == 0 && level >= MF_ISA_AVX2 &&
                     fast_route_ok(level, A, B, M * K, K * N, k, lconst, &amax_f, &bmax, &all_under,
                                   &no_under, nt);
    if (fast && all_under)
        memset(C, 0, (size_t)(M * N) * sizeof(float));
#if MF_X86
    else if (fast && M <= LMATMUL_DIRECT_MAX_M)
        lmatmul_direct(level, A, B, C, M, K, N, k, lconst, amax_f, bmax, no_under, nt);
#endif
    else if (fast)
        lmatmul_fast(level, A, B, C, M, K, N, k, lconst, amax_f, bmax, nt);
    else
        lmatmul_full(level, A, B, C, M, K, N, k, mode, nt);
    return fast ? 1 + (no_under && !all_under) : 0;
}

/* Below this many products per matmul a second thread's fork/join costs more than it saves. */
#define LMATMUL_MIN_PARALLEL_WORK (1 << 18)

/* A batch of float32 L-Matmuls. Small matmuls (attention heads), and batches that split evenly
 * over the threads, run one matmul per thread (no barrier inside a matmul: measured on a loaded
 * Zen 4, 2 threads, [16, 512, 128] x [16, 128, 512]: 23 ms vs 200 ms splitting each matmul);
 * other large ones one after another, each on all threads; a whole batch below
 * LMATMUL_MIN_PARALLEL_WORK on one thread (a 2-thread fork/join on a shared machine: ~40 us vs
 * ~5 us for [2, 1, 64] x [2, 64, 64]). Every element computes the same
 * bits either way (each output's sum runs in k order on one thread). Returns the smallest
 * route code of lmatmul_one over the batch (0 full, 1 fast, 2 fast without underflow checks). */
static int lmatmul_batch(int level, const uint32_t *a, const uint32_t *b, float *c, int64_t batch,
                         int64_t M, int64_t K, int64_t N, int k, int mode, int nt, int route) {
    const int small = M * K * N < LMATMUL_MIN_PARALLEL_WORK;
    int all_fast = 2; /* the smallest route code over the batch (see lmatmul_one) */
    (void)f32_fmt(); /* its one-time initialization, before any parallel region reads it */
    /* whole matmuls per thread also when they split evenly (or nearly: >= 4 per thread) */
    const int split = batch >= nt && (batch % nt == 0 || batch >= 4 * nt);
    if (batch * M * K * N < LMATMUL_MIN_PARALLEL_WORK) nt = 1; /* the whole batch is small */
    if ((small || split) && batch > 1 && nt > 1) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(min : all_fast)
        for (int64_t bi = 0; bi < batch; ++bi) {
            const int r = lmatmul_one(level, a + bi * M * K, b + bi * K * N, c + bi * M * N, M,
                                      K, N, k, mode, 1, route);
            all_fast = r < all_fast ? r : all_fast;
        }
        return all_fast;
    }
    for (int64_t bi = 0; bi < batch; ++bi) {
        const int r = lmatmul_one(level, a + bi * M * K, b + bi * K * N, c + bi * M * N, M, K, N,
                                  k, mode, small ? 1 : nt, route);
        all_fast = r < all_fast ? r : all_fast;
    }
    return all_fast;
}

MF_PYFUNC(lmatmul_f32, "lmatmul_f32(a, b, c, batch, M, K, N, k, mode, isa, threads, route) -> fast?") {
    /* route: -1 = best (fast when it applies), 0 = full semantics only. Returns the smallest
     * route code over the batch: 2 = the fast route without underflow checks (every product
     * normal), 1 = the fast route, 0 = the full route for some element. */
    (void)self;
    void *a, *b, *c;
    int64_t batch, M, K, N, k, mode, isa, threads, route;
    if (mf_parse_args(args, nargs, "ppplllllllll", &a, &b, &c, &batch, &M, &K, &N, &k, &mode, &isa,
                      &threads, &route) < 0)
        return NULL;
    if (k < 1 || k > 23 || mode < 0 || mode > 1 || batch < 0 || M < 0 || K < 0 || N < 0) {
        PyErr_SetString(PyExc_ValueError, "lmatmul_f32: bad arguments");
        return NULL;
    }
    const int level = mf_isa_resolve((int)isa);
    const int nt = mf_threads(threads);
    int all_fast;
    Py_BEGIN_ALLOW_THREADS;
    all_fast = lmatmul_batch(level, a, b, c, batch, M, K, N, (int)k, (int)mode, nt, (int)route);
    Py_END_ALLOW_THREADS;
    return PyLong_FromLong(all_fast);
}
