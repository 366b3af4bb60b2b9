/* The L-Mul core shared by the elementwise kernels (mf_lmul_ew.c) and L-Matmul (mf_lmatmul.c).
 * The semantics are those of src/mulfree/lmul/reference.py (docs/lmul.md); `lmul_one` below is
 * their C transcription and the scalar spec of every SIMD path, which must give the same bits.
 *
 * Formats (ids shared with mulfree.lmul.fast): 0 float32, 1 bfloat16, 2 float16,
 * 3 float8_e4m3fn, 4 float8_e5m2. The SIMD paths handle the 32/16-bit formats in 32-bit lanes.
 * Include after "mf_py.h" (Python.h must come first). Everything here is static inline: each
 * kernel file gets its own copy of what it uses.
 */
#ifndef MF_LMUL_H
#define MF_LMUL_H

#include <stdint.h>

#include "mf_common.h"
#if MF_X86
#include <immintrin.h>
#endif

/* ---------------------------------------------------------------------------------------------
 * Formats and the scalar spec
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    int bits, m, bias, has_inf;
    uint32_t sign_mask, man_mask, inf_mag, max_finite, nan_bits;
} lm_fmt;

static inline int fmt_init(int id, lm_fmt *f) {
    static const int table[5][4] = {/* bits, exponent bits, mantissa bits, has_inf */
                                     {32, 8, 23, 1}, {16, 8, 7, 1}, {16, 5, 10, 1},
                                     {8, 4, 3, 0},   {8, 5, 2, 1}};
    if (id < 0 || id > 4) return -1;
    const int e = table[id][1];
    f->bits = table[id][0];
    f->m = table[id][2];
    f->has_inf = table[id][3];
    f->bias = (1 << (e - 1)) - 1;
    f->sign_mask = 1u << (f->bits - 1);
    f->man_mask = (1u << f->m) - 1;
    const uint32_t all_ones = (1u << e) - 1;
    f->inf_mag = all_ones << f->m;
    if (f->has_inf) {
        f->max_finite = ((all_ones - 1) << f->m) | f->man_mask;
        f->nan_bits = f->inf_mag | (1u << (f->m - 1));
    } else { /* e4m3fn: only S.1111.111 is NaN; 1.110b * 2^8 = 448 is the largest finite */
        f->max_finite = (all_ones << f->m) | (f->man_mask - 1);
        f->nan_bits = (all_ones << f->m) | f->man_mask;
    }
    return 0;
}

static inline int offset_l(int k) { return k <= 3 ? k : (k == 4 ? 3 : 4); }

/* L-Mul's integer constant (bias << m) - (2^m >> l(k)): 0x3F780000 for float32. */
static inline uint32_t lmul_const(const lm_fmt *f, int k) {
    return ((uint32_t)f->bias << f->m) - ((1u << f->m) >> offset_l(k));
}

static inline int is_nan_mag(const lm_fmt *f, uint32_t mag) {
    return f->has_inf ? mag > f->inf_mag : mag == f->nan_bits;
}

/* Flush-to-zero and round to k mantissa bits (RNE); NaN and inf pass through. */
static inline uint32_t prep_mag(const lm_fmt *f, uint32_t mag, int k) {
    if (is_nan_mag(f, mag) || (f->has_inf && mag == f->inf_mag)) return mag;
    if ((mag >> f->m) == 0) return 0;
    const int drop = f->m - k;
    if (drop == 0) return mag;
    const uint32_t half = 1u << (drop - 1);
    const uint32_t r = ((mag + (half - 1) + ((mag >> drop) & 1)) >> drop) << drop;
    if (r > f->max_finite) return f->has_inf ? f->inf_mag : (f->max_finite >> drop) << drop;
    return r;
}

static inline uint32_t lmul_one(const lm_fmt *f, uint32_t x, uint32_t y, int k, int mode) {
    const uint32_t sign = (x ^ y) & f->sign_mask;
    const uint32_t ax = prep_mag(f, x & (f->sign_mask - 1), k);
    const uint32_t ay = prep_mag(f, y & (f->sign_mask - 1), k);
    if (is_nan_mag(f, ax) || is_nan_mag(f, ay)) return f->nan_bits;
    const int xi = f->has_inf && ax == f->inf_mag, yi = f->has_inf && ay == f->inf_mag;
    if (xi || yi) return (ax == 0 || ay == 0) ? f->nan_bits : (sign | f->inf_mag);
    if (ax == 0 || ay == 0) return sign;
    int64_t r;
    if (mode == 0) {
        r = (int64_t)ax + ay - lmul_const(f, k);
        if (r < (int64_t)(1u << f->m)) r = -1;
    } else {
        int64_t s = (int64_t)(1u << f->m) + (ax & f->man_mask) + (ay & f->man_mask) +
                    ((1u << f->m) >> offset_l(k));
        int64_t e = (int64_t)(ax >> f->m) + (ay >> f->m) - f->bias;
        if (s >= (int64_t)(2u << f->m)) {
            const int64_t lost = s & 1;
            s >>= 1;
            if (lost && (s & 1)) s += 1;
            e += 1;
        }
        r = e <= 0 ? -1 : ((e << f->m) | (s - (1u << f->m)));
    }
    if (r < 0) return sign;
    if (r > (int64_t)f->max_finite) return sign | (f->has_inf ? f->inf_mag : f->max_finite);
    return sign | (uint32_t)r;
}

static inline uint32_t load_bits(const void *p, int64_t i, int bits) {
    if (bits == 32) return ((const uint32_t *)p)[i];
    if (bits == 16) return ((const uint16_t *)p)[i];
    return ((const uint8_t *)p)[i];
}

static inline void store_bits(void *p, int64_t i, int bits, uint32_t v) {
    if (bits == 32)
        ((uint32_t *)p)[i] = v;
    else if (bits == 16)
        ((uint16_t *)p)[i] = (uint16_t)v;
    else
        ((uint8_t *)p)[i] = (uint8_t)v;
}

/* ---------------------------------------------------------------------------------------------
 * Vector constants of one (format, k, mode) for the 32-bit-lane SIMD paths
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    uint32_t sign_mask, mag_mask, man_mask, inf_mag, max_finite, over_mag, nan_bits;
    uint32_t min_normal, lconst, under_sum, round_half_m1, off, one, two;
    int drop, m, bias, has_inf, mode;
} lm_vconst;

static inline void vconst_init(const lm_fmt *f, int k, int mode, lm_vconst *c) {
    c->sign_mask = f->sign_mask;
    c->mag_mask = f->sign_mask - 1;
    c->man_mask = f->man_mask;
    c->inf_mag = f->inf_mag;
    c->max_finite = f->max_finite;
    c->over_mag = f->has_inf ? f->inf_mag : f->max_finite;
    c->nan_bits = f->nan_bits;
    c->min_normal = 1u << f->m;
    c->lconst = lmul_const(f, k);
    c->under_sum = c->lconst + c->min_normal; /* ax + ay below this underflows */
    c->drop = f->m - k;
    c->round_half_m1 = c->drop > 0 ? (1u << (c->drop - 1)) - 1 : 0;
    c->off = (1u << f->m) >> offset_l(k);
    c->one = 1u << f->m;
    c->two = 2u << f->m;
    c->m = f->m;
    c->bias = f->bias;
    c->has_inf = f->has_inf;
    c->mode = mode;
}

#if MF_X86
/* ----------------------------------- AVX-512: 16 lanes ------------------------------------- */
#define V512(x) _mm512_set1_epi32((int)(x))
/* Unsigned a > b and a < b written through <= and >=, the forms every AVX-512 emulation
 * (SIMDe, used by the tests on AVX2-only machines) provides. */
#define GT_U512(a, b) ((__mmask16)~_mm512_cmple_epu32_mask((a), (b)))
#define LT_U512(a, b) ((__mmask16)~_mm512_cmpge_epu32_mask((a), (b)))

MF_TARGET_AVX512 static inline __m512i prep512(const lm_vconst *c, __m512i mag, __mmask16 *nan,
                                                __mmask16 *inf, __mmask16 *zero) {
    *nan = c->has_inf ? GT_U512(mag, V512(c->inf_mag))
                      : _mm512_cmpeq_epi32_mask(mag, V512(c->nan_bits));
    mag = _mm512_maskz_mov_epi32(_mm512_cmpge_epu32_mask(mag, V512(c->min_normal)), mag);
    if (c->drop > 0) {
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        __m512i lsb = _mm512_and_si512(_mm512_srl_epi32(mag, sh), V512(1));
        __m512i r = _mm512_add_epi32(_mm512_add_epi32(mag, V512(c->round_half_m1)), lsb);
        r = _mm512_sll_epi32(_mm512_srl_epi32(r, sh), sh);
        const uint32_t over = c->has_inf ? c->inf_mag : (c->max_finite >> c->drop) << c->drop;
        r = _mm512_mask_mov_epi32(r, GT_U512(r, V512(c->max_finite)), V512(over));
        mag = _mm512_mask_mov_epi32(r, *nan, mag);
    }
    *inf = c->has_inf ? _mm512_cmpeq_epi32_mask(mag, V512(c->inf_mag)) : 0;
    *zero = _mm512_cmpeq_epi32_mask(mag, _mm512_setzero_si512());
    return mag;
}

/* Full-semantics L-Mul of 16 lanes of bit patterns (format in 32-bit lanes). */
MF_TARGET_AVX512 static inline __m512i lmul512(const lm_vconst *c, __m512i x, __m512i y) {
    const __m512i sign = _mm512_and_si512(_mm512_xor_si512(x, y), V512(c->sign_mask));
    __mmask16 nx, ix, zx, ny, iy, zy;
    const __m512i ax = prep512(c, _mm512_and_si512(x, V512(c->mag_mask)), &nx, &ix, &zx);
    const __m512i ay = prep512(c, _mm512_and_si512(y, V512(c->mag_mask)), &ny, &iy, &zy);
    __m512i r;
    __mmask16 under;
    if (c->mode == 0) {
        const __m512i sum = _mm512_add_epi32(ax, ay); /* <= 2 * 0x7FFFFFFF: no wrap */
        under = LT_U512(sum, V512(c->under_sum));
        r = _mm512_sub_epi32(sum, V512(c->lconst));
    } else {
        __m512i s = _mm512_add_epi32(_mm512_and_si512(ax, V512(c->man_mask)),
                                     _mm512_and_si512(ay, V512(c->man_mask)));
        s = _mm512_add_epi32(s, V512(c->one + c->off));
        const __m128i shm = _mm_cvtsi32_si128(c->m);
        __m512i e = _mm512_add_epi32(_mm512_srl_epi32(ax, shm), _mm512_srl_epi32(ay, shm));
        e = _mm512_sub_epi32(e, V512(c->bias));
        const __mmask16 carry = _mm512_cmpge_epu32_mask(s, V512(c->two));
        __m512i sh = _mm512_srli_epi32(s, 1);
        sh = _mm512_add_epi32(sh, _mm512_and_si512(_mm512_and_si512(s, sh), V512(1)));
        s = _mm512_mask_mov_epi32(s, carry, sh);
        e = _mm512_mask_add_epi32(e, carry, e, V512(1));
        under = _mm512_cmple_epi32_mask(e, _mm512_setzero_si512());
        r = _mm512_or_si512(_mm512_sll_epi32(e, shm), _mm512_sub_epi32(s, V512(c->one)));
    }
    __m512i res = _mm512_mask_mov_epi32(r, GT_U512(r, V512(c->max_finite)),
                                        V512(c->over_mag));
    res = _mm512_maskz_mov_epi32(~(under | zx | zy), res);
    res = _mm512_or_si512(res, sign);
    res = _mm512_mask_mov_epi32(res, ix | iy, _mm512_or_si512(sign, V512(c->inf_mag)));
    const __mmask16 nan = nx | ny | (ix & zy) | (zx & iy);
    return _mm512_mask_mov_epi32(res, nan, V512(c->nan_bits));
}
#endif /* MF_X86 */

#if MF_X86

/* ----------------------------------- AVX2: 8 lanes ----------------------------------------- */
#define V256(x) _mm256_set1_epi32((int)(x))

MF_TARGET_AVX2 static inline __m256i gt_u32(__m256i a, __m256i b) { /* a > b, unsigned */
    const __m256i flip = V256(0x80000000u);
    return _mm256_cmpgt_epi32(_mm256_xor_si256(a, flip), _mm256_xor_si256(b, flip));
}

MF_TARGET_AVX2 static inline __m256i sel256(__m256i mask, __m256i yes, __m256i no) {
    return _mm256_blendv_epi8(no, yes, mask);
}

MF_TARGET_AVX2 static inline __m256i prep256(const lm_vconst *c, __m256i mag, __m256i *nan,
                                             __m256i *inf, __m256i *zero) {
    *nan = c->has_inf ? gt_u32(mag, V256(c->inf_mag)) : _mm256_cmpeq_epi32(mag, V256(c->nan_bits));
    mag = _mm256_andnot_si256(gt_u32(V256(c->min_normal), mag), mag); /* flush below min normal */
    if (c->drop > 0) {
        const __m128i sh = _mm_cvtsi32_si128(c->drop);
        __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(mag, sh), V256(1));
        __m256i r = _mm256_add_epi32(_mm256_add_epi32(mag, V256(c->round_half_m1)), lsb);
        r = _mm256_sll_epi32(_mm256_srl_epi32(r, sh), sh);
        const uint32_t over = c->has_inf ? c->inf_mag : (c->max_finite >> c->drop) << c->drop;
        r = sel256(gt_u32(r, V256(c->max_finite)), V256(over), r);
        mag = sel256(*nan, mag, r);
    }
    *inf = c->has_inf ? _mm256_cmpeq_epi32(mag, V256(c->inf_mag)) : _mm256_setzero_si256();
    *zero = _mm256_cmpeq_epi32(mag, _mm256_setzero_si256());
    return mag;
}

MF_TARGET_AVX2 static inline __m256i lmul256(const lm_vconst *c, __m256i x, __m256i y) {
    const __m256i sign = _mm256_and_si256(_mm256_xor_si256(x, y), V256(c->sign_mask));
    __m256i nx, ix, zx, ny, iy, zy;
    const __m256i ax = prep256(c, _mm256_and_si256(x, V256(c->mag_mask)), &nx, &ix, &zx);
    const __m256i ay = prep256(c, _mm256_and_si256(y, V256(c->mag_mask)), &ny, &iy, &zy);
    __m256i r, under;
    if (c->mode == 0) {
        const __m256i sum = _mm256_add_epi32(ax, ay);
        under = gt_u32(V256(c->under_sum), sum);
        r = _mm256_sub_epi32(sum, V256(c->lconst));
    } else {
        __m256i s = _mm256_add_epi32(_mm256_and_si256(ax, V256(c->man_mask)),
                                     _mm256_and_si256(ay, V256(c->man_mask)));
        s = _mm256_add_epi32(s, V256(c->one + c->off));
        const __m128i shm = _mm_cvtsi32_si128(c->m);
        __m256i e = _mm256_add_epi32(_mm256_srl_epi32(ax, shm), _mm256_srl_epi32(ay, shm));
        e = _mm256_sub_epi32(e, V256(c->bias));
        const __m256i carry = gt_u32(s, V256(c->two - 1));
        __m256i sh = _mm256_srli_epi32(s, 1);
        sh = _mm256_add_epi32(sh, _mm256_and_si256(_mm256_and_si256(s, sh), V256(1)));
        s = sel256(carry, sh, s);
        e = _mm256_sub_epi32(e, carry); /* carry lanes are -1: e + 1 */
        under = _mm256_cmpgt_epi32(V256(1), e);
        r = _mm256_or_si256(_mm256_sll_epi32(e, shm), _mm256_sub_epi32(s, V256(c->one)));
    }
    __m256i res = sel256(gt_u32(r, V256(c->max_finite)), V256(c->over_mag), r);
    res = _mm256_andnot_si256(_mm256_or_si256(under, _mm256_or_si256(zx, zy)), res);
    res = _mm256_or_si256(res, sign);
    res = sel256(_mm256_or_si256(ix, iy), _mm256_or_si256(sign, V256(c->inf_mag)), res);
    const __m256i nan = _mm256_or_si256(_mm256_or_si256(nx, ny),
                                        _mm256_or_si256(_mm256_and_si256(ix, zy), _mm256_and_si256(zx, iy)));
    return sel256(nan, V256(c->nan_bits), res);
}
#endif /* MF_X86 */

#endif /* MF_LMUL_H */
