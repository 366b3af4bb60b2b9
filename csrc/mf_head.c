/* The int4 output head of the BitNet step (tfm_head_i4), for src/mulfree/engine/bitnet_plan.py,
 * which runs it as the last stage of the step's plan (csrc/mf_plan.c). Its spec is the NumPy
 * twin src/mulfree/engine/head_ref.py (bit for bit, tests/kernels/test_head_stages.py).
 *
 *   tfm_head_i4   logits = int4 table (a bfloat16 step per 32 entries of a row, mf_head.h)
 *                 times int8 activations (absmax per row, as tfm_head_i8 quantizes them)
 *   tfm_head_bf16 logits = bfloat16 table times the float32 activations
 *
 * tfm_head_bf16, per activation row b and table row v: lane j (j = 0..7) = sum over d = j, j + 8,
 * ... in order of x[d] * w[v][d] (float32 products and sums from +0.0), logit = the lanes
 * combined as below. Its AVX2 variant runs the 8 lanes as one vector, 4 table rows at a time
 * (4 independent sums in flight; one would wait on each add's latency). The head is float, not
 * ternary: one multiply per weight, as the torch head it replaces.
 *
 * Per activation row b and table row v:
 *   s = 127 / max(absmax(x_b), 1e-5), q = clamp(rint(x_b s), +-127) (zero past D);
 *   acc_g = sum over the group's 32 entries of (code - 8) * q       (exact int32, |acc| < 2^15)
 *   lane j (j = 0..7) = sum over g = j, j + 8, ... in order of (float)acc_g * step_g, from +0.0
 *   logit = (((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))) / s
 * The head is int4 x int8, not ternary: integer multiply-adds (maddubs) like tfm_head_i8. Every
 * ISA level gives the same bits by construction: the group sums are exact integers, and the
 * float32 products and sums are single operations in the order above (no FMA contraction under
 * -std=c11), the AVX2 code running the 8 lanes as one vector.
 *
 * The AVX2 variant: a 32-byte load holds two groups of a row; the low and high nibbles are
 * multiplied (maddubs: u8 code x s8 activation, pairs summed in int16, at most 2 x 15 x 127)
 * with the activations of the even and odd entries, laid out that way once per row of x, and
 * sum(code x q) - 8 sum(q) gives the group sums (the per-group sum(q) also computed once).
 * Eight groups end in one vector of group sums; its lanes meet the steps of the same groups.
 * The AVX-512 level, on CPUs with VNNI (Zen 4, Sapphire Rapids), loads four groups per 64 bytes
 * and sums code x activation bytes straight into int32 lanes (vpdpbusd, 4 products a lane, no
 * saturation), four lanes per group, gathered by two two-source permutes (integer sums: any
 * order is exact); the float part is the AVX2 code's. Without VNNI the AVX-512 level runs the AVX2
 * code. Both are tested bit-exact natively and the VNNI one also under SIMDe emulation
 * (tests/kernels/test_head_avx512_emulated.py).
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mf_common.h"
#include "mf_head.h"
#include "mf_tfm.h"
#if MF_X86
#include <immintrin.h>
#endif

#define GRP MF_HEAD_I4_GROUP
/* overridable, like MF_TARGET_AVX512, so the SIMDe harness builds the VNNI code as plain C */
#ifndef MF_TARGET_AVX512VNNI
#define MF_TARGET_AVX512VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

static inline float bf16_to_f32(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One group: sum of (code - 8) * q over its 32 entries (q in natural order). */
static inline int32_t group_scalar(const uint8_t *c, const int8_t *q) {
    int32_t acc = 0;
    for (int j = 0; j < GRP / 2; ++j) {
        acc += ((int32_t)(c[j] & 15) - 8) * q[2 * j];
        acc += ((int32_t)(c[j] >> 4) - 8) * q[2 * j + 1];
    }
    return acc;
}

static inline float tree8(const float *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* Groups g0 <= g < G of one row into the lanes (scalar: the spec of every lane). */
static void row_groups_scalar(const uint8_t *c, const uint16_t *st, const int8_t *q, int64_t g0,
                              int64_t G, float *lanes) {
    for (int64_t g = g0; g < G; ++g) {
        const float p = (float)group_scalar(c + 16 * g, q + GRP * g) * bf16_to_f32(st[g]);
        lanes[g & 7] = lanes[g & 7] + p;
    }
}

#if MF_X86
/* Per row of x, the layout the AVX2 loop reads: for each pair of groups (2p, 2p + 1), 64 bytes
 * [even entries of 2p | even of 2p + 1 | odd of 2p | odd of 2p + 1], so one 32-byte load meets
 * the low nibbles of a 32-byte code load and the next one the high nibbles. */
static void interleave_pairs(const int8_t *q, int64_t pairs, int8_t *qx) {
    for (int64_t p = 0; p < pairs; ++p)
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < GRP / 2; ++j) {
                qx[64 * p + 16 * h + j] = q[GRP * (2 * p + h) + 2 * j];
                qx[64 * p + 32 + 16 * h + j] = q[GRP * (2 * p + h) + 2 * j + 1];
            }
}

/* The AVX-512 VNNI layout: per quad of groups (4 p .. 4 p + 3), 128 bytes [even entries of the
 * 4 groups | odd entries of the 4 groups], matching a 64-byte code load's low / high nibbles. */
static void interleave_quads(const int8_t *q, int64_t quads, int8_t *qx) {
    for (int64_t p = 0; p < quads; ++p)
        for (int h = 0; h < 4; ++h)
            for (int j = 0; j < GRP / 2; ++j) {
                qx[128 * p + 16 * h + j] = q[GRP * (4 * p + h) + 2 * j];
                qx[128 * p + 64 + 16 * h + j] = q[GRP * (4 * p + h) + 2 * j + 1];
            }
}

/* As row_groups_avx2 (same lanes, same float operations), the group sums by vpdpbusd. */
MF_TARGET_AVX512VNNI static void row_groups_avx512(const uint8_t *c, const uint16_t *st,
                                                   const int8_t *qx, const int32_t *z8,
                                                   int64_t G8, float *lanes) {
    const __m512i nib = _mm512_set1_epi8(15);
    /* the 4 lanes of group g sit at 4 g .. 4 g + 3 of (t0 | t1): one permute gathers lanes 0
     * and 1 of the 8 groups, another lanes 2 and 3; the group sums are their sum's halves */
    const __m512i p01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i p23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    __m256 acc = _mm256_loadu_ps(lanes);
    for (int64_t blk = 0; blk < G8; ++blk) {
        __m512i t[2];
        for (int h = 0; h < 2; ++h) {
            const int64_t quad = 2 * blk + h;
            const __m512i w = _mm512_loadu_si512((const void *)(c + 64 * quad));
            const __m512i lo = _mm512_and_si512(w, nib);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
            const __m512i qe = _mm512_loadu_si512((const void *)(qx + 128 * quad));
            const __m512i qo = _mm512_loadu_si512((const void *)(qx + 128 * quad + 64));
            t[h] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, qe), hi, qo);
        }
        const __m512i s = _mm512_add_epi32(_mm512_permutex2var_epi32(t[0], p01, t[1]),
                                           _mm512_permutex2var_epi32(t[0], p23, t[1]));
        __m256i sums = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
        sums = _mm256_sub_epi32(sums, _mm256_loadu_si256((const __m256i *)(z8 + 8 * blk)));
        const __m128i sb = _mm_loadu_si128((const __m128i *)(st + 8 * blk));
        const __m256 step = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(sb), 16));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), step));
    }
    _mm256_storeu_ps(lanes, acc);
}

/* Groups 0 .. 8 G8 - 1 of one row into the 8 lanes; z8[g] = 8 sum(q of group g). */
MF_TARGET_AVX2 static void row_groups_avx2(const uint8_t *c, const uint16_t *st, const int8_t *qx,
                                           const int32_t *z8, int64_t G8, float *lanes) {
    const __m256i nib = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    /* hadd leaves groups in the order 0 2 4 6 | 1 3 5 7: put them back in order */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 acc = _mm256_loadu_ps(lanes);
    for (int64_t blk = 0; blk < G8; ++blk) {
        __m256i r[4];
        for (int p = 0; p < 4; ++p) {
            const int64_t pair = 4 * blk + p;
            const __m256i w = _mm256_loadu_si256((const __m256i *)(c + 32 * pair));
            const __m256i lo = _mm256_and_si256(w, nib);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
            const __m256i qe = _mm256_loadu_si256((const __m256i *)(qx + 64 * pair));
            const __m256i qo = _mm256_loadu_si256((const __m256i *)(qx + 64 * pair + 32));
            const __m256i s16 =
                _mm256_add_epi16(_mm256_maddubs_epi16(lo, qe), _mm256_maddubs_epi16(hi, qo));
            r[p] = _mm256_madd_epi16(s16, ones); /* lanes 0-3: group 2p, 4-7: group 2p + 1 */
        }
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]),
                                            _mm256_hadd_epi32(r[2], r[3]));
        __m256i sums = _mm256_permutevar8x32_epi32(h, order); /* sum(code q), groups 8 blk .. +7 */
        sums = _mm256_sub_epi32(sums, _mm256_loadu_si256((const __m256i *)(z8 + 8 * blk)));
        const __m128i sb = _mm_loadu_si128((const __m128i *)(st + 8 * blk));
        const __m256 step = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(sb), 16));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), step));
    }
    _mm256_storeu_ps(lanes, acc);
}
#endif

/* x [B][D] float32 -> out [B][V]; codes [V][16 G], step bf16 [V][G]. vnni: at the AVX-512
 * level, the CPU has AVX-512 VNNI (the op checks; the SIMDe harness sets it). */
static int head_i4(const float *x, int64_t B, int64_t D, const uint8_t *codes, int64_t V,
                   const uint16_t *step, float *out, int64_t threads, int level, int vnni) {
    const int64_t G = (D + GRP - 1) / GRP, Dp = G * GRP;
    const int use = MF_X86 && level >= MF_ISA_AVX2;
    vnni = use && vnni && level >= MF_ISA_AVX512;
    const int64_t G8 = use ? G / 8 : 0; /* groups the vector loop takes (8 at a time) */
    /* scratch: q [B][Dp], qx [B][Dp], z8 [B][G] int32, sx [B] */
    const size_t qbytes = mf_align_up((size_t)(B * Dp));
    int8_t *q = mf_scratch(2 * qbytes + mf_align_up((size_t)(B * G) * 4) + (size_t)B * 4 + 64);
    if (q == NULL) return MF_OP_NOMEM;
    int8_t *qx = q + qbytes;
    int32_t *z8 = (int32_t *)(qx + qbytes);
    float *sx = (float *)(z8 + mf_align_up((size_t)(B * G) * 4) / 4);
    for (int64_t b = 0; b < B; ++b) {
        int8_t *qb = q + b * Dp;
        memset(qb, 0, (size_t)Dp);
        sx[b] = tfm_head_quant(x + b * D, D, qb);
        for (int64_t g = 0; g < G; ++g) {
            int32_t s = 0;
            for (int j = 0; j < GRP; ++j) s += qb[GRP * g + j];
            z8[b * G + g] = 8 * s;
        }
#if MF_X86
        if (vnni)
            interleave_quads(qb, 2 * G8, qx + b * Dp);
        else if (use)
            interleave_pairs(qb, 4 * G8, qx + b * Dp);
#endif
    }
    const int64_t nt = tfm_head_threads(mf_threads(threads), V);
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, TFM_HEAD_CHUNK) if (nt > 1)
    for (int64_t v = 0; v < V; ++v) {
        const uint8_t *c = codes + v * 16 * G;
        const uint16_t *st = step + v * G;
        for (int64_t b = 0; b < B; ++b) {
            float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#if MF_X86
            if (G8 && vnni)
                row_groups_avx512(c, st, qx + b * Dp, z8 + b * G, G8, lanes);
            else if (G8)
                row_groups_avx2(c, st, qx + b * Dp, z8 + b * G, G8, lanes);
#endif
            row_groups_scalar(c, st, q + b * Dp, 8 * G8, G, lanes);
            out[b * V + v] = tree8(lanes) / sx[b];
        }
    }
    return vnni ? MF_ISA_AVX512 : use ? MF_ISA_AVX2 : MF_ISA_SCALAR;
}

static int cpu_vnni(void) {
#if MF_X86
    return __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------------------------------------
 * tfm_head_i8: logits = int8 table (a step per row) times int8 activations (absmax per row)
 * The head is int8, not ternary: integer multiply-adds (exact int32 sums, so every ISA and
 * thread split gives the same bits), then logit[v] = ((float)acc / s_x) * step[v]. AVX2
 * maddubs pairs at every level above scalar. 2B4T's head is 328 MB read every token (half of a
 * 1-thread decode step before the prefetch). Tried and dropped: an AVX-512 VNNI vpdpbusd variant
 * (|w| u8 x q with w's sign s8, 64 bytes a step), bit-exact, but with the same prefetch it read
 * 20-22 GB/s against the AVX2 code's 25-27 (one thread, cold, AMD Zen 4).
 * ------------------------------------------------------------------------------------------- */
static inline int32_t dot_i8_scalar(const int8_t *w, const int8_t *q, int64_t D) {
    int32_t acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += (int32_t)w[d] * q[d];
    return acc;
}

/* Software prefetch of the head's rows HEAD_PF_ROWS ahead (same offset, into L2: the table is
 * read once per token, cold; four interleaved row streams defeat the hardware prefetcher). 2B4T's
 * 128256 x 2560 head, one token, cold, AMD Zen 4, one process, two runs: 11.8 GB/s without, 25.1-27.2
 * with 8 rows ahead at 1 thread; 22.7 -> 31.5-33.8 at 2 threads (the VM's streaming rate then). */
#ifndef HEAD_PF_ROWS
#define HEAD_PF_ROWS 8
#endif
#if MF_X86
/* 4 rows of w (ld bytes apart) dotted with q: |w| (u8) x sign(w) q (s8) pairs, no saturation
 * (2 x 128 x 127 < 2^15), widened to int32 lanes; the tail d >= D - D % 32 in scalar. */
MF_TARGET_AVX2 static void dot4_i8_avx2(const int8_t *w, int64_t ld, const int8_t *q, int64_t D,
                                        int nr, int32_t *out) {
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                      _mm256_setzero_si256()};
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(q + d));
        for (int r = 0; r < nr; ++r) {
            if (HEAD_PF_ROWS && !(d & 63)) /* a 64-byte line per two steps */
                _mm_prefetch((const char *)(w + (r + HEAD_PF_ROWS) * ld + d), _MM_HINT_T1);
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + r * ld + d));
            const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(x, wv));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
        }
    }
    for (int r = 0; r < nr; ++r) {
        int32_t l[8];
        _mm256_storeu_si256((__m256i *)l, acc[r]);
        out[r] = l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7] +
                 dot_i8_scalar(w + r * ld + d, q + d, D - d);
    }
}
#endif

/* x [B][D] float32 -> logits [B][V]; w [V][D] int8 codes, step [V]. q: scratch B x D. */
static int head_i8(const float *x, int64_t B, int64_t D, const int8_t *w, int64_t V,
                   const float *step, float *out, int64_t threads, int level) {
    int8_t *q = mf_scratch((size_t)(B * D + B * 4 + 64));
    if (q == NULL) return MF_OP_NOMEM;
    float *sx = (float *)(q + mf_round_up(B * D, 4));
    for (int64_t b = 0; b < B; ++b) sx[b] = tfm_head_quant(x + b * D, D, q + b * D);
    const int use = MF_X86 && level >= MF_ISA_AVX2;
    const int64_t nt = tfm_head_threads(mf_threads(threads), V);
    const int64_t blocks = (V + 3) / 4;
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, TFM_HEAD_CHUNK / 4) if (nt > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t v0 = blk * 4;
        const int nr = (int)(V - v0 < 4 ? V - v0 : 4);
        for (int64_t b = 0; b < B; ++b) {
            int32_t acc[4];
#if MF_X86
            if (use)
                dot4_i8_avx2(w + v0 * D, D, q + b * D, D, nr, acc);
            else
#endif
                for (int r = 0; r < nr; ++r) acc[r] = dot_i8_scalar(w + (v0 + r) * D, q + b * D, D);
            for (int r = 0; r < nr; ++r) out[b * V + v0 + r] = ((float)acc[r] / sx[b]) * step[v0 + r];
        }
    }
    return use ? MF_ISA_AVX2 : MF_ISA_SCALAR;
}

/* ---------------------------------------------------------------------------------------------
 * tfm_head_bf16
 * ------------------------------------------------------------------------------------------- */
/* Entries d0 <= d < D of one row into the lanes (scalar: the spec of every lane). */
static void bf16_row_scalar(const uint16_t *w, const float *x, int64_t d0, int64_t D, float *lanes) {
    for (int64_t d = d0; d < D; ++d) lanes[d & 7] = lanes[d & 7] + x[d] * bf16_to_f32(w[d]);
}

#if MF_X86
MF_TARGET_AVX2 static inline __m256 bf16x8(const uint16_t *w) {
    const __m128i b = _mm_loadu_si128((const __m128i *)w);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

/* nr (1..4) rows of w (ld apart), entries 0 .. D8 - 1 (D8 a multiple of 8), into lanes[r][8]. */
MF_TARGET_AVX2 static void bf16_rows_avx2(const uint16_t *w, int64_t ld, const float *x, int64_t D8,
                                          int nr, float (*lanes)[8]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (nr == 4) {
        for (int64_t d = 0; d < D8; d += 8) {
            const __m256 xv = _mm256_loadu_ps(x + d);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(xv, bf16x8(w + d)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(xv, bf16x8(w + ld + d)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(xv, bf16x8(w + 2 * ld + d)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(xv, bf16x8(w + 3 * ld + d)));
        }
        _mm256_storeu_ps(lanes[0], a0), _mm256_storeu_ps(lanes[1], a1);
        _mm256_storeu_ps(lanes[2], a2), _mm256_storeu_ps(lanes[3], a3);
        return;
    }
    for (int r = 0; r < nr; ++r) {
        a0 = _mm256_setzero_ps();
        for (int64_t d = 0; d < D8; d += 8)
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(x + d), bf16x8(w + r * ld + d)));
        _mm256_storeu_ps(lanes[r], a0);
    }
}
#endif

/* x [B][D] float32 -> out [B][V]; w [V][D] bfloat16 bits. */
static int head_bf16(const float *x, int64_t B, int64_t D, const uint16_t *w, int64_t V,
                     float *out, int64_t threads, int level) {
    const int use = MF_X86 && level >= MF_ISA_AVX2;
    const int64_t D8 = use ? D / 8 * 8 : 0; /* entries the vector loop takes */
    const int64_t nt = tfm_head_threads(mf_threads(threads), V);
    const int64_t blocks = (V + 3) / 4;
#pragma omp parallel for num_threads((int)nt) schedule(dynamic, TFM_HEAD_CHUNK / 4) if (nt > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t v0 = 4 * blk;
        const int nr = (int)(V - v0 < 4 ? V - v0 : 4);
        for (int64_t b = 0; b < B; ++b) {
            float lanes[4][8] = {{0}};
#if MF_X86
            if (D8) bf16_rows_avx2(w + v0 * D, D, x + b * D, D8, nr, lanes);
#endif
            for (int r = 0; r < nr; ++r) {
                bf16_row_scalar(w + (v0 + r) * D, x + b * D, D8, D, lanes[r]);
                out[b * V + v0 + r] = tree8(lanes[r]);
            }
        }
    }
    return use ? MF_ISA_AVX2 : MF_ISA_SCALAR;
}

/* ---------------------------------------------------------------------------------------------
 * The ops on argument slots (mf_common.h) and their Python entry points
 * ------------------------------------------------------------------------------------------- */
int mf_op_tfm_head_i4(const int64_t *a) {
    const float *x = mf_slot_ptr(a[0]);
    const uint8_t *codes = mf_slot_ptr(a[3]);
    const uint16_t *step = mf_slot_ptr(a[5]);
    float *out = mf_slot_ptr(a[6]);
    if (x == NULL || codes == NULL || step == NULL || out == NULL || a[1] < 0 || a[2] < 1 ||
        a[4] < 1)
        return MF_OP_BADARG;
    return head_i4(x, a[1], a[2], codes, a[4], step, out, a[7], mf_isa_resolve((int)a[8]),
                   cpu_vnni());
}

int mf_op_tfm_head_bf16(const int64_t *a) {
    const float *x = mf_slot_ptr(a[0]);
    const uint16_t *w = mf_slot_ptr(a[3]);
    float *out = mf_slot_ptr(a[5]);
    if (x == NULL || w == NULL || out == NULL || a[1] < 0 || a[2] < 1 || a[4] < 1)
        return MF_OP_BADARG;
    return head_bf16(x, a[1], a[2], w, a[4], out, a[6], mf_isa_resolve((int)a[7]));
}

int mf_op_tfm_head_i8(const int64_t *a) {
    const float *x = mf_slot_ptr(a[0]), *step = mf_slot_ptr(a[5]);
    const int8_t *w = mf_slot_ptr(a[3]);
    float *out = mf_slot_ptr(a[6]);
    if (x == NULL || w == NULL || step == NULL || out == NULL || a[1] < 0 || a[2] < 1 || a[4] < 1)
        return MF_OP_BADARG;
    return head_i8(x, a[1], a[2], w, a[4], step, out, a[7], mf_isa_resolve((int)a[8]));
}


MF_PYFUNC(tfm_head_bf16, "tfm_head_bf16(x, B, D, w_bf16, V, out, threads, isa) -> isa used: bfloat16 head on float32 activations.") {
    MF_OP_ENTRY(tfm_head_bf16, 8, "pllplpll");
}

MF_PYFUNC(tfm_head_i4, "tfm_head_i4(x, B, D, codes_int4, V, step_bf16, out, threads, isa) -> isa used: int4 head (a bf16 step per 32 entries) on int8 (absmax) activations.") {
    MF_OP_ENTRY(tfm_head_i4, 9, "pllplppll");
}

MF_PYFUNC(tfm_head_i8, "tfm_head_i8(x, B, D, w_int8, V, step, out, threads, isa) -> isa used: int8 head on int8 (absmax) activations.") {
    MF_OP_ENTRY(tfm_head_i8, 9, "pllplppll");
}
