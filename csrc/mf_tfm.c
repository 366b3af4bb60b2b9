/* The elementwise and attention stages of one transformer (BitNet b1.58) decode step, for
 * src/mulfree/engine/bitnet_plan.py, which runs them with the ternary kernel calls as one plan
 * (csrc/mf_plan.c). The spec of each stage is its NumPy twin in src/mulfree/engine/bitnet_ref.py;
 * the model-level spec is BitNetDecoder's torch path (`fused=False`), which the step matches
 * through int8 rounding (tests/engine/test_bitnet_plan.py).
 *
 *   tfm_norm      x += add; out = w * (x * rsqrt(mean(x^2) + eps))   (transformers' RMSNorm)
 *   tfm_rope      rotate-half RoPE of q and k heads in place, cos/sin rows at each row's position
 *   tfm_kv_write  store each row's k and v at its (slot, position) of the cache (mf_tfm.h)
 *   tfm_attend    one token's GQA attention over positions 0..pos of its slot: scores, softmax,
 *                 P V; products exact float32 or L-Mul (csrc/mf_lmul.h, float32, "int" mode)
 *   tfm_glu       act(gate) * up (ReLU^2 or SiLU), then ffn_sub_norm when given
 *
 * Every ISA level gives the same bits, by construction rather than by tolerance:
 * - no FMA contraction (-std=c11), every product and sum one float32 operation;
 * - the RMS sum is float64 in 8 fixed lanes (element j in lane j % 8, lanes combined as
 *   ((0+1)+(2+3))+((4+5)+(6+7))): squares of floats are exact in float64, the order is fixed;
 * - the attention sums run in one order at every level: a score sums its head_dim products
 *   d = 0, 1, ...; an output element sums its positions j = 0, 1, ...; the softmax denominator
 *   sums position j into float32 lane j % 8, lanes combined as above. SIMD variants vectorize
 *   across positions (scores), head_dim (P V) or lanes (the denominator), never inside a sum;
 * - exp is one polynomial (`exp_poly`, the Cephes-style expf also used by csrc/mf_decode.c's
 *   AVX2 stages), written once for scalar lanes and once for 8 lanes with the same operations.
 * tfm_norm, tfm_rope and tfm_kv_write are a few thousand operations per token: scalar C only
 * (the compiler vectorizes what it can without reordering sums). tfm_attend and tfm_glu have
 * AVX2 (+F16C for float16 caches) variants; tfm_attend also AVX-512 ones (16 lanes, head_dim
 * % 16 == 0; tested natively and on SIMDe, tests/kernels/avx512_tfm_harness.c), tfm_glu's
 * AVX-512 level runs the AVX2 code. tfm_attend's L-Mul products go through a fast route (each
 * operand prepared once; a product one add, one compare and one and or mask, see lmf_prod)
 * for rows whose products cannot overflow and whose operands are all finite, the full lmul256
 * otherwise: the same bits either way. NaN inputs are outside the bit-exact contract (the
 * SIMD max of NaN scores is not the scalar's).
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mf_common.h"
#include "mf_exp.h"
#include "mf_lmul.h"
#include "mf_tfm.h"
#if MF_X86
#include <immintrin.h>
#endif

#define MF_TARGET_AVX2_F16C __attribute__((target("avx2,f16c")))
#define TFM_MAX_HD 1024 /* head_dim bound: RoPE's per-head copy lives on the stack */
/* tfm_attend: a thread per this many products at least (below, fork/join costs about as much);
 * overridable so the SIMDe harness splits small shapes */
#ifndef TFM_MIN_WORK
#define TFM_MIN_WORK (1 << 19)
#endif

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---------------------------------------------------------------------------------------------
 * Scalar helpers: the spec of every lane
 * ------------------------------------------------------------------------------------------- */
static inline float inv_rms8(const float *v, int64_t n, float eps) {
    double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < n; ++j) l[j & 7] += (double)v[j] * (double)v[j];
    const double s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    const float mean = (float)(s / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

/* exp(x) = 2^n p(r): n = floor(x log2(e) + 1/2), r = x - n ln 2 (Cody-Waite), Cephes's expf
 * polynomial; x clamped to [-87.3, 88.7] (NaN -> -87.3, as _mm256_max_ps(x, lo) gives). */
static inline float exp_poly(float x) {
    x = x > -87.3f ? x : -87.3f;
    x = x < 88.7f ? x : 88.7f;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = ((p * r) * r + r) + 1.0f;
    return p * u2f((uint32_t)((int32_t)n + 127) << 23);
}

static inline float tree8f(const float l[8]) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* bfloat16 / float16 <-> float32, round to nearest even (torch's and NumPy's conversions). */
static inline uint16_t f32_to_bf16(float f) {
    const uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

static inline uint16_t f32_to_f16(float f) {
    const uint32_t x = f2u(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or 0 */
        if (ax < 0x33000000u) return (uint16_t)sign;          /* below 2^-25: 0 */
        const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        const int sh = 126 - (int)e; /* units of 2^-24 */
        uint32_t r = m >> sh;
        const uint32_t rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return (uint16_t)(sign | r);
    }
    const uint32_t t = ax - 0x38000000u; /* exponent rebiased 127 -> 15 */
    uint32_t h = t >> 13;
    const uint32_t rem = t & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
}
static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return u2f(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        const float v = (float)m * 0x1p-24f; /* exact */
        return sign ? -v : v;
    }
    return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

/* One stored value (index i of a cache array) as float32; int8 codes times their step. */
static inline float kv_load(const void *c, int64_t i, int dtype, const float *steps, int64_t si) {
    switch (dtype) {
    case TFM_KV_F32: return ((const float *)c)[i];
    case TFM_KV_BF16: return bf16_to_f32(((const uint16_t *)c)[i]);
    case TFM_KV_F16: return f16_to_f32(((const uint16_t *)c)[i]);
    default: return (float)((const int8_t *)c)[i] * steps[si];
    }
}

static inline void kv_store(void *c, int64_t i, int dtype, float v, float step) {
    switch (dtype) {
    case TFM_KV_F32: ((float *)c)[i] = v; break;
    case TFM_KV_BF16: ((uint16_t *)c)[i] = f32_to_bf16(v); break;
    case TFM_KV_F16: ((uint16_t *)c)[i] = f32_to_f16(v); break;
    default: {
        float q = rintf(v / step); /* round half to even, as torch.round */
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        ((int8_t *)c)[i] = (int8_t)q;
    }
    }
}

/* ---------------------------------------------------------------------------------------------
 * tfm_norm, tfm_rope, tfm_kv_write (scalar)
 * ------------------------------------------------------------------------------------------- */
static void norm(float *x, const float *add, int64_t B, int64_t n, const float *w, float eps,
                 float *out) {
    for (int64_t b = 0; b < B; ++b) {
        float *xr = x + b * n, *o = out + b * n;
        if (add != NULL)
            for (int64_t j = 0; j < n; ++j) xr[j] += add[b * n + j];
        const float r = inv_rms8(xr, n, eps);
        for (int64_t j = 0; j < n; ++j) o[j] = w[j] * (xr[j] * r);
    }
}

/* x rows (stride floats apart) of nh heads of hd; row b at position rows[2b+1]. */
static void rope(float *x, int64_t B, int64_t stride, int64_t nh, int64_t hd, const float *cos_t,
                 const float *sin_t, const int64_t *rows) {
    const int64_t h2 = hd / 2;
    float t[TFM_MAX_HD];
    for (int64_t b = 0; b < B; ++b) {
        const float *c = cos_t + rows[2 * b + 1] * hd, *s = sin_t + rows[2 * b + 1] * hd;
        for (int64_t h = 0; h < nh; ++h) {
            float *v = x + b * stride + h * hd;
            memcpy(t, v, (size_t)hd * sizeof(float));
            for (int64_t i = 0; i < h2; ++i) v[i] = t[i] * c[i] + (-t[i + h2]) * s[i];
            for (int64_t i = h2; i < hd; ++i) v[i] = t[i] * c[i] + t[i - h2] * s[i];
        }
    }
}

static inline float absmax_step(const float *v, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i) m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
    return (m > 1e-12f ? m : 1e-12f) / 127.0f;
}

static void kv_write(const float *x, int64_t B, int64_t stride, int64_t koff, int64_t voff,
                     void *kc, void *vc, float *ks, float *vs, int dtype, int64_t Hkv, int64_t hd,
                     int64_t ctx, const int64_t *rows) {
    for (int64_t b = 0; b < B; ++b) {
        const int64_t slot = rows[2 * b], pos = rows[2 * b + 1];
        for (int64_t g = 0; g < Hkv; ++g) {
            const float *k = x + b * stride + koff + g * hd, *v = x + b * stride + voff + g * hd;
            const int64_t sh = slot * Hkv + g; /* (slot, kv head) */
            float kst = 0.0f, vst = 0.0f;
            if (dtype == TFM_KV_I8) {
                kst = ks[sh * ctx + pos] = absmax_step(k, hd);
                vst = vs[sh * ctx + pos] = absmax_step(v, hd);
            }
            const int64_t kt = (sh * (ctx / TFM_KTILE) + pos / TFM_KTILE) * hd * TFM_KTILE;
            for (int64_t d = 0; d < hd; ++d) {
                kv_store(kc, kt + d * TFM_KTILE + pos % TFM_KTILE, dtype, k[d], kst);
                kv_store(vc, (sh * ctx + pos) * hd + d, dtype, v[d], vst);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * tfm_attend
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    const void *kc, *vc;
    const float *ks, *vs;
    int dtype;
    int64_t H, Hkv, hd, ctx;
    float scaling;
    int lmul; /* 0: exact products; 1: L-Mul with vc below */
    lm_fmt f;
    int k;    /* L-Mul mantissa bits */
} attn_args;

static inline float prod(const attn_args *A, float a, float b) {
    if (!A->lmul) return a * b;
    return u2f(lmul_one(&A->f, f2u(a), f2u(b), A->k, 0));
}

/* Softmax of s[0..n) in place (exp_poly of s - max, lane sums, times 1 / sum). */
static void softmax_scalar(float *s, int64_t n) {
    float m = s[0];
    for (int64_t j = 1; j < n; ++j) m = s[j] > m ? s[j] : m;
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < n; ++j) {
        s[j] = exp_poly(s[j] - m);
        l[j & 7] += s[j];
    }
    const float inv = 1.0f / tree8f(l);
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] * inv;
}

/* One query row q [H][hd] of `slot` over positions 0..n-1 -> out [H][hd]; sc: scratch >= n. */
static void attend_row_scalar(const attn_args *A, const float *q, int64_t slot, int64_t n,
                              float *out, float *sc) {
    const int64_t G = A->H / A->Hkv, hd = A->hd, ctx = A->ctx;
    for (int64_t h = 0; h < A->H; ++h) {
        const int64_t sh = slot * A->Hkv + h / G;
        const float *qh = q + h * hd;
        const float *st = A->ks == NULL ? NULL : A->ks + sh * ctx;
        for (int64_t j = 0; j < n; ++j) {
            const int64_t kt = (sh * (ctx / TFM_KTILE) + j / TFM_KTILE) * hd * TFM_KTILE + j % TFM_KTILE;
            float acc = 0.0f;
            for (int64_t d = 0; d < hd; ++d)
                acc += prod(A, qh[d], kv_load(A->kc, kt + d * TFM_KTILE, A->dtype, st, j));
            sc[j] = acc * A->scaling;
        }
        softmax_scalar(sc, n);
        const float *vst = A->vs == NULL ? NULL : A->vs + sh * ctx;
        for (int64_t d = 0; d < hd; ++d) {
            float acc = 0.0f;
            for (int64_t j = 0; j < n; ++j)
                acc += prod(A, sc[j], kv_load(A->vc, (sh * ctx + j) * hd + d, A->dtype, vst, j));
            out[h * hd + d] = acc;
        }
    }
}

#if MF_X86

MF_TARGET_AVX2 static void softmax_avx2(float *s, int64_t n) {
    int64_t j = 0;
    __m256 vm = _mm256_set1_ps(s[0]);
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    float mm[8];
    _mm256_storeu_ps(mm, vm);
    float m = mm[0];
    for (int i = 1; i < 8; ++i) m = mm[i] > m ? mm[i] : m;
    for (; j < n; ++j) m = s[j] > m ? s[j] : m; /* max is exact in any order */
    const __m256 bm = _mm256_set1_ps(m);
    __m256 lanes = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), bm));
        _mm256_storeu_ps(s + j, e);
        lanes = _mm256_add_ps(lanes, e);
    }
    float l[8];
    _mm256_storeu_ps(l, lanes);
    for (; j < n; ++j) { /* the tail's position j goes to lane j % 8, as in the scalar sum */
        s[j] = exp_poly(s[j] - m);
        l[j & 7] += s[j];
    }
    const __m256 inv = _mm256_set1_ps(1.0f / tree8f(l));
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
    const float iv = 1.0f / tree8f(l);
    for (; j < n; ++j) s[j] = s[j] * iv;
}

#define MF_AI __attribute__((always_inline)) inline

/* The vector code is written once with dtype, lmul and the head count as compile-time
 * constants (always-inlined into one switch per combination): no branch in an inner loop, and
 * the accumulators of a fixed head count stay in registers. */
MF_TARGET_AVX2_F16C static MF_AI __m256 prod8(const lm_vconst *vc, const int lmul, __m256 a,
                                              __m256 b) {
    if (!lmul) return _mm256_mul_ps(a, b);
    return _mm256_castsi256_ps(lmul256(vc, _mm256_castps_si256(a), _mm256_castps_si256(b)));
}

/* 8 stored values from index i as float32; int8 codes times `step` (per lane), as kv_load. */
MF_TARGET_AVX2_F16C static MF_AI __m256 load8(const void *c, int64_t i, const int dtype,
                                              __m256 step) {
    if (dtype == TFM_KV_F32) return _mm256_loadu_ps((const float *)c + i);
    if (dtype == TFM_KV_BF16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)c + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (dtype == TFM_KV_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)c + i)));
    const __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)c + i));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), step);
}

/* Scores of nq heads (rows q + i hd) at the 8 positions of tile t, decoded in kt [hd][8]:
 * sc[i][8t ..] = (sum_d q_i[d] k[d]) * scaling, d sequential. */
MF_TARGET_AVX2_F16C static MF_AI void scores_nq(const lm_vconst *vc, const int lmul, const int nq,
                                                const float *q, int64_t hd, const float *kt,
                                                float scaling, float *sc, int64_t npad, int64_t t) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t d = 0; d < hd; ++d) {
        const __m256 kv = _mm256_load_ps(kt + d * TFM_KTILE);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i)
            acc[i] = _mm256_add_ps(acc[i], prod8(vc, lmul, _mm256_set1_ps(q[i * hd + d]), kv));
    }
    const __m256 s = _mm256_set1_ps(scaling);
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i) _mm256_storeu_ps(sc + i * npad + t * TFM_KTILE, _mm256_mul_ps(acc[i], s));
}

/* out_i[d0 .. d0 + 8 nv) = sum_j p_i[j] v[j][d0 ..], j sequential, for nq heads. */
MF_TARGET_AVX2_F16C static MF_AI void pv_nq(const lm_vconst *vc, const int lmul, const int dtype,
                                            const int nq, const int nv, const float *p,
                                            int64_t npad, const void *vbase, const float *vst,
                                            int64_t n, int64_t hd, int64_t d0, float *out) {
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
        for (int v = 0; v < nv; ++v) acc[i][v] = _mm256_setzero_ps();
    __m256 step = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        if (dtype == TFM_KV_I8) step = _mm256_set1_ps(vst[j]); /* the step of position j */
        __m256 vv[2];
        for (int v = 0; v < nv; ++v) vv[v] = load8(vbase, j * hd + d0 + 8 * v, dtype, step);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i) {
            const __m256 pj = _mm256_set1_ps(p[i * npad + j]);
            for (int v = 0; v < nv; ++v) acc[i][v] = _mm256_add_ps(acc[i][v], prod8(vc, lmul, pj, vv[v]));
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
        for (int v = 0; v < nv; ++v) _mm256_storeu_ps(out + i * hd + d0 + 8 * v, acc[i][v]);
}

#define MF_NQ_SWITCH(nq, call) \
    switch (nq) {              \
    case 1: call(1); break;    \
    case 2: call(2); break;    \
    case 3: call(3); break;    \
    default: call(4); break;   \
    }

/* One row: q [H][hd] of `slot` over positions 0..n-1 -> out [H][hd]. sc: scratch of G * npad
 * scores followed by a decoded key tile (hd x 8, 32-byte aligned). Needs hd % 8 == 0. */
MF_TARGET_AVX2_F16C static MF_AI void attend_row_t(const attn_args *A, const lm_vconst *vc,
                                                   const int dtype, const int lmul,
                                                   const float *q, int64_t slot, int64_t gsel,
                                                   int64_t h0, int64_t h1, int64_t n, float *out,
                                                   float *sc) {
    const int64_t G = A->H / A->Hkv, hd = A->hd, ctx = A->ctx;
    const int64_t tiles = (n + TFM_KTILE - 1) / TFM_KTILE, npad = tiles * TFM_KTILE;
    float *kt = sc + mf_round_up(G * npad, 8);
    for (int64_t g = gsel; g < gsel + 1; ++g) { /* one kv head per call */
        const int64_t sh = slot * A->Hkv + g;
        const float *qg = q + g * G * hd;
        for (int64_t t = 0; t < tiles; ++t) {
            /* decode the tile once for the G heads; lanes past n hold unused positions */
            const int64_t base = (sh * (ctx / TFM_KTILE) + t) * hd * TFM_KTILE;
            const __m256 st = dtype == TFM_KV_I8 ? _mm256_loadu_ps(A->ks + sh * ctx + t * TFM_KTILE)
                                                 : _mm256_setzero_ps();
            for (int64_t d = 0; d < hd; ++d)
                _mm256_store_ps(kt + d * TFM_KTILE, load8(A->kc, base + d * TFM_KTILE, dtype, st));
            for (int64_t i0 = h0; i0 < h1; i0 += 4) {
                const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
#define MF_SCORES(k) scores_nq(vc, lmul, k, qg + i0 * hd, hd, kt, A->scaling, sc + i0 * npad, npad, t)
                MF_NQ_SWITCH(nq, MF_SCORES)
#undef MF_SCORES
            }
        }
        for (int64_t i = h0; i < h1; ++i) softmax_avx2(sc + i * npad, n);
        const void *vbase = (const char *)A->vc + (size_t)(sh * ctx * hd) * (dtype == TFM_KV_F32 ? 4 : dtype == TFM_KV_I8 ? 1 : 2);
        const float *vst = dtype == TFM_KV_I8 ? A->vs + sh * ctx : NULL;
        for (int64_t i0 = h0; i0 < h1; i0 += 4) {
            const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
            float *o = out + (g * G + i0) * hd;
            int64_t d0 = 0;
#define MF_PV2(k) pv_nq(vc, lmul, dtype, k, 2, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
#define MF_PV1(k) pv_nq(vc, lmul, dtype, k, 1, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
            for (; d0 + 16 <= hd; d0 += 16) MF_NQ_SWITCH(nq, MF_PV2)
            if (d0 < hd) MF_NQ_SWITCH(nq, MF_PV1)
#undef MF_PV2
#undef MF_PV1
        }
    }
}

#define MF_ROW_FN(name, dt, lm)                                                                 \
    MF_TARGET_AVX2_F16C static void name(const attn_args *A, const lm_vconst *vc,                \
                                         const float *q, int64_t slot, int64_t g, int64_t h0, int64_t h1,     \
                                         int64_t n, float *out, float *sc) {                                \
        attend_row_t(A, vc, dt, lm, q, slot, g, h0, h1, n, out, sc);                                     \
    }
MF_ROW_FN(row_f32_x, TFM_KV_F32, 0)
MF_ROW_FN(row_f32_l, TFM_KV_F32, 1)
MF_ROW_FN(row_bf16_x, TFM_KV_BF16, 0)
MF_ROW_FN(row_bf16_l, TFM_KV_BF16, 1)
MF_ROW_FN(row_f16_x, TFM_KV_F16, 0)
MF_ROW_FN(row_f16_l, TFM_KV_F16, 1)
MF_ROW_FN(row_i8_x, TFM_KV_I8, 0)
MF_ROW_FN(row_i8_l, TFM_KV_I8, 1)
#undef MF_ROW_FN
typedef void (*attend_row_fn)(const attn_args *, const lm_vconst *, const float *, int64_t, int64_t,
                              int64_t, int64_t, int64_t, float *, float *);

/* ---- L-Mul fast route (float32 operands, "int" mode) --------------------------------------
 * lmul256 prepares both operands of every product (flush, round to k mantissa bits, NaN / inf
 * / zero tests) and then selects among five outcomes. Here each operand is prepared once (a
 * key or value vector for the G query heads that use it; q and p once per row) and a product
 * is one integer add, one compare and one and. For finite prepared magnitudes a (the vector
 * side) and b (the scalar side, q or p), lmul_one is
 *     a == 0 or b == 0 or a + b < under_sum (= lconst + 2^23)  ->  +-0
 *     else sign | min(a + b - lconst, inf)
 * A row goes to the full route when a + b - lconst could pass 0x7f7fffff or any operand is inf
 * or NaN (checked on the largest magnitudes, lmf_ok), so the min never bites; for the other
 * lanes 2^23 <= a + b - lconst < 2^31 and
 *     sign | (a + b - lconst) = (sa | a) + ((b - lconst) + sb)   (mod 2^32, sa, sb bit 31):
 * the sign bits add with no carry into them, i.e. they xor. The scalar side holds
 * adj = (b - lconst) + sb and thr, the largest a whose product is +-0 (max(under_sum - b, 1) - 1:
 * a zero a is always at or below it; a zero b has thr = INT32_MAX), so a product is
 *     a > thr ? (sa | a) + adj : +0.
 * A +-0 product leaves the float32 sum it is added to as it is (a sum from +0 is never -0), so
 * the masked lanes adding +0 give the spec's bits. The order of every sum is the full route's. */
typedef struct {
    uint32_t *qadj, *qthr; /* q's scalar sides [G][hd] */
    uint32_t *padj, *pthr; /* p's [G][npad] */
} lmf_buf;

/* The scalar side (q or p element v): adj and thr as above; returns b (> 0x7f7fffff when v is
 * not finite after rounding). */
static inline uint32_t lmf_scalar(const lm_fmt *f, int k, uint32_t lconst, uint32_t under_sum,
                                  float v, uint32_t *adj, uint32_t *thr) {
    const uint32_t u = f2u(v), b = prep_mag(f, u & 0x7fffffffu, k);
    *adj = (b - lconst) + (u & 0x80000000u);
    *thr = b == 0 ? 0x7fffffffu : (b >= under_sum ? 0u : under_sum - b - 1);
    return b;
}

/* The row is safe for the fast route: every vector-side magnitude (raw, before rounding, so at
 * most `slack` = 2^drop below its rounded value) and scalar-side b <= bmax keep a + b - lconst
 * below inf, and no magnitude rounds to inf or is inf / NaN. */
static inline int lmf_ok(uint32_t vmax, uint32_t bmax, uint32_t lconst, uint32_t slack) {
    return bmax <= 0x7f7fffffu && vmax <= 0x7f7fffffu - slack &&
           (uint64_t)vmax + slack + bmax <= 0x7f7fffffull + lconst;
}

/* Prepared vector side of 8 floats: mag = a (flushed, rounded), ms = sign | a; vmax collects
 * the raw magnitudes of the lanes in `live`. The rounding runs on the signed bits: the sign
 * stays for every magnitude the route keeps (a carry into bit 31 needs an inf / NaN magnitude,
 * whose rows lmf_ok hands off), and ms of a flushed lane is never used (its mag is 0, at or
 * below every thr): 2 operations fewer than rounding the magnitude and or-ing the sign back. */
MF_TARGET_AVX2 static MF_AI void lmf_vprep(const lm_vconst *c, __m256 v, __m256i live,
                                           __m256i *ms, __m256i *mag, __m256i *vmax) {
    const __m256i b = _mm256_castps_si256(v), raw = _mm256_and_si256(b, V256(0x7fffffffu));
    *vmax = _mm256_max_epu32(*vmax, _mm256_and_si256(raw, live));
    __m256i r = b;
    if (c->drop > 0) { /* round to nearest even at bit `drop`: (m + half - 1 + lsb) & ~low */
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        const __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(b, sh), V256(1));
        r = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(b, V256(c->round_half_m1)), lsb),
                             V256(~((1u << c->drop) - 1)));
    }
    *ms = r;
    *mag = _mm256_andnot_si256(_mm256_cmpgt_epi32(V256(0x800000u), raw), /* flush */
                               _mm256_and_si256(r, V256(0x7fffffffu)));
}

/* 8 products of a prepared vector side and one scalar side (adj, thr), as float32 bits. */
MF_TARGET_AVX2 static MF_AI __m256 lmf_prod(__m256i ms, __m256i mag, uint32_t adj, uint32_t thr) {
    const __m256i keep = _mm256_cmpgt_epi32(mag, V256(thr)); /* both < 2^31: signed is fine */
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_add_epi32(ms, V256(adj)), keep));
}

static inline uint32_t hmax8_epu32(const uint32_t l[8]) {
    uint32_t m = l[0];
    for (int i = 1; i < 8; ++i) m = l[i] > m ? l[i] : m;
    return m;
}

/* Scores of heads i0 .. i0 + nq at the 8 positions of the key tile at `base`: each key vector
 * is loaded and prepared once for the nq heads (no decoded tile in memory), sums d = 0, 1, ... */
MF_TARGET_AVX2_F16C static MF_AI void lmf_scores_nq(const lm_vconst *c, const int dtype,
                                                    const int nq, const lmf_buf *L, int64_t i0,
                                                    int64_t hd, const void *kc, int64_t base,
                                                    __m256 st, __m256i live, float scaling,
                                                    float *sc, int64_t npad, int64_t t,
                                                    __m256i *vmax) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const uint32_t *qadj = L->qadj + i0 * hd, *qthr = L->qthr + i0 * hd;
    for (int64_t d = 0; d < hd; ++d) {
        __m256i ms, mag;
        lmf_vprep(c, load8(kc, base + d * TFM_KTILE, dtype, st), live, &ms, &mag, vmax);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i)
            acc[i] = _mm256_add_ps(acc[i], lmf_prod(ms, mag, qadj[i * hd + d], qthr[i * hd + d]));
    }
    const __m256 sv = _mm256_set1_ps(scaling);
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
        _mm256_storeu_ps(sc + (i0 + i) * npad + t * TFM_KTILE, _mm256_mul_ps(acc[i], sv));
}

/* out_i[d0 .. d0 + 8 nv) = sum_j p_i[j] v[j][d0 ..], j sequential, for nq heads: the nq x nv
 * sums stay in registers over the positions (d-blocks outer), each value vector is loaded and
 * prepared once for the nq heads. */
MF_TARGET_AVX2_F16C static MF_AI void lmf_pv_nq(const lm_vconst *c, const int dtype, const int nq,
                                                const int nv, const lmf_buf *L, int64_t i0,
                                                int64_t npad, const void *vbase, const float *vst,
                                                int64_t n, int64_t hd, int64_t d0, float *out,
                                                __m256i *vmax) {
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
        for (int v = 0; v < nv; ++v) acc[i][v] = _mm256_setzero_ps();
    const uint32_t *padj = L->padj + i0 * npad, *pthr = L->pthr + i0 * npad;
    const __m256i all = _mm256_set1_epi32(-1);
    __m256 step = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        if (dtype == TFM_KV_I8) step = _mm256_set1_ps(vst[j]); /* the step of position j */
        __m256i ms[2], mag[2];
        for (int v = 0; v < nv; ++v)
            lmf_vprep(c, load8(vbase, j * hd + d0 + 8 * v, dtype, step), all, &ms[v], &mag[v], vmax);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i) {
            const uint32_t adj = padj[i * npad + j], thr = pthr[i * npad + j];
            for (int v = 0; v < nv; ++v)
                acc[i][v] = _mm256_add_ps(acc[i][v], lmf_prod(ms[v], mag[v], adj, thr));
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
        for (int v = 0; v < nv; ++v) _mm256_storeu_ps(out + (i0 + i) * hd + d0 + 8 * v, acc[i][v]);
}

/* The fast L-Mul route of one (row, kv head); returns 0, or 1 when the row is not safe for it
 * (lmf_ok; nothing usable written: the caller runs the full route). */
MF_TARGET_AVX2_F16C static MF_AI int lmf_row_t(const attn_args *A, const lm_vconst *c,
                                               const int dtype, const float *q, int64_t slot,
                                               int64_t g, int64_t h0, int64_t h1, int64_t n,
                                               float *out, float *sc, const lmf_buf *L) {
    const int64_t G = A->H / A->Hkv, hd = A->hd, ctx = A->ctx;
    const int64_t tiles = (n + TFM_KTILE - 1) / TFM_KTILE, npad = tiles * TFM_KTILE;
    const uint32_t lconst = c->lconst, us = c->under_sum, slack = 1u << c->drop;
    const int64_t sh = slot * A->Hkv + g;
    uint32_t bmax = 0, l[8];
    for (int64_t e = h0 * hd; e < h1 * hd; ++e) {
        const uint32_t b = lmf_scalar(&A->f, A->k, lconst, us, q[g * G * hd + e], L->qadj + e,
                                      L->qthr + e);
        bmax = b > bmax ? b : bmax;
    }
    if (bmax > 0x7f7fffffu) return 1;
    __m256i vmax = _mm256_setzero_si256();
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t base = (sh * (ctx / TFM_KTILE) + t) * hd * TFM_KTILE;
        const __m256 st = dtype == TFM_KV_I8 ? _mm256_loadu_ps(A->ks + sh * ctx + t * TFM_KTILE)
                                             : _mm256_setzero_ps();
        /* lanes past n (positions not written yet) are not checked */
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - t * TFM_KTILE)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int64_t i0 = h0; i0 < h1; i0 += 4) {
            const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
#define MF_SC(k) lmf_scores_nq(c, dtype, k, L, i0, hd, A->kc, base, st, live, A->scaling, sc, npad, t, &vmax)
            MF_NQ_SWITCH(nq, MF_SC)
#undef MF_SC
        }
    }
    _mm256_storeu_si256((__m256i *)l, vmax);
    if (!lmf_ok(hmax8_epu32(l), bmax, lconst, slack)) return 1;
    bmax = 0;
    for (int64_t i = h0; i < h1; ++i) {
        softmax_avx2(sc + i * npad, n);
        for (int64_t j = 0; j < n; ++j) {
            const int64_t e = i * npad + j;
            const uint32_t b = lmf_scalar(&A->f, A->k, lconst, us, sc[e], L->padj + e, L->pthr + e);
            bmax = b > bmax ? b : bmax;
        }
    }
    if (bmax > 0x7f7fffffu) return 1;
    const void *vbase = (const char *)A->vc + (size_t)(sh * ctx * hd) * (dtype == TFM_KV_F32 ? 4 : dtype == TFM_KV_I8 ? 1 : 2);
    const float *vst = dtype == TFM_KV_I8 ? A->vs + sh * ctx : NULL;
    float *o = out + g * G * hd;
    vmax = _mm256_setzero_si256();
    for (int64_t i0 = h0; i0 < h1; i0 += 4) {
        const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
        int64_t d0 = 0;
#define MF_PV2(k) lmf_pv_nq(c, dtype, k, 2, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
#define MF_PV1(k) lmf_pv_nq(c, dtype, k, 1, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
        for (; d0 + 16 <= hd; d0 += 16) MF_NQ_SWITCH(nq, MF_PV2)
        if (d0 < hd) MF_NQ_SWITCH(nq, MF_PV1)
#undef MF_PV2
#undef MF_PV1
    }
    _mm256_storeu_si256((__m256i *)l, vmax);
    return !lmf_ok(hmax8_epu32(l), bmax, lconst, slack);
}

#define MF_LMF_FN(name, dt)                                                                     \
    MF_TARGET_AVX2_F16C static int name(const attn_args *A, const lm_vconst *c, const float *q,  \
                                        int64_t slot, int64_t g, int64_t h0, int64_t h1, int64_t n, float *out,          \
                                        float *sc, const lmf_buf *L) {                           \
        return lmf_row_t(A, c, dt, q, slot, g, h0, h1, n, out, sc, L);                                   \
    }
MF_LMF_FN(lmf_f32, TFM_KV_F32)
MF_LMF_FN(lmf_bf16, TFM_KV_BF16)
MF_LMF_FN(lmf_f16, TFM_KV_F16)
MF_LMF_FN(lmf_i8, TFM_KV_I8)
#undef MF_LMF_FN
typedef int (*lmf_row_fn)(const attn_args *, const lm_vconst *, const float *, int64_t, int64_t,
                          int64_t, int64_t, int64_t, float *, float *, const lmf_buf *);
static const lmf_row_fn LMF_ROW[4] = {lmf_f32, lmf_bf16, lmf_f16, lmf_i8};

/* AVX-512 code that also converts with F16C's 8-lane forms; overridable like MF_TARGET_AVX512
 * (mf_common.h) for the SIMDe harness */
#ifndef MF_TARGET_AVX512_F16C
#define MF_TARGET_AVX512_F16C __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl")))
#endif

/* ---- AVX-512: the fast L-Mul route on 16 lanes ---------------------------------------------
 * The products of lmf_* above with AVX-512's forms: the zero / underflow test is a compare
 * into a mask register that masks the float add (no and), sign | a one vpternlogd, the flush
 * a zero-masking and; 16 positions (two key tiles) per score vector, 16 head_dim elements per
 * value vector, 4 x 4 P V sums in registers. Every sum keeps its order (the full route's), so
 * the bits are the AVX2 and scalar routes'. Needs hd % 16 == 0. */

/* Two 8-lane halves as one 16-lane vector. */
MF_TARGET_AVX512_F16C static MF_AI __m512 join16(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                               _mm256_castps_pd(hi), 1));
}

/* 16 stored values as float32: split 0: 16 from index i; split 1: 8 from i and 8 from i + off
 * (two key tiles; two == 0: only the first, the upper 8 lanes 0). int8 codes times step. The
 * conversions run on 8-lane halves (load8): the forms SIMDe emulates too (it has no 16-lane
 * int8 / uint16 / float16 conversions), at the same cost on a CPU that splits 512-bit ops. */
MF_TARGET_AVX512_F16C static MF_AI __m512 load16(const void *c, int64_t i, int64_t off,
                                                 const int split, const int two, const int dtype,
                                                 __m512 step) {
    if (dtype == TFM_KV_F32 && !split) return _mm512_loadu_ps((const float *)c + i);
    const int64_t i2 = split ? i + off : i + 8;
    const __m256 z = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 lo = load8(c, i, dtype, one), hi = (split && !two) ? z : load8(c, i2, dtype, one);
    const __m512 v = join16(lo, hi);
    return dtype == TFM_KV_I8 ? _mm512_mul_ps(v, step) : v;
}

/* lmf_vprep on 16 lanes. */
MF_TARGET_AVX512_F16C static MF_AI void lmf_vprep512(const lm_vconst *c, __m512 v, __mmask16 live,
                                                __m512i *ms, __m512i *mag, __m512i *vmax) {
    const __m512i b = _mm512_castps_si512(v);
    __m512i m = _mm512_and_si512(b, V512(0x7fffffffu));
    *vmax = _mm512_mask_max_epu32(*vmax, live, *vmax, m);
    const __mmask16 normal = _mm512_cmpge_epu32_mask(m, V512(0x800000u)); /* the rest flush */
    if (c->drop > 0) {
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        const __m512i lsb = _mm512_and_si512(_mm512_srl_epi32(m, sh), V512(1));
        m = _mm512_maskz_and_epi32(normal, _mm512_add_epi32(_mm512_add_epi32(m, V512(c->round_half_m1)), lsb),
                                   V512(~((1u << c->drop) - 1)));
    } else {
        m = _mm512_maskz_mov_epi32(normal, m);
    }
    *mag = m;
    *ms = _mm512_ternarylogic_epi32(b, m, V512(0x80000000u), 0xEC); /* (b & sign) | m */
}

/* acc + the 16 products of a prepared vector side and one scalar side (masked lanes: acc). */
MF_TARGET_AVX512_F16C static MF_AI __m512 lmf_fadd512(__m512 acc, __m512i ms, __m512i mag, uint32_t adj,
                                                 uint32_t thr) {
    const __mmask16 keep = _mm512_cmpgt_epi32_mask(mag, V512(thr));
    return _mm512_mask_add_ps(acc, keep, acc, _mm512_castsi512_ps(_mm512_add_epi32(ms, V512(adj))));
}

static inline uint32_t hmax16_epu32(const uint32_t l[16]) {
    uint32_t m = l[0];
    for (int i = 1; i < 16; ++i) m = l[i] > m ? l[i] : m;
    return m;
}

/* Scores of heads i0 .. i0 + nq at the 16 positions of key tiles t, t + 1 (two == 0: t only). */
MF_TARGET_AVX512_F16C static MF_AI void lmf_scores512_nq(const lm_vconst *c, const int dtype, const int nq,
                                                    const int two, const lmf_buf *L, int64_t i0,
                                                    int64_t hd, const void *kc, int64_t base,
                                                    __m512 st, __mmask16 live, float scaling,
                                                    float *sc, int64_t npad, int64_t t,
                                                    __m512i *vmax) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const uint32_t *qadj = L->qadj + i0 * hd, *qthr = L->qthr + i0 * hd;
    for (int64_t d = 0; d < hd; ++d) {
        __m512i ms, mag;
        lmf_vprep512(c, load16(kc, base + d * TFM_KTILE, hd * TFM_KTILE, 1, two, dtype, st), live,
                     &ms, &mag, vmax);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i) acc[i] = lmf_fadd512(acc[i], ms, mag, qadj[i * hd + d], qthr[i * hd + d]);
    }
    const __m512 sv = _mm512_set1_ps(scaling);
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i) {
        float *o = sc + (i0 + i) * npad + t * TFM_KTILE;
        const __m512 r = _mm512_mul_ps(acc[i], sv);
        if (two)
            _mm512_storeu_ps(o, r);
        else
            _mm256_storeu_ps(o, _mm512_castps512_ps256(r));
    }
}

/* lmf_pv_nq on 16 lanes: out_i[d0 .. d0 + 16 nv), nv <= 4. */
MF_TARGET_AVX512_F16C static MF_AI void lmf_pv512_nq(const lm_vconst *c, const int dtype, const int nq,
                                                const int nv, const lmf_buf *L, int64_t i0,
                                                int64_t npad, const void *vbase, const float *vst,
                                                int64_t n, int64_t hd, int64_t d0, float *out,
                                                __m512i *vmax) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[i][v] = _mm512_setzero_ps();
    const uint32_t *padj = L->padj + i0 * npad, *pthr = L->pthr + i0 * npad;
    __m512 step = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        if (dtype == TFM_KV_I8) step = _mm512_set1_ps(vst[j]);
        __m512i ms[4], mag[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)
            lmf_vprep512(c, load16(vbase, j * hd + d0 + 16 * v, 0, 0, 0, dtype, step), 0xffff,
                         &ms[v], &mag[v], vmax);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i) {
            const uint32_t adj = padj[i * npad + j], thr = pthr[i * npad + j];
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[i][v] = lmf_fadd512(acc[i][v], ms[v], mag[v], adj, thr);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) _mm512_storeu_ps(out + (i0 + i) * hd + d0 + 16 * v, acc[i][v]);
}

#define MF_NV_SWITCH(nv, nq, call) \
    switch (nv) {                  \
    case 1: MF_NQ_SWITCH(nq, call##_1) break; \
    case 2: MF_NQ_SWITCH(nq, call##_2) break; \
    case 3: MF_NQ_SWITCH(nq, call##_3) break; \
    default: MF_NQ_SWITCH(nq, call##_4) break; \
    }

/* lmf_row_t on 16 lanes (the same checks and hand-off). */
MF_TARGET_AVX512_F16C static MF_AI int lmf_row512_t(const attn_args *A, const lm_vconst *c,
                                               const int dtype, const float *q, int64_t slot,
                                               int64_t g, int64_t h0, int64_t h1, int64_t n,
                                               float *out, float *sc, const lmf_buf *L) {
    const int64_t G = A->H / A->Hkv, hd = A->hd, ctx = A->ctx;
    const int64_t tiles = (n + TFM_KTILE - 1) / TFM_KTILE, npad = tiles * TFM_KTILE;
    const uint32_t lconst = c->lconst, us = c->under_sum, slack = 1u << c->drop;
    const int64_t sh = slot * A->Hkv + g;
    uint32_t bmax = 0, l[16];
    for (int64_t e = h0 * hd; e < h1 * hd; ++e) {
        const uint32_t b = lmf_scalar(&A->f, A->k, lconst, us, q[g * G * hd + e], L->qadj + e,
                                      L->qthr + e);
        bmax = b > bmax ? b : bmax;
    }
    if (bmax > 0x7f7fffffu) return 1;
    __m512i vmax = _mm512_setzero_si512();
    for (int64_t t = 0; t < tiles; t += 2) {
        const int two = t + 1 < tiles;
        const int64_t base = (sh * (ctx / TFM_KTILE) + t) * hd * TFM_KTILE, left = n - t * TFM_KTILE;
        const float *kst = A->ks + sh * ctx + t * TFM_KTILE; /* int8 caches only */
        const __m512 st = dtype != TFM_KV_I8 ? _mm512_setzero_ps()
                          : join16(_mm256_loadu_ps(kst), two ? _mm256_loadu_ps(kst + 8) : _mm256_setzero_ps());
        /* lanes past n (positions not written yet) are not checked */
        const __mmask16 live = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        for (int64_t i0 = h0; i0 < h1; i0 += 4) {
            const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
#define MF_SC2(k) lmf_scores512_nq(c, dtype, k, 1, L, i0, hd, A->kc, base, st, live, A->scaling, sc, npad, t, &vmax)
#define MF_SC1(k) lmf_scores512_nq(c, dtype, k, 0, L, i0, hd, A->kc, base, st, live, A->scaling, sc, npad, t, &vmax)
            if (two)
                MF_NQ_SWITCH(nq, MF_SC2)
            else
                MF_NQ_SWITCH(nq, MF_SC1)
#undef MF_SC2
#undef MF_SC1
        }
    }
    _mm512_storeu_si512((void *)l, vmax);
    if (!lmf_ok(hmax16_epu32(l), bmax, lconst, slack)) return 1;
    bmax = 0;
    for (int64_t i = h0; i < h1; ++i) {
        softmax_avx2(sc + i * npad, n);
        for (int64_t j = 0; j < n; ++j) {
            const int64_t e = i * npad + j;
            const uint32_t b = lmf_scalar(&A->f, A->k, lconst, us, sc[e], L->padj + e, L->pthr + e);
            bmax = b > bmax ? b : bmax;
        }
    }
    if (bmax > 0x7f7fffffu) return 1;
    const void *vbase = (const char *)A->vc + (size_t)(sh * ctx * hd) * (dtype == TFM_KV_F32 ? 4 : dtype == TFM_KV_I8 ? 1 : 2);
    const float *vst = dtype == TFM_KV_I8 ? A->vs + sh * ctx : NULL;
    float *o = out + g * G * hd;
    vmax = _mm512_setzero_si512();
    for (int64_t i0 = h0; i0 < h1; i0 += 4) {
        const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
        for (int64_t d0 = 0; d0 < hd; d0 += 64) {
            const int64_t nv = (hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4;
#define MF_PV_1(k) lmf_pv512_nq(c, dtype, k, 1, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
#define MF_PV_2(k) lmf_pv512_nq(c, dtype, k, 2, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
#define MF_PV_3(k) lmf_pv512_nq(c, dtype, k, 3, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
#define MF_PV_4(k) lmf_pv512_nq(c, dtype, k, 4, L, i0, npad, vbase, vst, n, hd, d0, o, &vmax)
            MF_NV_SWITCH(nv, nq, MF_PV)
#undef MF_PV_1
#undef MF_PV_2
#undef MF_PV_3
#undef MF_PV_4
        }
    }
    _mm512_storeu_si512((void *)l, vmax);
    return !lmf_ok(hmax16_epu32(l), bmax, lconst, slack);
}

#define MF_LMF512_FN(name, dt)                                                                  \
    MF_TARGET_AVX512_F16C static int name(const attn_args *A, const lm_vconst *c, const float *q,     \
                                     int64_t slot, int64_t g, int64_t h0, int64_t h1, int64_t n, float *out, float *sc,  \
                                     const lmf_buf *L) {                                         \
        return lmf_row512_t(A, c, dt, q, slot, g, h0, h1, n, out, sc, L);                                \
    }
MF_LMF512_FN(lmf512_f32, TFM_KV_F32)
MF_LMF512_FN(lmf512_bf16, TFM_KV_BF16)
MF_LMF512_FN(lmf512_f16, TFM_KV_F16)
MF_LMF512_FN(lmf512_i8, TFM_KV_I8)
#undef MF_LMF512_FN
static const lmf_row_fn LMF_ROW512[4] = {lmf512_f32, lmf512_bf16, lmf512_f16, lmf512_i8};

/* ---- AVX-512: the exact route on 16 lanes --------------------------------------------------
 * scores_nq / pv_nq of attend_row_t with 16 lanes: a score vector covers two key tiles (decoded
 * once into kt [hd][16] for the G heads), a P V vector 16 head_dim elements, 4 x 4 sums in
 * registers. The same float32 operations in the same order. Needs hd % 16 == 0. */
MF_TARGET_AVX512_F16C static MF_AI void scores512_nq(const int nq, const int two, const float *q,
                                                     int64_t hd, const float *kt, float scaling,
                                                     float *sc, int64_t npad, int64_t t) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t d = 0; d < hd; ++d) {
        const __m512 kv = _mm512_load_ps(kt + d * 16);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i)
            acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_set1_ps(q[i * hd + d]), kv));
    }
    const __m512 s = _mm512_set1_ps(scaling);
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i) {
        float *o = sc + i * npad + t * TFM_KTILE;
        const __m512 r = _mm512_mul_ps(acc[i], s);
        if (two)
            _mm512_storeu_ps(o, r);
        else
            _mm256_storeu_ps(o, _mm512_castps512_ps256(r));
    }
}

MF_TARGET_AVX512_F16C static MF_AI void pv512_nq(const int dtype, const int nq, const int nv,
                                                 const float *p, int64_t npad, const void *vbase,
                                                 const float *vst, int64_t n, int64_t hd,
                                                 int64_t d0, float *out) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[i][v] = _mm512_setzero_ps();
    __m512 step = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        if (dtype == TFM_KV_I8) step = _mm512_set1_ps(vst[j]);
        __m512 vv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) vv[v] = load16(vbase, j * hd + d0 + 16 * v, 0, 0, 0, dtype, step);
#pragma GCC unroll 4
        for (int i = 0; i < nq; ++i) {
            const __m512 pj = _mm512_set1_ps(p[i * npad + j]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) acc[i][v] = _mm512_add_ps(acc[i][v], _mm512_mul_ps(pj, vv[v]));
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nq; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) _mm512_storeu_ps(out + i * hd + d0 + 16 * v, acc[i][v]);
}

/* attend_row_t's exact route on 16 lanes; sc: G * npad scores, then kt (hd x 16, aligned). */
MF_TARGET_AVX512_F16C static MF_AI void attend_row512_t(const attn_args *A, const int dtype,
                                                        const float *q, int64_t slot, int64_t g,
                                                        int64_t h0, int64_t h1, int64_t n,
                                                        float *out, float *sc) {
    const int64_t G = A->H / A->Hkv, hd = A->hd, ctx = A->ctx;
    const int64_t tiles = (n + TFM_KTILE - 1) / TFM_KTILE, npad = tiles * TFM_KTILE;
    float *kt = sc + mf_round_up(G * npad, 16);
    const int64_t sh = slot * A->Hkv + g;
    const float *qg = q + g * G * hd;
    for (int64_t t = 0; t < tiles; t += 2) {
        const int two = t + 1 < tiles;
        const int64_t base = (sh * (ctx / TFM_KTILE) + t) * hd * TFM_KTILE;
        const float *kst = A->ks + sh * ctx + t * TFM_KTILE; /* int8 caches only */
        const __m512 st = dtype != TFM_KV_I8 ? _mm512_setzero_ps()
                          : join16(_mm256_loadu_ps(kst), two ? _mm256_loadu_ps(kst + 8) : _mm256_setzero_ps());
        /* decode the tile pair once for the G heads; lanes past n hold unused positions */
        for (int64_t d = 0; d < hd; ++d)
            _mm512_store_ps(kt + d * 16, two ? load16(A->kc, base + d * TFM_KTILE, hd * TFM_KTILE, 1, 1, dtype, st)
                                             : load16(A->kc, base + d * TFM_KTILE, hd * TFM_KTILE, 1, 0, dtype, st));
        for (int64_t i0 = h0; i0 < h1; i0 += 4) {
            const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
#define MF_S2(k) scores512_nq(k, 1, qg + i0 * hd, hd, kt, A->scaling, sc + i0 * npad, npad, t)
#define MF_S1(k) scores512_nq(k, 0, qg + i0 * hd, hd, kt, A->scaling, sc + i0 * npad, npad, t)
            if (two)
                MF_NQ_SWITCH(nq, MF_S2)
            else
                MF_NQ_SWITCH(nq, MF_S1)
#undef MF_S2
#undef MF_S1
        }
    }
    for (int64_t i = h0; i < h1; ++i) softmax_avx2(sc + i * npad, n);
    const void *vbase = (const char *)A->vc + (size_t)(sh * ctx * hd) * (dtype == TFM_KV_F32 ? 4 : dtype == TFM_KV_I8 ? 1 : 2);
    const float *vst = dtype == TFM_KV_I8 ? A->vs + sh * ctx : NULL;
    for (int64_t i0 = h0; i0 < h1; i0 += 4) {
        const int64_t nq = h1 - i0 < 4 ? h1 - i0 : 4;
        float *o = out + (g * G + i0) * hd;
        for (int64_t d0 = 0; d0 < hd; d0 += 64) {
            const int64_t nv = (hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4;
#define MF_XV_1(k) pv512_nq(dtype, k, 1, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
#define MF_XV_2(k) pv512_nq(dtype, k, 2, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
#define MF_XV_3(k) pv512_nq(dtype, k, 3, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
#define MF_XV_4(k) pv512_nq(dtype, k, 4, sc + i0 * npad, npad, vbase, vst, n, hd, d0, o)
            MF_NV_SWITCH(nv, nq, MF_XV)
#undef MF_XV_1
#undef MF_XV_2
#undef MF_XV_3
#undef MF_XV_4
        }
    }
}

#define MF_ROW512_FN(name, dt)                                                                   \
    MF_TARGET_AVX512_F16C static void name(const attn_args *A, const lm_vconst *vc,              \
                                           const float *q, int64_t slot, int64_t g, int64_t h0, int64_t h1,   \
                                           int64_t n, float *out, float *sc) {                              \
        (void)vc;                                                                                \
        attend_row512_t(A, dt, q, slot, g, h0, h1, n, out, sc);                                          \
    }
MF_ROW512_FN(row512_f32_x, TFM_KV_F32)
MF_ROW512_FN(row512_bf16_x, TFM_KV_BF16)
MF_ROW512_FN(row512_f16_x, TFM_KV_F16)
MF_ROW512_FN(row512_i8_x, TFM_KV_I8)
#undef MF_ROW512_FN
static const attend_row_fn ROW512_X[4] = {row512_f32_x, row512_bf16_x, row512_f16_x, row512_i8_x};

static const attend_row_fn ROW_AVX2[4][2] = {{row_f32_x, row_f32_l}, {row_bf16_x, row_bf16_l},
                                             {row_f16_x, row_f16_l}, {row_i8_x, row_i8_l}};
#endif

#if MF_X86
/* act(gate) * up, 8 lanes: ReLU^2 (no exp) or SiLU g / (1 + exp_poly(-g)) */
MF_TARGET_AVX2 static void glu_act_avx2(const float *g, const float *u, int64_t I, int act,
                                        float *o) {
    int64_t j = 0;
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; j + 8 <= I; j += 8) {
        const __m256 vg = _mm256_loadu_ps(g + j);
        __m256 a;
        if (act == TFM_ACT_RELU2) {
            const __m256 r = _mm256_max_ps(vg, zero);
            a = _mm256_mul_ps(r, r);
        } else {
            a = _mm256_div_ps(vg, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(zero, vg))));
        }
        _mm256_storeu_ps(o + j, _mm256_mul_ps(a, _mm256_loadu_ps(u + j)));
    }
    for (; j < I; ++j) {
        const float r = g[j] > 0.0f ? g[j] : 0.0f;
        o[j] = (act == TFM_ACT_RELU2 ? r * r : g[j] / (1.0f + exp_poly(-g[j]))) * u[j];
    }
}
#endif

static void glu_act_scalar(const float *g, const float *u, int64_t I, int act, float *o) {
    for (int64_t j = 0; j < I; ++j) {
        const float r = g[j] > 0.0f ? g[j] : 0.0f;
        o[j] = (act == TFM_ACT_RELU2 ? r * r : g[j] / (1.0f + exp_poly(-g[j]))) * u[j];
    }
}


/* ---------------------------------------------------------------------------------------------
 * Ops on argument slots (mf_common.h) and their Python entry points
 * ------------------------------------------------------------------------------------------- */
int mf_op_tfm_norm(const int64_t *a) {
    float *x = mf_slot_ptr(a[0]), *w = mf_slot_ptr(a[4]), *out = mf_slot_ptr(a[6]);
    if (x == NULL || w == NULL || out == NULL || a[2] < 0 || a[3] < 1) return MF_OP_BADARG;
    norm(x, mf_slot_ptr(a[1]), a[2], a[3], w, (float)mf_slot_f64(a[5]), out);
    return 0;
}

int mf_op_tfm_rope(const int64_t *a) {
    const int64_t hd = a[4];
    if (a[0] == 0 || a[5] == 0 || a[6] == 0 || a[7] == 0 || hd < 2 || hd % 2 || hd > TFM_MAX_HD ||
        a[1] < 0 || a[3] < 0)
        return MF_OP_BADARG;
    rope(mf_slot_ptr(a[0]), a[1], a[2], a[3], hd, mf_slot_ptr(a[5]), mf_slot_ptr(a[6]),
         mf_slot_ptr(a[7]));
    return 0;
}

static int kv_ok(int64_t dtype, int64_t ctx, const void *ks, const void *vs) {
    if (dtype < TFM_KV_F32 || dtype > TFM_KV_I8 || ctx < 1 || ctx % TFM_KTILE) return 0;
    return dtype != TFM_KV_I8 || (ks != NULL && vs != NULL);
}

static int rows_ok(const int64_t *rows, int64_t B, int64_t ctx) {
    for (int64_t b = 0; b < B; ++b)
        if (rows[2 * b] < 0 || rows[2 * b + 1] < 0 || rows[2 * b + 1] >= ctx) return 0;
    return 1;
}

int mf_op_tfm_kv_write(const int64_t *a) {
    const int64_t B = a[1], dtype = a[9], Hkv = a[10], hd = a[11], ctx = a[12];
    const int64_t *rows = mf_slot_ptr(a[13]);
    if (a[0] == 0 || a[5] == 0 || a[6] == 0 || rows == NULL || B < 0 || Hkv < 1 || hd < 1 ||
        !kv_ok(dtype, ctx, mf_slot_ptr(a[7]), mf_slot_ptr(a[8])) || !rows_ok(rows, B, ctx))
        return MF_OP_BADARG;
    kv_write(mf_slot_ptr(a[0]), B, a[2], a[3], a[4], mf_slot_ptr(a[5]), mf_slot_ptr(a[6]),
             mf_slot_ptr(a[7]), mf_slot_ptr(a[8]), (int)dtype, Hkv, hd, ctx, rows);
    return 0;
}

/* tfm_attend on checked arguments at ISA level `level` (the caller resolves it to one this CPU
 * runs; a SIMDe test harness passes MF_ISA_AVX512 on an AVX2 machine): q rows B x H x hd (qs
 * floats apart) at rows[b] = (slot, position) -> out rows (os apart). Returns the level used. */
static int attend_impl(attn_args *A, const float *q, int64_t B, int64_t qs, float *out,
                       int64_t os, const int64_t *rows, int level, int64_t threads) {
    if (A->dtype != TFM_KV_I8) A->ks = A->vs = NULL;
    fmt_init(0, &A->f); /* float32 operands */
    int64_t nmax = 0;
    for (int64_t b = 0; b < B; ++b) nmax = rows[2 * b + 1] + 1 > nmax ? rows[2 * b + 1] + 1 : nmax;
    const int64_t npad = mf_round_up(nmax, TFM_KTILE);
    const int64_t G = A->H / A->Hkv, nsc = mf_round_up(G * npad, 16), tile = A->hd * 16;
    const int64_t nq = mf_round_up(G * A->hd, 16);
    /* full route: scores + a decoded key tile; fast L-Mul route: + q's and p's scalar sides */
    const int64_t words = nsc + tile + (A->lmul ? 2 * nq + 2 * nsc : 0);
    const size_t bytes = (size_t)words * sizeof(float);
    float *sc = mf_scratch(bytes);
    if (sc == NULL) return MF_OP_NOMEM;
#if MF_X86
    if (level >= MF_ISA_AVX2 && A->hd % 8 == 0 && __builtin_cpu_supports("f16c")) {
        lm_vconst vc;
        vconst_init(&A->f, A->lmul ? A->k : 23, 0, &vc);
        /* 16 lanes where the level allows (head_dim a multiple of 16): the exact route and the
         * fast L-Mul route (its hand-offs take the AVX2 full route: rare, and the same bits) */
        const int wide = level >= MF_ISA_AVX512 && A->hd % 16 == 0;
        const attend_row_fn row = wide && !A->lmul ? ROW512_X[A->dtype] : ROW_AVX2[A->dtype][A->lmul];
        const lmf_row_fn fast = (wide ? LMF_ROW512 : LMF_ROW)[A->dtype];
        /* (row, kv head) items are independent: threads split them, each with its own
         * scratch (mf_scratch is per thread); a thread per TFM_MIN_WORK products at most.
         * When they do not divide evenly (2B4T's 5 kv heads on 2 threads), each of the last
         * items % nt is split by query heads into nt parts, one per thread (schedule(static, 1)
         * deals the whole items, then the parts, round-robin): no thread does a whole item
         * more than another (a part prepares its keys and values for fewer heads). */
        const int64_t items = B * A->Hkv;
        int64_t nt = mf_threads(threads);
        const int64_t work = 2 * nmax * A->H * A->hd * B;
        nt = nt < items ? nt : items;
        nt = nt < work / TFM_MIN_WORK ? nt : work / TFM_MIN_WORK;
        nt = nt < 1 || mf_backoff_active() ? 1 : nt; /* one thread while the back-off runs */
        const int64_t rem = nt > 1 && G >= nt ? items % nt : 0, whole = items - rem;
        const int64_t units = whole + rem * nt;
        int nomem = 0;
#pragma omp parallel num_threads((int)nt) if (nt > 1)
        {
            float *s = mf_scratch(bytes);
            if (s == NULL) {
#pragma omp atomic write
                nomem = 1;
            } else {
                uint32_t *u = (uint32_t *)(s + nsc + tile); /* q's, then p's scalar sides */
                lmf_buf L = {u, u + nq, u + 2 * nq, u + 2 * nq + nsc};
#pragma omp for schedule(static, 1)
                for (int64_t un = 0; un < units; ++un) {
                    int64_t it = un, h0 = 0, h1 = G; /* the item and its query heads */
                    if (un >= whole) {
                        const int64_t part = (un - whole) % nt;
                        it = whole + (un - whole) / nt;
                        h0 = G * part / nt, h1 = G * (part + 1) / nt;
                    }
                    const int64_t b = it / A->Hkv, g = it % A->Hkv;
                    const float *qb = q + b * qs;
                    const int64_t slot = rows[2 * b], n = rows[2 * b + 1] + 1;
                    if (!A->lmul || fast(A, &vc, qb, slot, g, h0, h1, n, out + b * os, s, &L))
                        row(A, &vc, qb, slot, g, h0, h1, n, out + b * os, s);
                }
            }
        }
        if (nomem) return MF_OP_NOMEM;
        return wide ? MF_ISA_AVX512 : MF_ISA_AVX2;
    }
#endif
    (void)level;
    (void)threads;
    for (int64_t b = 0; b < B; ++b)
        attend_row_scalar(A, q + b * qs, rows[2 * b], rows[2 * b + 1] + 1, out + b * os, sc);
    return MF_ISA_SCALAR;
}

int mf_op_tfm_attend(const int64_t *a) {
    const float *q = mf_slot_ptr(a[0]);
    float *out = mf_slot_ptr(a[3]);
    const int64_t B = a[1], *rows = mf_slot_ptr(a[14]), mbits = a[16];
    attn_args A = {mf_slot_ptr(a[5]), mf_slot_ptr(a[6]), mf_slot_ptr(a[7]), mf_slot_ptr(a[8]),
                   (int)a[9], a[10], a[11], a[12], a[13], (float)mf_slot_f64(a[15]),
                   mbits >= 0, {0}, (int)mbits};
    if (q == NULL || out == NULL || A.kc == NULL || A.vc == NULL || rows == NULL || B < 0 ||
        A.Hkv < 1 || A.H < A.Hkv || A.H % A.Hkv || A.hd < 1 || mbits > 23 ||
        !kv_ok(A.dtype, A.ctx, A.ks, A.vs) || !rows_ok(rows, B, A.ctx))
        return MF_OP_BADARG;
    return attend_impl(&A, q, B, a[2], out, a[4], rows, mf_isa_resolve((int)a[17]), a[18]);
}

int mf_op_tfm_glu(const int64_t *a) {
    const float *gu = mf_slot_ptr(a[0]), *w = mf_slot_ptr(a[3]);
    float *out = mf_slot_ptr(a[5]);
    const int64_t B = a[1], I = a[2], act = a[6];
    if (gu == NULL || out == NULL || B < 0 || I < 1 || (act != TFM_ACT_RELU2 && act != TFM_ACT_SILU))
        return MF_OP_BADARG;
    const float eps = (float)mf_slot_f64(a[4]);
    const int used = mf_isa_resolve((int)a[7]) >= MF_ISA_AVX2 ? MF_ISA_AVX2 : MF_ISA_SCALAR;
    for (int64_t b = 0; b < B; ++b) {
        const float *g = gu + b * 2 * I, *u = g + I;
        float *o = out + b * I;
#if MF_X86
        if (used == MF_ISA_AVX2)
            glu_act_avx2(g, u, I, (int)act, o);
        else
#endif
            glu_act_scalar(g, u, I, (int)act, o);
        if (w != NULL) {
            const float r = inv_rms8(o, I, eps);
            for (int64_t j = 0; j < I; ++j) o[j] = w[j] * (o[j] * r);
        }
    }
    return MF_X86 ? used : MF_ISA_SCALAR;
}

MF_PYFUNC(tfm_norm, "tfm_norm(x, add_or_0, B, n, w, eps, out) -> 0: x += add; out = w * (x * rsqrt(mean(x^2) + eps)).") {
    MF_OP_ENTRY(tfm_norm, 7, "ppllpdp");
}

MF_PYFUNC(tfm_rope, "tfm_rope(x, B, stride, heads, head_dim, cos, sin, rows) -> 0: rotate-half RoPE in place at rows' positions.") {
    MF_OP_ENTRY(tfm_rope, 8, "plllpppp");
}

MF_PYFUNC(tfm_kv_write, "tfm_kv_write(x, B, stride, koff, voff, kc, vc, ks_or_0, vs_or_0, dtype, Hkv, head_dim, ctx, rows) -> 0: store k, v rows in the cache.") {
    MF_OP_ENTRY(tfm_kv_write, 14, "plllpppppllllp");
}

MF_PYFUNC(tfm_attend, "tfm_attend(q, B, qstride, out, ostride, kc, vc, ks_or_0, vs_or_0, dtype, H, Hkv, head_dim, ctx, rows, scaling, mbits_or_-1, isa, threads) -> isa used: GQA attention of one token per row.") {
    MF_OP_ENTRY(tfm_attend, 19, "pllplpppplllllpdlll");
}

MF_PYFUNC(tfm_glu, "tfm_glu(gu, B, I, w_or_0, eps, out, act, isa) -> isa used: act(gate) * up (0 relu2, 1 silu), then the sub-norm.") {
    MF_OP_ENTRY(tfm_glu, 8, "pllpdpll");
}
