/* Ternary linear on tq2-packed weights: y[m, n] = acc[m, n] / (s_x[m] * s_w), where
 * acc[m, n] = sum_k q_x[m, k] * q_w[n, k] is computed with integer adds and subtracts only.
 *
 * Pipeline per call (one OpenMP region):
 *   1. quantize every token to int8 absmax (the rule of mulfree.ternary.quant.act_quant_int8);
 *   2. SIMD paths: per token, one 16-entry table per pair of inputs (a, b), built with adds:
 *        T[c0 + 4 c1] = s(c0) a + s(c1) b,  s = {-1, 0, +1, 0}[code],  T in [-256, 254];
 *      kept exact as two byte planes tb = T & 31 (0..31), ta = (T + 256) >> 5 (0..15),
 *      T + 256 = 32 ta + tb (the +256 per lookup is subtracted once per row at the end);
 *   3. each thread owns a contiguous range of 32-row blocks; a weight byte's low/high nibble is a
 *      table index (vpshufb, or vpermb with VBMI), the looked-up bytes are summed in byte lanes
 *      (8 lookups cannot overflow: 8 * 31 <= 255 and 8 * 15 <= 255), widened by shifts/masks
 *      into int16 every <= 8 lookups and into int32 every <= 64 blocks (64 * 248 < 32767):
 *      acc = 32 A + B - bias. Register tiles share loads both ways: a group of row blocks
 *      (2, or 4 with VBMI) shares every loaded table vector, and in batches a tile of 2 tokens
 *      (AVX2 / VBMI; up to 4 tokens for one row block) shares every loaded weight vector;
 *   4. one float rescale per output.
 * Variants per level: AVX2 (256-bit vpshufb); AVX-512 with VBMI (vpermb on 256-bit vectors:
 * no index masking, 32 registers; measured fastest on AMD Zen 4, where 512-bit shuffles are
 * double-pumped); AVX-512 F+BW+VL without VBMI (512-bit vpshufb).
 * A second layout of the same blocks, t81 (section 5; 4 weights per byte as one base-3 index into
 * an 81-entry table, one vpermi2b per 64 rows x 4 weights), runs on AVX-512 VBMI through the same
 * driver: half the lookups per weight, 0.71-0.81x tq2's batch 8 time on AMD Zen 4.
 * No multiply instruction anywhere in steps 2-3 (no maddubs / dpbusd / pmull).
 * The scalar kernel reads the packed codes directly and is the spec; every SIMD path must give
 * the same int32 accumulators (tests/kernels/test_ternary_kernels.py, atol=0).
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mf_common.h"
#if MF_X86
#include <immintrin.h>
#endif

#define ACT_EPS 1e-5f       /* quant.ACT_EPS */
/* Software prefetch of the weight stream: TQ2_PF_BLOCKS blocks (3 KiB) ahead of each row block's
 * stream, into L2 (T1), not L1 (T0). Into L1 the prefetched lines evicted the lookup tables (32
 * KiB at K = 2048 for tq2, more for t81: the L1d is 32 KiB on AMD Zen 3/4, 48 KiB on Sapphire
 * Rapids) and cold batch-1 calls ran at 40-55 % of the streaming read rate. Interleaved A/B on
 * the 2-core AMD EPYC Zen 4 dev VM (1 thread, cold weights): T1 takes 0.76-0.92x the time of T0
 * for tq2 (AVX2 and AVX-512, 1024..5632 inputs) and 0.78-0.81x for t81 at batch 1, and
 * 0.91-1.05x at batch 8 (compute-bound there); distance 24 beat 12, 16, 32 and 64 with T1. */
#ifndef TQ2_PF_BLOCKS
#define TQ2_PF_BLOCKS 24
#endif
#define TQ2_PF_HINT _MM_HINT_T1
#define FLUSH_BLOCKS 64     /* int16 -> int32 every <= 64 blocks (1024 inputs) */
/* batch-N k-chunk: the tables of all tokens of a chunk fit in half of L2 (512 KiB per core on
 * the AMD EPYC Zen 3 dev machine per lscpu; 1-2 MiB on recent Intel server cores) */
#ifndef TAB_L2_BYTES
#define TAB_L2_BYTES (256 * 1024)
#endif
/* Tokens per pass over the weights (more tokens: the weights are re-read per pass). At 64 a
 * pass ran 20-25 % slower per token than at 16 on 2 threads (up to 2.4x on one thread, e.g.
 * 1024->5632: 143 vs 60 us per token; dev machine): the k-chunk that keeps all the pass's
 * tables in L2 shrinks with the token count (16 blocks at 64 tokens), so every row block
 * restarts short table streams and flushes its sums more often. At 8 and 16 the per-token
 * cost is flat. */
#define TOKENS_PER_PASS 16

/* ------------------------------------------------------------------------------------------
 * 1. Activation quantization. Spec: scale = 127 / max(amax, 1e-5); q = clamp(rint(x * scale)).
 * Inputs must be finite (NaN/inf give unspecified codes, as torch's float->int8 cast does).
 * Float multiplies here are the quantizer's, once per input, outside the add-only product.
 * ---------------------------------------------------------------------------------------- */
static inline float act_scale(float amax) {
    /* torch evaluates `127.0 / t` as t.reciprocal() * 127: two fp32 roundings, kept here */
    const float r = 1.0f / (amax > ACT_EPS ? amax : ACT_EPS);
    return r * 127.0f;
}

static void act_quant_scalar(const float *x, int64_t K, int64_t Kp, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
        const float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    const float s = act_scale(amax);
    for (int64_t k = 0; k < K; ++k) {
        float v = nearbyintf(x[k] * s); /* round half to even, as torch.round */
        v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
        q[k] = v == v ? (int8_t)v : 0; /* NaN input (unspecified result, as torch's cast) */
    }
    for (int64_t k = K; k < Kp; ++k) q[k] = 0;
    *scale = s;
}

#if MF_X86
MF_TARGET_AVX2 static void act_quant_avx2(const float *x, int64_t K, int64_t Kp, int8_t *q,
                                          float *scale) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float amax = 0.0f;
    for (int i = 0; i < 8; ++i) amax = lanes[i] > amax ? lanes[i] : amax;
    for (; k < K; ++k) {
        const float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    const float s = act_scale(amax);
    const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (k = 0; k + 32 <= K; k += 32) {
        __m256i i4[4];
        for (int j = 0; j < 4; ++j) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vs);
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            i4[j] = _mm256_cvtps_epi32(v);
        }
        /* packs work per 128-bit lane; the final dword permutation restores input order */
        const __m256i w01 = _mm256_packs_epi32(i4[0], i4[1]), w23 = _mm256_packs_epi32(i4[2], i4[3]);
        const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
        _mm256_storeu_si256((__m256i *)(q + k), b);
    }
    for (; k < K; ++k) {
        float v = nearbyintf(x[k] * s);
        v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
        q[k] = v == v ? (int8_t)v : 0;
    }
    for (k = K; k < Kp; ++k) q[k] = 0;
    *scale = s;
}
#endif

/* ------------------------------------------------------------------------------------------
 * 3. Kernels. kern(q, qs, tab, ts, w, nkb, acc, as, ntok): for ntok tokens (token t: inputs
 * q + t qs, tables tab + t ts, accumulators acc + t as), the 32 rows of one row block over nkb
 * blocks; adds into acc[t][0..31]. Each weight slab is loaded once per tile of <= 4 tokens.
 * ---------------------------------------------------------------------------------------- */

/* 3a. Scalar (the spec): reads the packed codes and the int8 inputs directly; tab unused. */
static void tq2_kern_scalar(const int8_t *q, int64_t qs, const uint8_t *tab, int64_t ts,
                            const mf_tq2_block *w, int64_t nkb, int32_t *acc, int64_t as,
                            int64_t ntok) {
    (void)tab;
    (void)ts;
    for (int64_t t = 0; t < ntok; ++t)
        for (int r = 0; r < MF_TQ2_ROWS; ++r) {
            int32_t s = 0;
            for (int64_t kb = 0; kb < nkb; ++kb)
                for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                    const unsigned byte = w[kb].q[u][r];
                    for (int i = 0; i < 4; ++i) {
                        const unsigned c = (byte >> (2 * i)) & 3u;
                        const int32_t x = q[t * qs + kb * MF_TQ2_K + 4 * u + i];
                        if (c == 2u)
                            s += x;
                        else if (c == 0u)
                            s -= x;
                    }
                }
            acc[t * as + r] += s;
        }
}

/* Combine per-row partial sums of nblk blocks: rows 2j / 2j+1 sit in the even / odd byte of
 * int16 word j (words j and j + 16 hold the same rows on AVX-512). The table stores
 * T + 256 = 32 A + B, so sum T = 32 sum A + sum B - 256 * (8 lookups per block) * nblk. */
static inline void flush_rows(const int16_t *ae, const int16_t *ao, const int16_t *be,
                              const int16_t *bo, int nwords, int64_t nblk, int32_t *acc) {
    const int32_t bias = (int32_t)((uint32_t)nblk << 11);
    for (int r = 0; r < MF_TQ2_ROWS; ++r) acc[r] -= bias;
    for (int j = 0; j < nwords; ++j) {
        const int r = 2 * (j % (MF_TQ2_ROWS / 2));
        /* shifts of non-negative int16 sums: no multiply */
        acc[r] += (int32_t)((uint32_t)(uint16_t)ae[j] << 5) + be[j];
        acc[r + 1] += (int32_t)((uint32_t)(uint16_t)ao[j] << 5) + bo[j];
    }
}

#if MF_X86
/* ------------------------------------------------------------------------------------------
 * 2/3b. AVX2. Tables: per input pair g, 32 bytes = tb[16] | ta[16] (broadcast to both lanes),
 * tb = T & 31 in 0..31 and ta = (T + 256) >> 5 in 0..15, so T + 256 = 32 ta + tb.
 * ---------------------------------------------------------------------------------------- */
#define TQ2_TAB_AVX2 (8 * 32) /* bytes per block per token: 8 pairs */

MF_TARGET_AVX2 static inline __m256i pair_table_avx2(int8_t a, int8_t b) {
    /* entry e = c0 + 4 c1: +a where c0 == 2, -a where c0 == 0, same for b with c1 */
    const __m256i ap = _mm256_setr_epi16(0, 0, -1, 0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0, -1, 0);
    const __m256i an = _mm256_setr_epi16(-1, 0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0, -1, 0, 0, 0);
    const __m256i bp = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0);
    const __m256i bn = _mm256_setr_epi16(-1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i va = _mm256_set1_epi16(a), vb = _mm256_set1_epi16(b);
    __m256i t = _mm256_sub_epi16(_mm256_and_si256(va, ap), _mm256_and_si256(va, an));
    t = _mm256_add_epi16(t, _mm256_and_si256(vb, bp));
    t = _mm256_sub_epi16(t, _mm256_and_si256(vb, bn));
    t = _mm256_add_epi16(t, _mm256_set1_epi16(256)); /* 0..510 */
    const __m256i tb = _mm256_and_si256(t, _mm256_set1_epi16(31));
    const __m256i ta = _mm256_srli_epi16(t, 5);
    /* packs: [tb0-7 ta0-7 | tb8-15 ta8-15] -> qwords (0,2,1,3): [tb0-15 | ta0-15] */
    return _mm256_permute4x64_epi64(_mm256_packs_epi16(tb, ta), 0xD8);
}

MF_TARGET_AVX2 static void tq2_tables_avx2(const int8_t *q, int64_t nkb, uint8_t *tab) {
    for (int64_t g = 0; g < nkb * (MF_TQ2_K / 2); ++g)
        _mm256_store_si256((__m256i *)(tab + 32 * g), pair_table_avx2(q[2 * g], q[2 * g + 1]));
}

/* Accumulate as we go: without this empty-asm barrier on the byte accumulators, GCC hoists all
 * lookups of a block ahead of their adds and spills them to the stack (AVX2 has 16 ymm
 * registers); measured on the dev machine, one thread, hot weights: batch 1 13.6 -> 25.6 GB/s,
 * batch 4 / 8 1.4-1.7x faster. Under SIMDe (tests) the vectors are not registers: no-op. */
#ifndef MF_KEEP
#define MF_KEEP(v) __asm__("" : "+x"(v))
#endif
/* The same for zmm accumulators ("v": any of the 32 vector registers). A SIMDe build defines it
 * away (-DMF_KEEP512(v)=), where the vectors are not registers. */
#ifndef MF_KEEP512
#define MF_KEEP512(v) __asm__("" : "+v"(v))
#endif
#define MF_KEEP4(a, b, c, d) \
    do {                       \
        MF_KEEP(a);            \
        MF_KEEP(b);            \
        MF_KEEP(c);            \
        MF_KEEP(d);            \
    } while (0)

#define BCAST(p) _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(p)))

/* TB tokens at once (TB a compile-time constant after inlining). */
MF_TARGET_AVX2 static inline __attribute__((always_inline)) void tq2_tile_avx2(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *w, int64_t nkb, int32_t *acc, int64_t as,
    const int TB) {
    const __m256i nib = _mm256_set1_epi8(0x0F), low = _mm256_set1_epi16(0x00FF);
    /* per-token pointers by repeated addition: not even the address arithmetic multiplies */
    const uint8_t *tt[4];
    int32_t *at[4];
    tt[0] = tab;
    at[0] = acc;
    for (int t = 1; t < TB; ++t) tt[t] = tt[t - 1] + ts, at[t] = at[t - 1] + as;
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        __m256i e[4][4]; /* [token][ae, ao, be, bo] int16 sums */
        for (int t = 0; t < TB; ++t) e[t][0] = e[t][1] = e[t][2] = e[t][3] = _mm256_setzero_si256();
        for (; kb < kend; ++kb) {
            __m256i bs[4], as_[4];
            for (int t = 0; t < TB; ++t) bs[t] = as_[t] = _mm256_setzero_si256();
            for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)w[kb].q[u]);
                const __m256i ilo = _mm256_and_si256(v, nib);
                const __m256i ihi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                for (int t = 0; t < TB; ++t) {
                    const uint8_t *tl = tt[t] + (kb << 8) + (u << 6); /* 256 B/block, pair 2u */
                    bs[t] = _mm256_add_epi8(bs[t], _mm256_shuffle_epi8(BCAST(tl), ilo));
                    as_[t] = _mm256_add_epi8(as_[t], _mm256_shuffle_epi8(BCAST(tl + 16), ilo));
                    bs[t] = _mm256_add_epi8(bs[t], _mm256_shuffle_epi8(BCAST(tl + 32), ihi));
                    as_[t] = _mm256_add_epi8(as_[t], _mm256_shuffle_epi8(BCAST(tl + 48), ihi));
                    MF_KEEP(bs[t]);
                    MF_KEEP(as_[t]);
                }
            }
            /* widen the 8 lookups per byte (<= 8 * 31 and <= 8 * 15): even rows = low byte */
            for (int t = 0; t < TB; ++t) {
                e[t][0] = _mm256_add_epi16(e[t][0], _mm256_and_si256(as_[t], low));
                e[t][1] = _mm256_add_epi16(e[t][1], _mm256_srli_epi16(as_[t], 8));
                e[t][2] = _mm256_add_epi16(e[t][2], _mm256_and_si256(bs[t], low));
                e[t][3] = _mm256_add_epi16(e[t][3], _mm256_srli_epi16(bs[t], 8));
            }
        }
        for (int t = 0; t < TB; ++t) {
            int16_t e16[4][16] __attribute__((aligned(32)));
            for (int i = 0; i < 4; ++i) _mm256_store_si256((__m256i *)e16[i], e[t][i]);
            flush_rows(e16[0], e16[1], e16[2], e16[3], 16, kend - k0, at[t]);
        }
    }
}

/* Batch 1: two row blocks (64 rows) per step, so every table vector loaded serves two weight
 * vectors (half the table loads and broadcasts per weight of tq2_tile_avx2 at TB = 1; the same
 * sums in the same order, so the same int32 results). */
MF_TARGET_AVX2 static __attribute__((noinline)) void tq2_pair_avx2(const uint8_t *tab, const mf_tq2_block *w0,
                                         const mf_tq2_block *w1, int64_t nkb, int32_t *acc0,
                                         int32_t *acc1) {
    const __m256i nib = _mm256_set1_epi8(0x0F), low = _mm256_set1_epi16(0x00FF);
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        __m256i e0[4], e1[4]; /* [ae, ao, be, bo] int16 sums of row block 0 / 1 */
        for (int i = 0; i < 4; ++i) e0[i] = e1[i] = _mm256_setzero_si256();
        for (; kb < kend; ++kb) {
            _mm_prefetch((const char *)(w0 + kb + TQ2_PF_BLOCKS), TQ2_PF_HINT);
            _mm_prefetch((const char *)(w0 + kb + TQ2_PF_BLOCKS) + 64, TQ2_PF_HINT);
            _mm_prefetch((const char *)(w1 + kb + TQ2_PF_BLOCKS), TQ2_PF_HINT);
            _mm_prefetch((const char *)(w1 + kb + TQ2_PF_BLOCKS) + 64, TQ2_PF_HINT);
            __m256i bs0 = _mm256_setzero_si256(), as0 = bs0, bs1 = bs0, as1 = bs0;
            for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                const uint8_t *tl = tab + (kb << 8) + (u << 6); /* 256 B/block, pair 2u */
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)w0[kb].q[u]);
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)w1[kb].q[u]);
                __m256i tb = BCAST(tl), ta = BCAST(tl + 16);
                const __m256i l0 = _mm256_and_si256(v0, nib), l1 = _mm256_and_si256(v1, nib);
                bs0 = _mm256_add_epi8(bs0, _mm256_shuffle_epi8(tb, l0));
                as0 = _mm256_add_epi8(as0, _mm256_shuffle_epi8(ta, l0));
                bs1 = _mm256_add_epi8(bs1, _mm256_shuffle_epi8(tb, l1));
                as1 = _mm256_add_epi8(as1, _mm256_shuffle_epi8(ta, l1));
                tb = BCAST(tl + 32), ta = BCAST(tl + 48);
                const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nib);
                const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nib);
                bs0 = _mm256_add_epi8(bs0, _mm256_shuffle_epi8(tb, h0));
                as0 = _mm256_add_epi8(as0, _mm256_shuffle_epi8(ta, h0));
                bs1 = _mm256_add_epi8(bs1, _mm256_shuffle_epi8(tb, h1));
                as1 = _mm256_add_epi8(as1, _mm256_shuffle_epi8(ta, h1));
                MF_KEEP4(bs0, as0, bs1, as1);
            }
            e0[0] = _mm256_add_epi16(e0[0], _mm256_and_si256(as0, low));
            e0[1] = _mm256_add_epi16(e0[1], _mm256_srli_epi16(as0, 8));
            e0[2] = _mm256_add_epi16(e0[2], _mm256_and_si256(bs0, low));
            e0[3] = _mm256_add_epi16(e0[3], _mm256_srli_epi16(bs0, 8));
            e1[0] = _mm256_add_epi16(e1[0], _mm256_and_si256(as1, low));
            e1[1] = _mm256_add_epi16(e1[1], _mm256_srli_epi16(as1, 8));
            e1[2] = _mm256_add_epi16(e1[2], _mm256_and_si256(bs1, low));
            e1[3] = _mm256_add_epi16(e1[3], _mm256_srli_epi16(bs1, 8));
        }
        int16_t e16[8][16] __attribute__((aligned(32)));
        for (int i = 0; i < 4; ++i) {
            _mm256_store_si256((__m256i *)e16[i], e0[i]);
            _mm256_store_si256((__m256i *)e16[4 + i], e1[i]);
        }
        flush_rows(e16[0], e16[1], e16[2], e16[3], 16, kend - k0, acc0);
        flush_rows(e16[4], e16[5], e16[6], e16[7], 16, kend - k0, acc1);
    }
}

/* Batch (prefill): a 2-D register tile of NR row blocks x NT tokens (NR <= 2, NT <= 4, NR NT
 * <= 4). Every loaded weight vector serves NT tokens and every loaded table vector NR row blocks;
 * the lookups are the same, in the same order per (row, token), as in tq2_tile_avx2, so the int32
 * results are equal. The register file (16 ymm) holds only what the lookups touch: the byte sums
 * (bs per block, as over two blocks: 16 lookups of <= 15 fit a byte) and the indices; the int16
 * sums live in memory (one read-modify-write per byte vector and widening; widened with 3 ops:
 * see the note before PAIR_BLOCKS_512). Before this the int16 sums of the 2 x 2 tile were 16 more
 * ymm values than the 16 registers, and GCC spilled the byte sums of the lookups in the loop. */
#define AS_BLOCKS_AVX2 2 /* blocks per `as` byte sum: 2 * 8 lookups * 15 <= 255 */
MF_TARGET_AVX2 static inline __attribute__((always_inline)) void tq2_tile2d_avx2(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *w0, const mf_tq2_block *w1, int64_t nkb,
    int32_t *acc0, int32_t *acc1, int64_t as, const int NR, const int NT) {
    const __m256i nib = _mm256_set1_epi8(0x0F);
    const mf_tq2_block *wr[2] = {w0, w1};
    const uint8_t *tt[4];
    int32_t *at[2][4];
    tt[0] = tab;
    at[0][0] = acc0;
    at[1][0] = acc1;
    for (int t = 1; t < NT; ++t) { /* per-token pointers by repeated addition */
        tt[t] = tt[t - 1] + ts;
        at[0][t] = at[0][t - 1] + as;
        at[1][t] = at[1][t - 1] + as;
    }
    /* [row block][token][a words, a odd, b words, b odd][16] */
    int16_t e16[2][4][4][16] __attribute__((aligned(32)));
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t)
                for (int i = 0; i < 4; ++i) _mm256_store_si256((__m256i *)e16[r][t][i], _mm256_setzero_si256());
        while (kb < kend) {
            const int64_t kstop = kb + AS_BLOCKS_AVX2 < kend ? kb + AS_BLOCKS_AVX2 : kend;
            __m256i as_[2][4];
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) as_[r][t] = _mm256_setzero_si256();
            for (; kb < kstop; ++kb) {
                __m256i bs[2][4];
                for (int r = 0; r < NR; ++r)
                    for (int t = 0; t < NT; ++t) bs[r][t] = _mm256_setzero_si256();
                for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                    __m256i ilo[2], ihi[2];
                    for (int r = 0; r < NR; ++r) {
                        const __m256i v = _mm256_loadu_si256((const __m256i *)wr[r][kb].q[u]);
                        ilo[r] = _mm256_and_si256(v, nib);
                        ihi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                    }
                    for (int t = 0; t < NT; ++t) {
                        const uint8_t *tl = tt[t] + (kb << 8) + (u << 6); /* 256 B/block, pair 2u */
                        __m256i tv = BCAST(tl);
                        for (int r = 0; r < NR; ++r) bs[r][t] = _mm256_add_epi8(bs[r][t], _mm256_shuffle_epi8(tv, ilo[r]));
                        tv = BCAST(tl + 16);
                        for (int r = 0; r < NR; ++r) as_[r][t] = _mm256_add_epi8(as_[r][t], _mm256_shuffle_epi8(tv, ilo[r]));
                        tv = BCAST(tl + 32);
                        for (int r = 0; r < NR; ++r) bs[r][t] = _mm256_add_epi8(bs[r][t], _mm256_shuffle_epi8(tv, ihi[r]));
                        tv = BCAST(tl + 48);
                        for (int r = 0; r < NR; ++r) as_[r][t] = _mm256_add_epi8(as_[r][t], _mm256_shuffle_epi8(tv, ihi[r]));
                        for (int r = 0; r < NR; ++r) {
                            MF_KEEP(bs[r][t]);
                            MF_KEEP(as_[r][t]);
                        }
                    }
                }
                for (int r = 0; r < NR; ++r)
                    for (int t = 0; t < NT; ++t) {
                        __m256i *eb = (__m256i *)e16[r][t][2], *ebo = (__m256i *)e16[r][t][3];
                        _mm256_store_si256(eb, _mm256_add_epi16(_mm256_load_si256(eb), bs[r][t]));
                        _mm256_store_si256(ebo, _mm256_add_epi16(_mm256_load_si256(ebo), _mm256_srli_epi16(bs[r][t], 8)));
                    }
                /* keep the int16 sums in memory: without this GCC promotes them to registers
                 * across the block loop and spills the byte sums instead */
                __asm__ volatile("" : : "r"(e16) : "memory");
            }
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) {
                    __m256i *ea = (__m256i *)e16[r][t][0], *eao = (__m256i *)e16[r][t][1];
                    _mm256_store_si256(ea, _mm256_add_epi16(_mm256_load_si256(ea), as_[r][t]));
                    _mm256_store_si256(eao, _mm256_add_epi16(_mm256_load_si256(eao), _mm256_srli_epi16(as_[r][t], 8)));
                }
        }
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t) {
                /* even-byte sums = word sums - (odd-byte sums << 8), mod 2^16 */
                for (int i = 0; i < 4; i += 2) {
                    __m256i *ew = (__m256i *)e16[r][t][i];
                    const __m256i eo = _mm256_load_si256((const __m256i *)e16[r][t][i + 1]);
                    _mm256_store_si256(ew, _mm256_sub_epi16(_mm256_load_si256(ew), _mm256_slli_epi16(eo, 8)));
                }
                flush_rows(e16[r][t][0], e16[r][t][1], e16[r][t][2], e16[r][t][3], 16, kend - k0, at[r][t]);
            }
    }
}

/* Two row blocks (w, w + wstride), every token: batch 1 by tq2_pair_avx2, batches in tiles of
 * 2 row blocks x 2 tokens. */
MF_TARGET_AVX2 static void tq2_kernn_avx2(const uint8_t *tab, int64_t ts, const mf_tq2_block *w,
                                          int64_t wstride, int64_t nkb, int32_t *acc, int64_t as,
                                          int64_t ntok) {
    const mf_tq2_block *w1 = w + wstride;
    int32_t *acc1 = acc + MF_TQ2_ROWS;
    if (ntok == 1) {
        tq2_pair_avx2(tab, w, w1, nkb, acc, acc1);
        return;
    }
    int64_t t = 0;
    for (; t + 2 <= ntok; t += 2) {
        tq2_tile2d_avx2(tab, ts, w, w1, nkb, acc, acc1, as, 2, 2);
        tab += ts + ts;
        acc += as + as;
        acc1 += as + as;
    }
    if (t < ntok) tq2_tile2d_avx2(tab, ts, w, w1, nkb, acc, acc1, as, 2, 1);
}

MF_TARGET_AVX2 static void tq2_kern_avx2(const int8_t *q, int64_t qs, const uint8_t *tab,
                                         int64_t ts, const mf_tq2_block *w, int64_t nkb,
                                         int32_t *acc, int64_t as, int64_t ntok) {
    (void)q;
    (void)qs;
    int64_t t = 0;
    for (; t + 4 <= ntok; t += 4) {
        tq2_tile_avx2(tab, ts, w, nkb, acc, as, 4);
        tab += ts + ts + ts + ts;
        acc += as + as + as + as;
    }
    if (ntok - t >= 2) {
        tq2_tile_avx2(tab, ts, w, nkb, acc, as, 2);
        tab += ts + ts;
        acc += as + as;
        t += 2;
    }
    if (ntok - t == 1) tq2_tile_avx2(tab, ts, w, nkb, acc, as, 1);
}

/* ------------------------------------------------------------------------------------------
 * 2/3c. AVX-512 (F+BW). A zmm holds two 32-byte units (u, u+1) of one block, so its tables
 * are [T(lo pair of u) x2 lanes | T(lo pair of u+1) x2 lanes] and likewise for the high pairs.
 * Per block and token: 2 unit pairs x (tb_lo, ta_lo, tb_hi, ta_hi) x 64 bytes = 512 bytes.
 * ---------------------------------------------------------------------------------------- */
#define TQ2_TAB_AVX512 (2 * 4 * 64)

MF_TARGET_AVX512 static void tq2_tables_avx512(const int8_t *q, int64_t nkb, uint8_t *tab) {
    for (int64_t g = 0; g < nkb * (MF_TQ2_K / 2); ++g) {
        const __m256i t = pair_table_avx2(q[2 * g], q[2 * g + 1]);
        const __m128i tb = _mm256_castsi256_si128(t), ta = _mm256_extracti128_si256(t, 1);
        /* pair g of block g / 8: unit u = (g % 8) / 2, nibble = g % 2; unit pair p = u / 2 */
        const int gi = (int)(g % 8), u = gi / 2, nibble = gi % 2, p = u / 2, half = u % 2;
        uint8_t *base = tab + (g / 8) * TQ2_TAB_AVX512 + p * 256 + nibble * 128 + half * 32;
        _mm_store_si128((__m128i *)base, tb);
        _mm_store_si128((__m128i *)(base + 16), tb);
        _mm_store_si128((__m128i *)(base + 64), ta);
        _mm_store_si128((__m128i *)(base + 80), ta);
    }
}

/* Per byte lane and block a zmm byte sum takes 4 lookups (2 units x 2 nibbles) of <= 31 (tb) or
 * <= 15 (ta), so two blocks fit in a byte (8 * 31 = 248) before widening. Widening uses 3 adds
 * per byte vector instead of 4: the vector added as int16 words gives wsum = lo + 256 hi
 * (mod 2^16) per word and hsum = sum of (word >> 8) the odd bytes; the even bytes' sum is then
 * wsum - (hsum << 8) (mod 2^16), exact because it stays < 2^16 (<= 64 blocks * 8 * 31 = 15872). */
#define PAIR_BLOCKS_512 2
/* Software prefetch distance of the batch-1 weight streams, in 128-byte blocks: chosen by
 * measurement on the AMD EPYC Zen 4 dev machine (one thread, cold weights, 2048->5632: none
 * ~10 % slower than 16-32 blocks ahead; the hardware prefetcher alone does not keep two
 * sequential streams ahead of a loop this fast). */

/* An NR x NT register tile (NR row blocks <= 2, NT tokens <= 4; compile-time after inlining):
 * every loaded weight vector serves NT tokens and every loaded table vector NR row blocks. */
MF_TARGET_AVX512 static inline __attribute__((always_inline)) void tq2_tile2d_avx512(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *w0, const mf_tq2_block *w1, int64_t nkb,
    int32_t *acc0, int32_t *acc1, int64_t as, const int NR, const int NT, const int PF) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const mf_tq2_block *wr[2] = {w0, w1};
    const uint8_t *tt[4];
    int32_t *at[2][4];
    tt[0] = tab;
    at[0][0] = acc0;
    at[1][0] = acc1;
    for (int t = 1; t < NT; ++t) {
        tt[t] = tt[t - 1] + ts;
        at[0][t] = at[0][t - 1] + as;
        at[1][t] = at[1][t - 1] + as;
    }
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        /* [row block][token][a words, a odd, b words, b odd] (see the widening note above) */
        __m512i e[2][4][4];
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t) e[r][t][0] = e[r][t][1] = e[r][t][2] = e[r][t][3] = _mm512_setzero_si512();
        while (kb < kend) {
            const int64_t kstop = kb + PAIR_BLOCKS_512 < kend ? kb + PAIR_BLOCKS_512 : kend;
            __m512i bs[2][4], as_[2][4];
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) bs[r][t] = as_[r][t] = _mm512_setzero_si512();
            for (; kb < kstop; ++kb) {
                if (PF)
                    for (int r = 0; r < NR; ++r) {
                        _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS), TQ2_PF_HINT);
                        _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS) + 64, TQ2_PF_HINT);
                    }
                for (int p = 0; p < 2; ++p) { /* units (2p, 2p + 1) of the block */
                    __m512i ilo[2], ihi[2];
                    for (int r = 0; r < NR; ++r) {
                        const __m512i v = _mm512_loadu_si512((const void *)wr[r][kb].q[2 * p]);
                        ilo[r] = _mm512_and_si512(v, nib);
                        ihi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                    }
                    for (int t = 0; t < NT; ++t) {
                        const uint8_t *tp = tt[t] + (kb << 9) + (p << 8); /* 512 B/block */
                        __m512i tv = _mm512_load_si512((const void *)tp);
                        for (int r = 0; r < NR; ++r) bs[r][t] = _mm512_add_epi8(bs[r][t], _mm512_shuffle_epi8(tv, ilo[r]));
                        tv = _mm512_load_si512((const void *)(tp + 64));
                        for (int r = 0; r < NR; ++r) as_[r][t] = _mm512_add_epi8(as_[r][t], _mm512_shuffle_epi8(tv, ilo[r]));
                        tv = _mm512_load_si512((const void *)(tp + 128));
                        for (int r = 0; r < NR; ++r) bs[r][t] = _mm512_add_epi8(bs[r][t], _mm512_shuffle_epi8(tv, ihi[r]));
                        tv = _mm512_load_si512((const void *)(tp + 192));
                        for (int r = 0; r < NR; ++r) as_[r][t] = _mm512_add_epi8(as_[r][t], _mm512_shuffle_epi8(tv, ihi[r]));
                        for (int r = 0; r < NR; ++r) {
                            MF_KEEP512(bs[r][t]);
                            MF_KEEP512(as_[r][t]);
                        }
                    }
                }
            }
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) {
                    e[r][t][0] = _mm512_add_epi16(e[r][t][0], as_[r][t]);
                    e[r][t][1] = _mm512_add_epi16(e[r][t][1], _mm512_srli_epi16(as_[r][t], 8));
                    e[r][t][2] = _mm512_add_epi16(e[r][t][2], bs[r][t]);
                    e[r][t][3] = _mm512_add_epi16(e[r][t][3], _mm512_srli_epi16(bs[r][t], 8));
                }
        }
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t) {
                int16_t e16[4][32] __attribute__((aligned(64)));
                /* even-byte sums = word sums - (odd-byte sums << 8), mod 2^16 */
                const __m512i ae = _mm512_sub_epi16(e[r][t][0], _mm512_slli_epi16(e[r][t][1], 8));
                const __m512i be = _mm512_sub_epi16(e[r][t][2], _mm512_slli_epi16(e[r][t][3], 8));
                _mm512_store_si512((void *)e16[0], ae);
                _mm512_store_si512((void *)e16[1], e[r][t][1]);
                _mm512_store_si512((void *)e16[2], be);
                _mm512_store_si512((void *)e16[3], e[r][t][3]);
                flush_rows(e16[0], e16[1], e16[2], e16[3], 32, kend - k0, at[r][t]);
            }
    }
}

/* ------------------------------------------------------------------------------------------
 * 2/3d. AVX-512 VBMI on 256-bit vectors. vpermb indexes a 32-byte table with the low 5 bits of
 * each index byte and ignores the rest, so with the AVX2 tables (16 entries, broadcast to both
 * 16-byte halves) the raw weight byte indexes its low nibble's table and the byte shifted right
 * by 4 its high nibble's: the garbage bits above the nibble only pick the other, equal copy. No
 * masking then (3 -> 1 logic op per weight vector), and 32 registers let NR row blocks share
 * every loaded table vector. Same lookups, same order per row: the same int32 sums.
 * ---------------------------------------------------------------------------------------- */
#ifndef MF_TARGET_VBMI
#define MF_TARGET_VBMI __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vbmi")))
#endif
#ifndef MF_KEEP_Y
#define MF_KEEP_Y(v) __asm__("" : "+v"(v))
#endif
#define BCASTY(p) _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(p)))

MF_TARGET_VBMI static inline __attribute__((always_inline)) void tq2_tile_vbmi(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *const *wr, int64_t nkb,
    int32_t *const *ar, int64_t as, const int NR, const int NT, const int PF) {
    const uint8_t *tt[2] = {tab, tab + ts};
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        __m256i e[4][2][4]; /* [row block][token][a words, a odd, b words, b odd] */
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t) e[r][t][0] = e[r][t][1] = e[r][t][2] = e[r][t][3] = _mm256_setzero_si256();
        for (; kb < kend; ++kb) {
            if (PF)
                for (int r = 0; r < NR; ++r) {
                    _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS), TQ2_PF_HINT);
                    _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS) + 64, TQ2_PF_HINT);
                }
            __m256i bs[4][2], as_[4][2];
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) bs[r][t] = as_[r][t] = _mm256_setzero_si256();
            for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                __m256i vl[4], vh[4];
                for (int r = 0; r < NR; ++r) {
                    vl[r] = _mm256_loadu_si256((const __m256i *)wr[r][kb].q[u]);
                    vh[r] = _mm256_srli_epi16(vl[r], 4);
                }
                for (int t = 0; t < NT; ++t) {
                    const uint8_t *tl = tt[t] + (kb << 8) + (u << 6); /* 256 B/block, pair 2u */
                    __m256i tv = BCASTY(tl);
                    for (int r = 0; r < NR; ++r) bs[r][t] = _mm256_add_epi8(bs[r][t], _mm256_permutexvar_epi8(vl[r], tv));
                    tv = BCASTY(tl + 16);
                    for (int r = 0; r < NR; ++r) as_[r][t] = _mm256_add_epi8(as_[r][t], _mm256_permutexvar_epi8(vl[r], tv));
                    tv = BCASTY(tl + 32);
                    for (int r = 0; r < NR; ++r) bs[r][t] = _mm256_add_epi8(bs[r][t], _mm256_permutexvar_epi8(vh[r], tv));
                    tv = BCASTY(tl + 48);
                    for (int r = 0; r < NR; ++r) as_[r][t] = _mm256_add_epi8(as_[r][t], _mm256_permutexvar_epi8(vh[r], tv));
                    for (int r = 0; r < NR; ++r) {
                        MF_KEEP_Y(bs[r][t]);
                        MF_KEEP_Y(as_[r][t]);
                    }
                }
            }
            /* 8 lookups per byte per block: widen every block (3 ops per vector, see above) */
            for (int r = 0; r < NR; ++r)
                for (int t = 0; t < NT; ++t) {
                    e[r][t][0] = _mm256_add_epi16(e[r][t][0], as_[r][t]);
                    e[r][t][1] = _mm256_add_epi16(e[r][t][1], _mm256_srli_epi16(as_[r][t], 8));
                    e[r][t][2] = _mm256_add_epi16(e[r][t][2], bs[r][t]);
                    e[r][t][3] = _mm256_add_epi16(e[r][t][3], _mm256_srli_epi16(bs[r][t], 8));
                }
        }
        for (int r = 0; r < NR; ++r)
            for (int t = 0; t < NT; ++t) {
                int16_t e16[4][16] __attribute__((aligned(32)));
                const __m256i ae = _mm256_sub_epi16(e[r][t][0], _mm256_slli_epi16(e[r][t][1], 8));
                const __m256i be = _mm256_sub_epi16(e[r][t][2], _mm256_slli_epi16(e[r][t][3], 8));
                _mm256_store_si256((__m256i *)e16[0], ae);
                _mm256_store_si256((__m256i *)e16[1], e[r][t][1]);
                _mm256_store_si256((__m256i *)e16[2], be);
                _mm256_store_si256((__m256i *)e16[3], e[r][t][3]);
                flush_rows(e16[0], e16[1], e16[2], e16[3], 16, kend - k0, ar[r] + (t ? as : 0));
            }
    }
}

MF_TARGET_VBMI static void tq2_kern_vbmi(const int8_t *q, int64_t qs, const uint8_t *tab,
                                         int64_t ts, const mf_tq2_block *w, int64_t nkb,
                                         int32_t *acc, int64_t as, int64_t ntok) {
    (void)q;
    (void)qs;
    const mf_tq2_block *wr[1] = {w};
    int64_t t = 0;
    for (; t + 2 <= ntok; t += 2) {
        int32_t *ar[1] = {acc};
        tq2_tile_vbmi(tab, ts, wr, nkb, ar, as, 1, 2, 0);
        tab += ts + ts;
        acc += as + as;
    }
    if (t < ntok) {
        int32_t *ar[1] = {acc};
        tq2_tile_vbmi(tab, ts, wr, nkb, ar, as, 1, 1, ntok == 1);
    }
}

/* Row blocks per group of the VBMI kernels (tq2_kernn_vbmiz). */
#define TQ2_GROUP_VBMI 4

/* ------------------------------------------------------------------------------------------
 * 2/3e. AVX-512 VBMI on 512-bit vectors, two row blocks per vector. A zmm holds unit u of row
 * block 2p in its low half and of row block 2p + 1 in its high half (64 rows sharing the same 4
 * inputs), so one 16-entry table serves all 64 byte lanes: broadcast to the 4 quarters of the
 * zmm, vpermb's 6-bit index may carry any garbage in bits 4-5 (the raw byte, or the byte
 * shifted right by 4) and still picks an equal copy. On AMD Zen 4 a 512-bit vpermb + vpaddb pair
 * costs ~1.4x a 256-bit one for twice the lanes (measured in isolation on the dev machine:
 * 0.35 vs 0.25 ns per pair), so this halves the lookup instructions of tq2_tile_vbmi for ~70 %
 * of its time. Used for batches (tiles of 2 pairs x 2 tokens; batch 8/16 one thread, cold,
 * 5-12 % faster than the 256-bit tiles in an interleaved A/B); batch 1, memory-bound, keeps the
 * 256-bit tile (no gain measured). Same lookups, same order per row: the same int32 sums.
 * ---------------------------------------------------------------------------------------- */
#ifndef MF_KEEP_Z
#define MF_KEEP_Z(v) __asm__("" : "+v"(v))
#endif
#define BCASTZ(p) _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(p)))

/* The byte-plane sums of one zmm of 64 rows (row blocks 2p | 2p + 1) into its int16 sums
 * e = [a words, a odd bytes, b words, b odd bytes] (3 ops per vector, see 2/3c); shared by the
 * tq2 tile below and the t81 tile (section 5). */
MF_TARGET_VBMI static inline __attribute__((always_inline)) void zpair_widen(__m512i e[4], __m512i a,
                                                                            __m512i b) {
    e[0] = _mm512_add_epi16(e[0], a);
    e[1] = _mm512_add_epi16(e[1], _mm512_srli_epi16(a, 8));
    e[2] = _mm512_add_epi16(e[2], b);
    e[3] = _mm512_add_epi16(e[3], _mm512_srli_epi16(b, 8));
}

/* Those int16 sums over nkb blocks into the int32 accumulators of the two row blocks: words
 * 0-15 to acc0 (row block 2p), words 16-31 to acc1 (row block 2p + 1). */
MF_TARGET_VBMI static inline __attribute__((always_inline)) void zpair_flush(const __m512i e[4],
                                                                            int64_t nkb,
                                                                            int32_t *acc0,
                                                                            int32_t *acc1) {
    int16_t e16[4][32] __attribute__((aligned(64)));
    _mm512_store_si512((void *)e16[0], _mm512_sub_epi16(e[0], _mm512_slli_epi16(e[1], 8)));
    _mm512_store_si512((void *)e16[1], e[1]);
    _mm512_store_si512((void *)e16[2], _mm512_sub_epi16(e[2], _mm512_slli_epi16(e[3], 8)));
    _mm512_store_si512((void *)e16[3], e[3]);
    flush_rows(e16[0], e16[1], e16[2], e16[3], 16, nkb, acc0);
    flush_rows(e16[0] + 16, e16[1] + 16, e16[2] + 16, e16[3] + 16, 16, nkb, acc1);
}

/* NP pairs of row blocks (wr[2i], wr[2i + 1]; <= 2) x NT tokens (<= 2) */
MF_TARGET_VBMI static inline __attribute__((always_inline)) void tq2_tile_vbmiz(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *const *wr, int64_t nkb,
    int32_t *const *ar, int64_t as, const int NP, const int NT, const int PF) {
    const uint8_t *tt[2] = {tab, tab + ts};
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        __m512i e[2][2][4]; /* [row-block pair][token][a words, a odd, b words, b odd] */
        for (int p = 0; p < NP; ++p)
            for (int t = 0; t < NT; ++t) e[p][t][0] = e[p][t][1] = e[p][t][2] = e[p][t][3] = _mm512_setzero_si512();
        for (; kb < kend; ++kb) {
            if (PF)
                for (int r = 0; r < 2 * NP; ++r) {
                    _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS), TQ2_PF_HINT);
                    _mm_prefetch((const char *)(wr[r] + kb + TQ2_PF_BLOCKS) + 64, TQ2_PF_HINT);
                }
            __m512i bs[2][2], as_[2][2];
            for (int p = 0; p < NP; ++p)
                for (int t = 0; t < NT; ++t) bs[p][t] = as_[p][t] = _mm512_setzero_si512();
            for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                __m512i vl[2], vh[2];
                for (int p = 0; p < NP; ++p) {
                    const __m256i lo = _mm256_loadu_si256((const __m256i *)wr[2 * p][kb].q[u]);
                    const __m256i hi = _mm256_loadu_si256((const __m256i *)wr[2 * p + 1][kb].q[u]);
                    vl[p] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                    vh[p] = _mm512_srli_epi16(vl[p], 4);
                }
                for (int t = 0; t < NT; ++t) {
                    const uint8_t *tl = tt[t] + (kb << 8) + (u << 6); /* 256 B/block, pair 2u */
                    __m512i tv = BCASTZ(tl);
                    for (int p = 0; p < NP; ++p) bs[p][t] = _mm512_add_epi8(bs[p][t], _mm512_permutexvar_epi8(vl[p], tv));
                    tv = BCASTZ(tl + 16);
                    for (int p = 0; p < NP; ++p) as_[p][t] = _mm512_add_epi8(as_[p][t], _mm512_permutexvar_epi8(vl[p], tv));
                    tv = BCASTZ(tl + 32);
                    for (int p = 0; p < NP; ++p) bs[p][t] = _mm512_add_epi8(bs[p][t], _mm512_permutexvar_epi8(vh[p], tv));
                    tv = BCASTZ(tl + 48);
                    for (int p = 0; p < NP; ++p) as_[p][t] = _mm512_add_epi8(as_[p][t], _mm512_permutexvar_epi8(vh[p], tv));
                    for (int p = 0; p < NP; ++p) {
                        MF_KEEP_Z(bs[p][t]);
                        MF_KEEP_Z(as_[p][t]);
                    }
                }
            }
            /* 8 lookups per byte per block: widen every block */
            for (int p = 0; p < NP; ++p)
                for (int t = 0; t < NT; ++t) zpair_widen(e[p][t], as_[p][t], bs[p][t]);
        }
        for (int p = 0; p < NP; ++p)
            for (int t = 0; t < NT; ++t)
                zpair_flush(e[p][t], kend - k0, ar[2 * p] + (t ? as : 0), ar[2 * p + 1] + (t ? as : 0));
    }
}

/* TQ2_GROUP_VBMI row blocks as two pairs, every token: batch 1 in one tile of 2 pairs (4 weight
 * streams, prefetched), batches in tiles of 2 pairs x 2 tokens. */
MF_TARGET_VBMI static void tq2_kernn_vbmiz(const uint8_t *tab, int64_t ts, const mf_tq2_block *w,
                                           int64_t wstride, int64_t nkb, int32_t *acc, int64_t as,
                                           int64_t ntok) {
    const mf_tq2_block *wr[TQ2_GROUP_VBMI];
    int32_t *ar[TQ2_GROUP_VBMI];
    wr[0] = w;
    ar[0] = acc;
    for (int r = 1; r < TQ2_GROUP_VBMI; ++r) wr[r] = wr[r - 1] + wstride, ar[r] = ar[r - 1] + MF_TQ2_ROWS;
    if (ntok == 1) { /* batch 1 is memory-bound: the 256-bit kernel streams as fast (A/B) */
        tq2_tile_vbmi(tab, ts, wr, nkb, ar, as, TQ2_GROUP_VBMI, 1, 1);
        return;
    }
    int64_t t = 0;
    for (; t + 2 <= ntok; t += 2) {
        if (t == 0) /* the first tile reads the weights from memory: prefetch them */
            tq2_tile_vbmiz(tab, ts, wr, nkb, ar, as, 2, 2, 1);
        else
            tq2_tile_vbmiz(tab, ts, wr, nkb, ar, as, 2, 2, 0);
        tab += ts + ts;
        for (int r = 0; r < TQ2_GROUP_VBMI; ++r) ar[r] += as + as;
    }
    if (t < ntok) tq2_tile_vbmiz(tab, ts, wr, nkb, ar, as, 2, 1, 0);
}

/* One row block, every token (tiles of 4, then 2, then 1 token). */
MF_TARGET_AVX512 static void tq2_kern_avx512(const int8_t *q, int64_t qs, const uint8_t *tab,
                                             int64_t ts, const mf_tq2_block *w, int64_t nkb,
                                             int32_t *acc, int64_t as, int64_t ntok) {
    (void)q;
    (void)qs;
    int64_t t = 0;
    for (; t + 4 <= ntok; t += 4) {
        tq2_tile2d_avx512(tab, ts, w, w, nkb, acc, acc, as, 1, 4, 0);
        tab += ts + ts + ts + ts;
        acc += as + as + as + as;
    }
    if (ntok - t >= 2) {
        tq2_tile2d_avx512(tab, ts, w, w, nkb, acc, acc, as, 1, 2, 0);
        tab += ts + ts;
        acc += as + as;
        t += 2;
    }
    if (ntok - t == 1) tq2_tile2d_avx512(tab, ts, w, w, nkb, acc, acc, as, 1, 1, ntok == 1);
}

/* Two row blocks (w, w + wstride), every token: batch 1 shares each table vector between the
 * two (prefetching the weight streams); batches in tiles of 2 tokens x 2 row blocks. */
MF_TARGET_AVX512 static void tq2_kernn_avx512(const uint8_t *tab, int64_t ts, const mf_tq2_block *w,
                                              int64_t wstride, int64_t nkb, int32_t *acc,
                                              int64_t as, int64_t ntok) {
    const mf_tq2_block *w1 = w + wstride;
    int32_t *acc1 = acc + MF_TQ2_ROWS;
    if (ntok == 1) {
        tq2_tile2d_avx512(tab, ts, w, w1, nkb, acc, acc1, as, 2, 1, 1);
        return;
    }
    int64_t t = 0;
    for (; t + 2 <= ntok; t += 2) {
        tq2_tile2d_avx512(tab, ts, w, w1, nkb, acc, acc1, as, 2, 2, 0);
        tab += ts + ts;
        acc += as + as;
        acc1 += as + as;
    }
    if (t < ntok) tq2_tile2d_avx512(tab, ts, w, w1, nkb, acc, acc1, as, 2, 1, 0);
}
#endif /* MF_X86 */

/* ------------------------------------------------------------------------------------------
 * 5. "t81": four weights per byte as one base-3 number, for VBMI's 128-entry byte lookups.
 * tq2's bytes per (row, 4 inputs k0..k0+3, k0 = 16 kb + 4 u), but the byte is e = c0 + 3 c1 +
 * 9 c2 + 27 c3 (< 81, c = q + 1), not c0 | c1 << 2 | ..., and row blocks 2j, 2j + 1 share one
 * stream of 64-row blocks (mf_t81_pair, mf_common.h), so the index vector of a row-block pair
 * is one aligned 512-bit load: with two 256-bit loads and an insert per vector (tq2's block
 * order) batch 8 ran 1.08-1.17x slower (one thread, hot, interleaved, AMD Zen 4: 2048->2048
 * 231 vs 213 us, 5632->2048 759 vs 641, 1024->32000 2405 vs 2133; load 1.5). An odd last row
 * block keeps tq2's order (t81_kern_vbmi). A byte then indexes ONE 81-entry table per token
 * and 4 inputs: T[e] = sum_i s(c_i) x_i, s(c) = c - 1. vpermi2b picks from a 128-byte table held
 * in two zmm registers with a 7-bit index, so one instruction resolves 64 rows x 4 weights;
 * the pair tables of tq2 resolve 64 rows x 2 weights per vpermb (half the lookups per weight:
 * measured in isolation on AMD Zen 4, vpermi2b + vpaddb zmm 0.39 ns vs vpermb + vpaddb zmm
 * 0.33 ns, for twice the weights). The raw weight byte is the index: no nibble extraction.
 *
 * Exactness. The quantizer gives |q_x| <= 127 (q = rint(x * 127 / amax) with |x| <= amax and
 * fp32 rounding keeps |x * s| < 127.5; NaN gives 0), so |T| <= 4 * 127 = 508 and V = T + 512
 * lies in [4, 1020]: two byte planes tb = V & 31 (0..31) and ta = V >> 5 (0..31), V = 32 ta +
 * tb. A byte lane sums 8 lookups of <= 31 (248 <= 255) before widening; widened to int16 words
 * (<= 64 blocks * 4 lookups * 31 = 7936 per row) and to int32 every FLUSH_BLOCKS blocks; the
 * +512 per lookup, 4 lookups per block, is the same nblk << 11 that flush_rows subtracts for tq2.
 * Entries 81..127 are never indexed (the packers emit e < 81): 81..95 hold T = 0, 96..127 are
 * not written.
 * Tables built with adds and byte lookups, once per token per 4 inputs (t81_tables_vbmi).
 * Measured (bench_ternary_linear --quick, AMD EPYC Zen 4, one thread, cold, same run as tq2's
 * VBMI kernel, load 3.2 / 2.5, pair layout and 8-pair batch-1 tiles): batch 8 2048->2048 264 vs
 * 331 us, 2048->5632 632 vs 886, 5632->2048 691 vs 858, 1024->32000 1848 vs 2491; batch 1 81 vs
 * 82, 184 vs 182, 199 vs 173, 493 vs 549. Batch 8 / batch 1: 3.25-3.75x (tq2: 4.05-4.96x); over
 * tq2's batch 1 (the decode pick): 3.22x, 3.47x, 3.99x, 3.37x. Batch 1 at K = 5632 is 1.15-1.25x
 * slower than tq2 (A/B runs too): the K-sized tables (352 KB per token) are re-read from L2 per
 * group of 16 row blocks. What bounds batches: the lookups. Per vpermi2b (64 rows x 4 weights x
 * 1 token) a byte add, ~0.75 register copies (vpermi2b overwrites its index; GCC needs one per
 * reuse of a weight vector) and 0.375 widening ops; in isolation copy + vpermi2b + vpaddb take
 * 0.44 ns on this CPU, in the tile ~0.69 ns (marginal cost per lookup from K = 1024 to 2048,
 * tables excluded), and the tables ~14 % of a batch-8 call at N = 2048. Tried without gain:
 * software prefetch of the next blocks' tables (1.0-1.1x slower), k-chunked tables built just
 * before use (tables then L2-resident: same time, so the table build is not bound by its 1 MB
 * of writes), weights L1-resident sub-chunks (see T81_NP1).
 * ---------------------------------------------------------------------------------------- */
#define T81_TAB (4 * 256) /* table bytes per block per token: 4 groups x (tb[128] | ta[128]) */

/* Base-3 digits of e < 81 by repeated subtraction (the spec's decoder: no multiply, no divide). */
static inline void t81_digits(unsigned e, unsigned c[4]) {
    static const unsigned pow3[4] = {27, 9, 3, 1};
    for (int i = 3; i >= 0; --i) {
        c[i] = 0;
        while (e >= pow3[3 - i]) e -= pow3[3 - i], ++c[i];
    }
}

/* One t81 byte against its 4 int8 inputs x[0..3]: + x where the digit is 2 (weight +1), - x
 * where it is 0 (weight -1), nothing where it is 1 (the spec's arithmetic: adds only). */
static inline int32_t t81_byte_sum(unsigned e, const int8_t *x) {
    unsigned c[4];
    int32_t s = 0;
    t81_digits(e, c);
    for (int i = 0; i < 4; ++i) {
        if (c[i] == 2u)
            s += x[i];
        else if (c[i] == 0u)
            s -= x[i];
    }
    return s;
}

/* Scalar (the spec): decodes each byte into 4 codes and adds / subtracts the int8 inputs. */
static void t81_kern_scalar(const int8_t *q, int64_t qs, const uint8_t *tab, int64_t ts,
                            const mf_tq2_block *w, int64_t nkb, int32_t *acc, int64_t as,
                            int64_t ntok) {
    (void)tab;
    (void)ts;
    for (int64_t t = 0; t < ntok; ++t)
        for (int r = 0; r < MF_TQ2_ROWS; ++r) {
            int32_t s = 0;
            for (int64_t kb = 0; kb < nkb; ++kb)
                for (int u = 0; u < MF_TQ2_K / 4; ++u)
                    s += t81_byte_sum(w[kb].q[u][r], q + t * qs + kb * MF_TQ2_K + 4 * u);
            acc[t * as + r] += s;
        }
}

/* Scalar (the spec) on a pair stream (mf_t81_pair): row blocks 2j, 2j + 1 as 64-row blocks;
 * acc rows 0..63 (the two row blocks' accumulators are adjacent). */
static void t81_kernp_scalar(const int8_t *q, int64_t qs, const uint8_t *tab, int64_t ts,
                             const mf_tq2_block *w, int64_t nkb, int32_t *acc, int64_t as,
                             int64_t ntok) {
    (void)tab;
    (void)ts;
    const mf_t81_pair *wp = (const mf_t81_pair *)w;
    for (int64_t t = 0; t < ntok; ++t)
        for (int r = 0; r < 2 * MF_TQ2_ROWS; ++r) {
            int32_t s = 0;
            for (int64_t kb = 0; kb < nkb; ++kb)
                for (int u = 0; u < MF_TQ2_K / 4; ++u)
                    s += t81_byte_sum(wp[kb].q[u][r], q + t * qs + kb * MF_TQ2_K + 4 * u);
            acc[t * as + r] += s;
        }
}

#if MF_X86
/* Per token: group g = 4 kb + u of 4 inputs -> 256 bytes at tab + 256 g: tb[0..127] | ta[0..127].
 * T[e] = P[c0 + 3 c1] + Q[c2 + 3 c3] with the pair tables P = s(c0) x0 + s(c1) x1 and Q (9
 * entries each). P' = P + 256 and Q' = Q + 256 lie in [2, 510] (|x| <= 127), so V = T + 512 =
 * P' + Q' and, with P' = 32 ph + pl (pl < 32, ph < 16), V & 31 = (pl + ql) & 31 and V >> 5 =
 * ph + qh + ((pl + ql) >> 5): the 81 entries of both planes come from byte lookups (vpermb, 64
 * entries per instruction) into one vector holding pl, ph, ql, qh, plus adds and a carry. About
 * 40 vector ops per group, against ~60 for masked adds over all 81 int16 entries and their
 * narrowing (measured: 2048 -> 128, batch 8 (tables dominate), one thread, hot). */
MF_TARGET_VBMI static void t81_tables_vbmi(const int8_t *q, int64_t nkb, uint8_t *tab) {
    /* Word w < 9 of the pair vector holds P'[w], word 17 - w Q'[w], w = lo + 3 hi (lo: digit of
     * x0 / x2, hi: of x1 / x3); after packing, byte 2 w' = pl / ql, byte 2 w' + 1 = ph / qh
     * (w' = w or 17 - w). Q' reversed after P' puts every pair entry of the table's top part
     * (entries 64..80: P'[0..8], Q'[7..8]) in the vector's low 32 bytes, so that part is built
     * with 256-bit ops (entries 96..127 are not written; no byte indexes them). Masks and
     * lookup indices built once per call, by counting (e = wp + 9 wq, no divide). */
    __mmask32 lo2 = 0, lo0 = 0, hi2 = 0, hi0 = 0;
    for (unsigned w = 0, lo = 0, hi = 0; w < 9; ++w) {
        const __mmask32 bits = ((__mmask32)1u << w) | ((__mmask32)1u << (17 - w));
        if (lo == 2u) lo2 |= bits;
        if (lo == 0u) lo0 |= bits;
        if (hi == 2u) hi2 |= bits;
        if (hi == 0u) hi0 |= bits;
        if (++lo == 3u) lo = 0, ++hi;
    }
    uint8_t ip[128] __attribute__((aligned(64))), iq[128] __attribute__((aligned(64)));
    for (unsigned e = 0, wp = 0, wq = 0; e < 128; ++e) {
        /* e >= 81: T = 0 (P'[4] = Q'[4] = 256: all digits 1) */
        ip[e] = (uint8_t)(e < MF_T81_CODES ? wp + wp : 8u);
        iq[e] = (uint8_t)(e < MF_T81_CODES ? 34u - wq - wq : 26u);
        if (++wp == 9u) wp = 0, ++wq;
    }
    const __m512i ipl = _mm512_load_si512((const void *)ip), iql = _mm512_load_si512((const void *)iq);
    const __m512i one = _mm512_set1_epi8(1);
    const __m512i iph = _mm512_add_epi8(ipl, one), iqh = _mm512_add_epi8(iql, one);
    const __m256i ipl1 = _mm256_load_si256((const __m256i *)(ip + 64)), iql1 = _mm256_load_si256((const __m256i *)(iq + 64));
    const __m256i one8 = _mm256_set1_epi8(1);
    const __m256i iph1 = _mm256_add_epi8(ipl1, one8), iqh1 = _mm256_add_epi8(iql1, one8);
    const __m512i base = _mm512_set1_epi16(256), zero = _mm512_setzero_si512();
    const __m512i m31w = _mm512_set1_epi16(31), mhw = _mm512_set1_epi16(0x1F00);
    const __m512i m31b = _mm512_set1_epi8(31);
    const __m256i m31y = _mm256_set1_epi8(31);
    const __mmask32 qwords = 0x3FE00u; /* words 9..17: Q' */
    for (int64_t g = 0; g < nkb * (MF_TQ2_K / 4); ++g) {
        const int8_t *x = q + 4 * g;
        const __m512i x02 = _mm512_mask_blend_epi16(qwords, _mm512_set1_epi16(x[0]), _mm512_set1_epi16(x[2]));
        const __m512i x13 = _mm512_mask_blend_epi16(qwords, _mm512_set1_epi16(x[1]), _mm512_set1_epi16(x[3]));
        __m512i pq = _mm512_mask_add_epi16(base, lo2, base, x02);
        pq = _mm512_mask_add_epi16(pq, lo0, pq, _mm512_sub_epi16(zero, x02));
        pq = _mm512_mask_add_epi16(pq, hi2, pq, x13);
        pq = _mm512_mask_add_epi16(pq, hi0, pq, _mm512_sub_epi16(zero, x13));
        /* word P' -> bytes (P' & 31, P' >> 5): P' < 512, so (P' << 3) & 0x1F00 = (P' >> 5) << 8 */
        const __m512i lh = _mm512_or_si512(_mm512_and_si512(pq, m31w), _mm512_and_si512(_mm512_slli_epi16(pq, 3), mhw));
        uint8_t *tb = tab + 256 * g, *ta = tb + 128;
        /* entries 0..63 */
        const __m512i l = _mm512_add_epi8(_mm512_permutexvar_epi8(ipl, lh), _mm512_permutexvar_epi8(iql, lh));
        const __m512i h = _mm512_add_epi8(_mm512_permutexvar_epi8(iph, lh), _mm512_permutexvar_epi8(iqh, lh));
        /* l <= 62: bit 5 of each byte is the carry (a word shift moves it to bit 0) */
        _mm512_store_si512((void *)tb, _mm512_and_si512(l, m31b));
        _mm512_store_si512((void *)ta, _mm512_add_epi8(h, _mm512_and_si512(_mm512_srli_epi16(l, 5), one)));
        /* entries 64..95, from the low 32 bytes of lh */
        const __m256i lh1 = _mm512_castsi512_si256(lh);
        const __m256i l1 = _mm256_add_epi8(_mm256_permutexvar_epi8(ipl1, lh1), _mm256_permutexvar_epi8(iql1, lh1));
        const __m256i h1 = _mm256_add_epi8(_mm256_permutexvar_epi8(iph1, lh1), _mm256_permutexvar_epi8(iqh1, lh1));
        _mm256_store_si256((__m256i *)(tb + 64), _mm256_and_si256(l1, m31y));
        _mm256_store_si256((__m256i *)(ta + 64), _mm256_add_epi8(h1, _mm256_and_si256(_mm256_srli_epi16(l1, 5), one8)));
    }
}

/* vpermi2b with the index register as destination (a copy of the weight vector: the move is a
 * register rename): GCC's own choice, vpermt2b, overwrites a table register instead and then
 * reloads the table for every row-block pair (2 loads per lookup). On SIMDe (tests: emulated
 * vectors are not registers) the intrinsic. */
#if defined(SIMDE_VERSION) && !defined(T81_PERMI2B)
#define T81_PERMI2B(lo, idx, hi) _mm512_permutex2var_epi8(lo, idx, hi)
#endif
#ifndef T81_PERMI2B
MF_TARGET_VBMI static inline __attribute__((always_inline)) __m512i t81_permi2b(__m512i lo, __m512i idx,
                                                                               __m512i hi) {
    __asm__("vpermi2b %[hi], %[lo], %[idx]" : [idx] "+v"(idx) : [lo] "v"(lo), [hi] "v"(hi));
    return idx;
}
#define T81_PERMI2B(lo, idx, hi) t81_permi2b(lo, idx, hi)
#endif


/* NP pairs of row blocks (wr[2p] rows in the low 32 byte lanes, wr[2p + 1] in the high ones;
 * NP <= 4) x NT tokens (<= 2); PF: prefetch the weight streams (the first pass over them).
 * Loads per lookup: a table vector serves NP pairs, a weight vector NT tokens (at NP = 4, NT =
 * 2: 48 bytes per vpermi2b, from L1/L2). At NP = 4, NT = 2 the int16 sums (32 vectors) do not
 * fit the registers with the byte sums: GCC keeps some on the stack (read-modify-write once per
 * widening, every 8 lookups), which measured as fast as forcing them all there (tq2_tile2d_avx2's
 * barrier: 5-10 % slower here) and 1.1x faster than NP = 2 with every sum in registers
 * (2048->2048, batch 8, one thread, hot, dev machine); a vectorized flush_rows gained < 2 %.
 * The MF_KEEP_Z barriers on the byte sums (accumulate as the lookups come) are worth 1.2x here
 * (batch 8, one thread, hot: 2048->2048 228 vs 269-276 us, 5632->2048 616-620 vs 729-746). */
MF_TARGET_VBMI static inline __attribute__((always_inline)) void t81_tile_vbmi(
    const uint8_t *tab, int64_t ts, const uint8_t *const *wp, int64_t nkb,
    int32_t *const *ar, int64_t as, const int NP, const int NT, const int PF, const int SINGLE) {
    const uint8_t *tt[2] = {tab, tab + ts};
    __m512i e[8][2][4]; /* [row-block pair][token][a words, a odd, b words, b odd] int16 sums */
    int64_t kb = 0;
    while (kb < nkb) {
        const int64_t k0 = kb, kend = kb + FLUSH_BLOCKS < nkb ? kb + FLUSH_BLOCKS : nkb;
        for (int p = 0; p < NP; ++p)
            for (int t = 0; t < NT; ++t) e[p][t][0] = e[p][t][1] = e[p][t][2] = e[p][t][3] = _mm512_setzero_si512();
        while (kb < kend) {
            /* two blocks = 8 lookups per byte lane (<= 248) between widenings */
            const int64_t kstop = kb + 2 < kend ? kb + 2 : kend;
            __m512i bs[8][2], as_[8][2];
            for (int p = 0; p < NP; ++p)
                for (int t = 0; t < NT; ++t) bs[p][t] = as_[p][t] = _mm512_setzero_si512();
            for (; kb < kstop; ++kb) {
                if (PF)
                    for (int p = 0; p < NP; ++p)
                        for (int l = 0; l < (int)sizeof(mf_t81_pair); l += 64)
                            _mm_prefetch((const char *)wp[p] + (kb + TQ2_PF_BLOCKS) * (int64_t)sizeof(mf_t81_pair) + l,
                                         TQ2_PF_HINT);
                for (int u = 0; u < MF_TQ2_K / 4; ++u) {
                    __m512i vi[8];
                    for (int p = 0; p < NP; ++p)
                        vi[p] = SINGLE ? _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                             (const __m256i *)((const mf_tq2_block *)wp[p])[kb].q[u]))
                                       : _mm512_load_si512((const void *)((const mf_t81_pair *)wp[p])[kb].q[u]);
                    for (int t = 0; t < NT; ++t) {
                        const uint8_t *tl = tt[t] + (kb << 10) + (u << 8); /* 1 KB/block */
                        const __m512i b0 = _mm512_load_si512((const void *)tl);
                        const __m512i b1 = _mm512_load_si512((const void *)(tl + 64));
                        const __m512i a0 = _mm512_load_si512((const void *)(tl + 128));
                        const __m512i a1 = _mm512_load_si512((const void *)(tl + 192));
                        for (int p = 0; p < NP; ++p) {
                            bs[p][t] = _mm512_add_epi8(bs[p][t], T81_PERMI2B(b0, vi[p], b1));
                            as_[p][t] = _mm512_add_epi8(as_[p][t], T81_PERMI2B(a0, vi[p], a1));
                            MF_KEEP_Z(bs[p][t]);
                            MF_KEEP_Z(as_[p][t]);
                        }
                    }
                }
            }
            for (int p = 0; p < NP; ++p)
                for (int t = 0; t < NT; ++t) zpair_widen(e[p][t], as_[p][t], bs[p][t]);
        }
        for (int p = 0; p < NP; ++p)
            for (int t = 0; t < NT; ++t)
                zpair_flush(e[p][t], kend - k0, ar[2 * p] + (t ? as : 0), ar[2 * p + 1] + (t ? as : 0));
    }
}

/* Pairs per tile: T81_NP for batches, T81_NP1 (a multiple of T81_NP) at batch 1; a group is
 * T81_NP1 pairs. Batch 1 at 8 pairs (each table vector serves 8 lookups; the int16 sums partly on
 * the stack) vs 4: 0.90-0.95x the time at 2048->2048, 5632->2048, 2048->5632, 1024->32000 (one
 * thread, cold, interleaved, AMD Zen 4, load 2.7-2.9); batch 8 unchanged (same 4-pair tiles).
 * Tried and dropped: k-chunks at batch 1 (96 or 160 blocks, the tables L2-resident): no gain at
 * 5632->2048 (187-188 vs 193 us, noise-level); a batch loop with every token pair over 4-block
 * sub-chunks (weights from L1, int16 sums through memory): 1.15-1.2x slower at batch 8. */
#ifndef T81_NP
#define T81_NP 4
#endif
#ifndef T81_NP1
#define T81_NP1 8
#endif
#define T81_GROUP (2 * T81_NP1)
/* batch-N k-chunk of the t81 tables (1 KB per block per token, 4x tq2's): half of the 1 MiB L2
 * per core of AMD Zen 4. Batch 8, one thread, hot, interleaved builds on the dev machine (load
 * 3-6): 2048->2048 229-234 us at 512 KiB vs 238-241 at 256 KiB, 254-256 at 128 KiB, 236-239 at
 * 768 KiB, 240-316 at 1 MiB; 5632->2048 625-676 vs 651-652. */
#ifndef T81_L2_BYTES
#define T81_L2_BYTES (512 * 1024)
#endif

/* T81_NP pairs (pair stream p at w + 2 p wstride), every token: batch 1 in one tile (prefetched
 * weight streams), batches in tiles of T81_NP pairs x 2 tokens, the first tile prefetching. */
/* NP1 pairs (a multiple of T81_NP) at w + 2 p wstride, every token: batch 1 in one tile of NP1
 * pairs, batches in tiles of T81_NP pairs x 2 tokens (the first token pair prefetching). */
MF_TARGET_VBMI static inline __attribute__((always_inline)) void t81_pairs_vbmi(
    const uint8_t *tab, int64_t ts, const mf_tq2_block *w, int64_t wstride, int64_t nkb,
    int32_t *acc, int64_t as, int64_t ntok, const int NP1) {
    const uint8_t *wp[T81_NP1];
    int32_t *ar[T81_GROUP];
    for (int p = 0; p < NP1; ++p) wp[p] = (const uint8_t *)(w + 2 * p * wstride);
    for (int r = 0; r < 2 * NP1; ++r) ar[r] = acc + r * MF_TQ2_ROWS;
    if (ntok == 1) {
        t81_tile_vbmi(tab, ts, wp, nkb, ar, as, NP1, 1, 1, 0);
        return;
    }
    for (int h = 0; h < NP1; h += T81_NP) {
        const uint8_t *tb = tab;
        int32_t *ah[2 * T81_NP];
        for (int r = 0; r < 2 * T81_NP; ++r) ah[r] = ar[2 * h + r];
        int64_t t = 0;
        for (; t + 2 <= ntok; t += 2) {
            if (t == 0)
                t81_tile_vbmi(tb, ts, wp + h, nkb, ah, as, T81_NP, 2, 1, 0);
            else
                t81_tile_vbmi(tb, ts, wp + h, nkb, ah, as, T81_NP, 2, 0, 0);
            tb += ts + ts;
            for (int r = 0; r < 2 * T81_NP; ++r) ah[r] += as + as;
        }
        if (t < ntok) t81_tile_vbmi(tb, ts, wp + h, nkb, ah, as, T81_NP, 1, 0, 0);
    }
}

/* A group: T81_NP1 pairs. */
MF_TARGET_VBMI static void t81_kernn_vbmi(const uint8_t *tab, int64_t ts, const mf_tq2_block *w,
                                          int64_t wstride, int64_t nkb, int32_t *acc, int64_t as,
                                          int64_t ntok) {
    t81_pairs_vbmi(tab, ts, w, wstride, nkb, acc, as, ntok, T81_NP1);
}

/* A group's remainder, T81_NP pairs at a time (4-pair tiles at every batch size). */
MF_TARGET_VBMI static void t81_kernn4_vbmi(const uint8_t *tab, int64_t ts, const mf_tq2_block *w,
                                           int64_t wstride, int64_t nkb, int32_t *acc, int64_t as,
                                           int64_t ntok) {
    t81_pairs_vbmi(tab, ts, w, wstride, nkb, acc, as, ntok, T81_NP);
}

/* One pair (a group's remainder), every token, one token per tile. */
MF_TARGET_VBMI static void t81_kernp_vbmi(const int8_t *q, int64_t qs, const uint8_t *tab,
                                          int64_t ts, const mf_tq2_block *w, int64_t nkb,
                                          int32_t *acc, int64_t as, int64_t ntok) {
    (void)q;
    (void)qs;
    const uint8_t *wp[1] = {(const uint8_t *)w};
    for (int64_t t = 0; t < ntok; ++t) {
        int32_t *ar[2] = {acc, acc + MF_TQ2_ROWS};
        t81_tile_vbmi(tab, ts, wp, nkb, ar, as, 1, 1, 0, 0);
        tab += ts;
        acc += as;
    }
}

/* The odd last row block (tq2 block order): the block in both halves of the vector, the high
 * half's sums discarded. */
MF_TARGET_VBMI static void t81_kern_vbmi(const int8_t *q, int64_t qs, const uint8_t *tab,
                                         int64_t ts, const mf_tq2_block *w, int64_t nkb,
                                         int32_t *acc, int64_t as, int64_t ntok) {
    (void)q;
    (void)qs;
    int32_t discard[MF_TQ2_ROWS];
    const uint8_t *wp[1] = {(const uint8_t *)w};
    for (int64_t t = 0; t < ntok; ++t) {
        int32_t *ar[2] = {acc, discard};
        /* NT = 1: the token stride only offsets token 1, unused */
        t81_tile_vbmi(tab, ts, wp, nkb, ar, as, 1, 1, 0, 1);
        tab += ts;
        acc += as;
    }
}
#endif /* MF_X86 */

/* ------------------------------------------------------------------------------------------
 * The one dispatch point of this kernel family.
 * ---------------------------------------------------------------------------------------- */
typedef void (*quant_fn)(const float *, int64_t, int64_t, int8_t *, float *);
typedef void (*tables_fn)(const int8_t *, int64_t, uint8_t *);
typedef void (*kern_fn)(const int8_t *, int64_t, const uint8_t *, int64_t, const mf_tq2_block *,
                        int64_t, int32_t *, int64_t, int64_t);
/* kernn(tab, ts, w, wstride, nkb, acc, as, ntok): `group` row blocks at once (w + i wstride,
 * acc + 32 i), every token */
typedef void (*kernn_fn)(const uint8_t *, int64_t, const mf_tq2_block *, int64_t, int64_t,
                         int32_t *, int64_t, int64_t);
typedef struct {
    quant_fn quant;
    tables_fn tables;       /* NULL: the kernel reads q directly */
    kern_fn kern;
    kernn_fn kernn;         /* `group` row blocks per call (NULL: kern per row block) */
    kern_fn kern_pair;      /* paired layouts (t81): one pair of row blocks per call; kern then
                             * serves only an odd last row block. NULL: tq2 order */
    kernn_fn kernn2;        /* a group's remainder: group2 row blocks per call (NULL: none) */
    int group2;
    int group;
    int64_t tab_per_block;  /* table bytes per 16-input block per token */
} tq2_impl;

/* vbmi: the CPU has AVX-512 VBMI (mf_cpu_vbmi(); a parameter so tests can pick either path). */
static tq2_impl tq2_select(int isa, int vbmi) {
    const tq2_impl scalar = {act_quant_scalar, NULL, tq2_kern_scalar, NULL, NULL, NULL, 0, 1, 0};
#if MF_X86
    if (isa >= MF_ISA_AVX512 && vbmi)
        return (tq2_impl){act_quant_avx2, tq2_tables_avx2, tq2_kern_vbmi, tq2_kernn_vbmiz, NULL, NULL, 0, TQ2_GROUP_VBMI, TQ2_TAB_AVX2};
    if (isa >= MF_ISA_AVX512)
        return (tq2_impl){act_quant_avx2, tq2_tables_avx512, tq2_kern_avx512, tq2_kernn_avx512, NULL, NULL, 0, 2, TQ2_TAB_AVX512};
    if (isa >= MF_ISA_AVX2)
        return (tq2_impl){act_quant_avx2, tq2_tables_avx2, tq2_kern_avx2, tq2_kernn_avx2, NULL, NULL, 0, 2, TQ2_TAB_AVX2};
#endif
    (void)isa;
    (void)vbmi;
    return scalar;
}

/* t81 weights: the VBMI kernel where the CPU has VBMI at the AVX-512 level, else the scalar spec
 * (the dispatcher lays weights out as t81 only where VBMI runs; elsewhere they stay tq2). */
static tq2_impl t81_select(int isa, int vbmi) {
#if MF_X86
    if (isa >= MF_ISA_AVX512 && vbmi)
        return (tq2_impl){act_quant_avx2, t81_tables_vbmi, t81_kern_vbmi, t81_kernn_vbmi, t81_kernp_vbmi, t81_kernn4_vbmi, 2 * T81_NP, T81_GROUP, T81_TAB};
    if (isa >= MF_ISA_AVX2)
        return (tq2_impl){act_quant_avx2, NULL, t81_kern_scalar, NULL, t81_kernp_scalar, NULL, 0, 1, 0};
#endif
    (void)isa;
    (void)vbmi;
    return (tq2_impl){act_quant_scalar, NULL, t81_kern_scalar, NULL, t81_kernp_scalar, NULL, 0, 1, 0};
}

/* The level whose kernel runs t81 weights: AVX-512 with VBMI, else scalar. */
static int t81_level(int isa, int vbmi) { return isa >= MF_ISA_AVX512 && vbmi ? MF_ISA_AVX512 : MF_ISA_SCALAR; }

/* ------------------------------------------------------------------------------------------
 * Driver. x [M][K] fp32, w tq2 blocks of an [N][K] weight, y [M][N] fp32; acc_out [M][N]
 * int32 (optional, for tests). row_scales [N] (optional) replaces w_scale per output row, so
 * weights sharing an input (q/k/v, gate/up) can run fused as one packed [sum N_i][K] weight.
 * Returns the ISA level used, or -1 if scratch allocation failed.
 * ---------------------------------------------------------------------------------------- */
/* Busy cores. When a multi-threaded run's master waited for the other threads longer than it
 * worked (mf_stalled: a worker was descheduled, the cores are shared with other busy
 * processes), the multi-threaded calls of the next TQ2_BACKOFF_NS run on one thread, then two
 * threads are tried again; the back-off doubles (up to TQ2_BACKOFF_MAX_NS) each time the cores
 * are still busy (a stall within one back-off length of the last back-off's end), and starts
 * over at the base after a longer quiet stretch.
 * Why doubling: with a fixed back-off, a machine that stays busy (load 3 on 2 cores) stalled on
 * every retry, ~2 steps apart, and 2 threads decoded 370M 1.7x slower than 1 thread. Why time,
 * not calls: the back-off was 256 calls (about one 370M decode step, ~5 ms), but a 64-token
 * prefill call takes milliseconds, so one hiccup put a second or more of prefill on one thread.
 * 10 ms is a few decode steps; a quiet machine never triggers it. Results do not depend on the
 * thread count (each row's sum has one order). The plan runner (csrc/mf_plan.c) notes a whole
 * step's run at once. */
#define TQ2_BACKOFF_NS 10000000LL
#define TQ2_BACKOFF_MAX_NS (TQ2_BACKOFF_NS * 64)
static _Atomic int64_t tq2_backoff_until;                 /* one thread until then (mf_now_ns) */
static _Atomic int64_t tq2_backoff_len = TQ2_BACKOFF_NS; /* the last back-off's length */

int64_t mf_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t mf_backoff_left(void) {
    const int64_t left = atomic_load_explicit(&tq2_backoff_until, memory_order_relaxed) - mf_now_ns();
    return left > 0 ? left : 0;
}

int mf_backoff_active(void) { return mf_backoff_left() > 0; }

void mf_backoff_note(int stalled) {
    if (!stalled) return;
    const int64_t now = mf_now_ns();
    const int64_t last_end = atomic_load_explicit(&tq2_backoff_until, memory_order_relaxed);
    int64_t len = atomic_load_explicit(&tq2_backoff_len, memory_order_relaxed);
    len = now - last_end < len ? (len * 2 < TQ2_BACKOFF_MAX_NS ? len * 2 : TQ2_BACKOFF_MAX_NS) : TQ2_BACKOFF_NS;
    atomic_store_explicit(&tq2_backoff_len, len, memory_order_relaxed);
    atomic_store_explicit(&tq2_backoff_until, now + len, memory_order_relaxed);
}

void mf_backoff_note_run(int64_t t_start, int64_t t_master_done, int64_t waited) {
    const int64_t join = mf_now_ns() - t_master_done;
    mf_backoff_note(mf_stalled(waited + join, t_master_done - t_start - waited));
}

/* ------------------------------------------------------------------------------------------
 * Teams (mf_common.h): the walk's waits and counters, shared by the per-call driver below and
 * the plan runner (csrc/mf_plan.c).
 * ---------------------------------------------------------------------------------------- */
/* How long a waiting thread spins before it sleeps (futex on Linux; elsewhere it yields). A
 * quiet machine's waits are a few us (a serial stage, the tail of a kernel call's items), so
 * the spin covers them; on a busy machine a spinning waiter would take the core the thread it
 * waits for needs, hence the bound. Chosen by measurement (docs/engine.md, "Threads"). */
#ifndef MF_TEAM_SPIN_NS
#define MF_TEAM_SPIN_NS 50000
#endif
static _Atomic int64_t team_spin_ns = MF_TEAM_SPIN_NS;

int64_t mf_team_spin_ns(int64_t ns) {
    const int64_t was = atomic_load(&team_spin_ns);
    if (ns >= 0) atomic_store(&team_spin_ns, ns);
    return was;
}

static inline void cpu_relax(void) {
#if MF_X86
    __builtin_ia32_pause();
#endif
}

static void team_sleep(mf_team *t, int64_t target) {
    atomic_fetch_add(&t->sleepers, 1);
    const uint32_t seq = atomic_load(&t->seq);
    if (atomic_load(&t->done) < target && atomic_load_explicit(&t->err, memory_order_relaxed) == 0) {
#ifdef __linux__
        /* a timeout as a safety net only: every finish while someone sleeps bumps seq and wakes */
        const struct timespec ts = {0, 2000000};
        syscall(SYS_futex, (uint32_t *)&t->seq, FUTEX_WAIT_PRIVATE, seq, &ts, NULL, 0);
#else
        (void)seq;
        sched_yield();
#endif
    }
    atomic_fetch_sub(&t->sleepers, 1);
}

/* Until every item before ticket `target` is done. The master adds its wait to w->waited (the
 * run's stall test, mf_stalled). */
static void team_wait(mf_walk *w, int64_t target) {
    mf_team *t = w->team;
    if (atomic_load_explicit(&t->done, memory_order_acquire) >= target) return;
    const int64_t t0 = mf_now_ns();
    for (int64_t now = t0;;) {
        for (int r = 0; r < 64; ++r) {
            if (atomic_load_explicit(&t->done, memory_order_acquire) >= target ||
                atomic_load_explicit(&t->err, memory_order_relaxed) != 0)
                goto out;
            cpu_relax();
        }
        now = mf_now_ns();
        if (now - t0 > atomic_load_explicit(&team_spin_ns, memory_order_relaxed)) team_sleep(t, target);
    }
out:
    if (w->tid == 0) w->waited += mf_now_ns() - t0;
}

int64_t mf_walk_next(mf_walk *w, int64_t n_items) {
    mf_team *t = w->team;
    if (atomic_load_explicit(&t->err, memory_order_relaxed) != 0) return -1;
    if (w->ticket < 0) w->ticket = atomic_fetch_add_explicit(&t->claimed, 1, memory_order_relaxed);
    if (w->ticket >= w->base + n_items) { /* the phase has no item left for this thread */
        w->base += n_items;
        return -1;
    }
    if (w->nt > 1) team_wait(w, w->base);
    if (atomic_load_explicit(&t->err, memory_order_relaxed) != 0) return -1;
    const int64_t i = w->ticket - w->base;
    w->ticket = -1;
    return i;
}

void mf_walk_done(mf_walk *w) {
    mf_team *t = w->team;
    /* seq_cst with the sleeper count: a waiter registers, then re-checks done; a finisher adds
     * to done, then checks for sleepers; one of the two sees the other */
    atomic_fetch_add(&t->done, 1);
    if (w->nt > 1 && atomic_load(&t->sleepers) > 0) {
        atomic_fetch_add(&t->seq, 1);
#ifdef __linux__
        syscall(SYS_futex, (uint32_t *)&t->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
    }
}

/* Work items of the decode path: this many row-block groups (impl.group row blocks each), but
 * at most TQ2_ITEM_BLOCKS row blocks (t81's groups of 16: one group). Small enough that a
 * descheduled thread holds up little (2048 rows: 8 items at group 4), large enough that handing
 * them out (one atomic add each) costs nothing measurable. */
#define TQ2_ITEM_GROUPS 2
#define TQ2_ITEM_BLOCKS 16

typedef struct {
    const tq2_impl *impl;
    const float *x;
    const mf_tq2_block *w;
    float *y;
    int32_t *acc, *acc_out;
    const float *row_scales;
    const int8_t *qx;
    const float *sx;
    const uint8_t *tab;
    float w_scale;
    int64_t M, K, KB, Kp, N, Np, tab_tok, kcb;
} tq2_args;

/* Row blocks [nb0, nb1) of every token: zero the accumulators, run the kernels over every
 * k-chunk, then the one float rescale per output (the same fp32 ops as the torch reference). */
static void tq2_rows(const tq2_args *a, int64_t nb0, int64_t nb1) {
    const tq2_impl *impl = a->impl;
    const int64_t M = a->M, KB = a->KB, Np = a->Np, N = a->N;
    for (int64_t m = 0; m < M; ++m)
        memset(a->acc + m * Np + nb0 * MF_TQ2_ROWS, 0, (size_t)((nb1 - nb0) * MF_TQ2_ROWS) * 4);
    for (int64_t kb0 = 0; kb0 < KB; kb0 += a->kcb) {
        const int64_t nkb = KB - kb0 < a->kcb ? KB - kb0 : a->kcb;
        const uint8_t *tab = a->tab + kb0 * impl->tab_per_block;
        /* the k-chunk's first block in a row block's stream; a pair stream has 2 blocks per kb */
        const int64_t wk = impl->kern_pair != NULL ? 2 * kb0 : kb0;
        int64_t nb = nb0;
        if (impl->kernn != NULL)
            for (; nb + impl->group <= nb1; nb += impl->group)
                impl->kernn(tab, a->tab_tok, a->w + nb * KB + wk, KB, nkb,
                            a->acc + nb * MF_TQ2_ROWS, Np, M);
        if (impl->kernn2 != NULL)
            for (; nb + impl->group2 <= nb1; nb += impl->group2)
                impl->kernn2(tab, a->tab_tok, a->w + nb * KB + wk, KB, nkb,
                             a->acc + nb * MF_TQ2_ROWS, Np, M);
        if (impl->kern_pair != NULL) /* nb is even here (the items split at pairs) */
            for (; nb + 2 <= nb1; nb += 2)
                impl->kern_pair(a->qx + kb0 * MF_TQ2_K, a->Kp, tab, a->tab_tok, a->w + nb * KB + wk,
                                nkb, a->acc + nb * MF_TQ2_ROWS, Np, M);
        for (; nb < nb1; ++nb)
            impl->kern(a->qx + kb0 * MF_TQ2_K, a->Kp, tab, a->tab_tok, a->w + nb * KB + kb0, nkb,
                       a->acc + nb * MF_TQ2_ROWS, Np, M);
    }
    const int64_t n0 = nb0 * MF_TQ2_ROWS, n1 = nb1 * MF_TQ2_ROWS < N ? nb1 * MF_TQ2_ROWS : N;
    for (int64_t m = 0; m < M; ++m) {
        const int32_t *acc = a->acc + m * Np;
        float *y = a->y + m * N;
        if (a->row_scales == NULL) {
            const float den = a->sx[m] * a->w_scale;
            for (int64_t n = n0; n < n1; ++n) y[n] = (float)acc[n] / den;
        } else { /* rows of several fused weights, each with its own tensor scale */
            for (int64_t n = n0; n < n1; ++n) y[n] = (float)acc[n] / (a->sx[m] * a->row_scales[n]);
        }
        if (a->acc_out != NULL)
            for (int64_t n = n0; n < n1; ++n) a->acc_out[m * N + n] = acc[n];
    }
}

/* One call (both formats: tq2, t81, the same block geometry), as every thread of its team sees
 * it; `impl` holds the variant's functions. nt: the team's size (it decides whether each thread
 * quantizes and builds the tables itself, see tern_pass). */
typedef struct {
    tq2_impl impl;
    const float *x;
    const mf_tq2_block *w;
    float *y;
    int32_t *acc_out;
    const float *row_scales;
    float w_scale;
    int64_t M, K, N, KB, Kp, NB, Np, tab_tok;
    int nt;
} tern_call;

static tern_call tern_call_of(const float *x, int64_t M, int64_t K, const mf_tq2_block *w,
                              int64_t N, float w_scale, const float *row_scales, float *y,
                              int32_t *acc_out, int nt, const tq2_impl impl) {
    tern_call c = {impl, x, w, y, acc_out, row_scales, w_scale, M, K, N, 0, 0, 0, 0, 0, nt};
    c.KB = mf_round_up(K, MF_TQ2_K) / MF_TQ2_K;
    c.Kp = c.KB * MF_TQ2_K;
    c.NB = mf_round_up(N, MF_TQ2_ROWS) / MF_TQ2_ROWS;
    c.Np = c.NB * MF_TQ2_ROWS;
    c.tab_tok = impl.tab_per_block * c.KB;
    return c;
}

/* Scratch of a pass over mc tokens: per copy (q, scales, tables) and the accumulators. With
 * fewer tokens than threads (decode) every thread quantizes and builds the tables itself, into
 * its own copy (a few us), instead of splitting that work behind a wait. Tried: one thread
 * quantizing, then the team building the tables in chunks into one shared copy (calls of >= 16,
 * 32, 64 or 128 input blocks); decode on 2 threads took 1.03-1.48x the time (370M, 1.3B,
 * interleaved in one process, AMD EPYC Zen 4): the two extra phase waits cost more than the
 * halved table build (t81 at K = 1024: 2.6 us of a 9 us hot 1024->1024 call, one thread). */
typedef struct {
    size_t q_bytes, s_bytes, copy_bytes, total;
    int priv;
} tern_layout;

static tern_layout tern_layout_of(const tern_call *c, int64_t mc) {
    tern_layout l;
    l.priv = mc < c->nt;
    l.q_bytes = mf_align_up((size_t)(mc * c->Kp));
    l.s_bytes = mf_align_up((size_t)mc * 4);
    l.copy_bytes = l.q_bytes + l.s_bytes + mf_align_up((size_t)(mc * c->tab_tok));
    l.total = l.copy_bytes * (size_t)(l.priv ? c->nt : 1) + mf_align_up((size_t)(mc * c->Np) * 4);
    return l;
}

static size_t tern_scratch_bytes(const tern_call *c) {
    const int64_t first = c->M < TOKENS_PER_PASS ? c->M : TOKENS_PER_PASS;
    const int64_t last = c->M % TOKENS_PER_PASS == 0 ? first : c->M % TOKENS_PER_PASS;
    const size_t a = tern_layout_of(c, first).total, b = tern_layout_of(c, last).total;
    return a > b ? a : b;
}

/* Token m of x: int8 codes and scale, then its tables (when the variant has them). */
static inline void tern_prep(const tern_call *c, const float *x, int64_t m, int8_t *qx, float *sx,
                             uint8_t *tab) {
    c->impl.quant(x + m * c->K, c->K, c->Kp, qx + m * c->Kp, &sx[m]);
    if (c->impl.tables != NULL) c->impl.tables(qx + m * c->Kp, c->KB, tab + m * c->tab_tok);
}

/* Tokens [m0, m0 + mc) of a call (mc <= TOKENS_PER_PASS; longer prefill runs several passes:
 * bounded scratch, the weights re-read per pass), as this thread's part of the team's phases:
 *   decode (mc < nt): one phase, work items of a few row-block groups handed out dynamically;
 *     a thread quantizes and builds the tables into its own copy before its first item;
 *   batches: a phase of one item per token (quantize, tables: shared), then the row items.
 * One k-chunk (decode, small batches): items of a few row-block groups, so a thread the OS
 * deschedules on a busy machine delays only the item it holds. Several k-chunks (prefill keeps
 * the tables of all its tokens in L2): one item per thread's share of row blocks (its
 * accumulators carry across the chunks). */
static void tern_pass(const tern_call *c, int64_t m0, int64_t mc, uint8_t *scratch, mf_walk *wk) {
    const tq2_impl *impl = &c->impl;
    const tern_layout l = tern_layout_of(c, mc);
    const float *x = c->x + m0 * c->K;
    uint8_t *mine = scratch + (l.priv ? l.copy_bytes * (size_t)wk->tid : 0);
    int8_t *qx = (int8_t *)mine;
    float *sx = (float *)(mine + l.q_bytes);
    uint8_t *tab = mine + l.q_bytes + l.s_bytes;
    int32_t *acc = (int32_t *)(scratch + l.copy_bytes * (size_t)(l.priv ? c->nt : 1));
    /* k-chunk: decode keeps the whole k range (weights streamed strictly in order); prefill
     * limits the chunk so the tables of all mc tokens stay in L2 while each 32-row slab of
     * weights (<= a few KB) is reused from L1 by every token. */
    int64_t kcb = c->KB;
    if (mc > 1 && impl->tab_per_block > 0) {
        kcb = (impl->tab_per_block == T81_TAB ? T81_L2_BYTES : TAB_L2_BYTES) / (mc * impl->tab_per_block);
        kcb = kcb < 4 ? 4 : (kcb > c->KB ? c->KB : kcb);
    }
    const tq2_args ta = {impl, x, c->w, c->y + m0 * c->N, acc,
                         c->acc_out != NULL ? c->acc_out + m0 * c->N : NULL, c->row_scales, qx,
                         sx, tab, c->w_scale, mc, c->K, c->KB, c->Kp, c->N, c->Np, c->tab_tok, kcb};
    int64_t i;
    if (!l.priv)
        while ((i = mf_walk_next(wk, mc)) >= 0) {
            tern_prep(c, x, i, qx, sx, tab);
            mf_walk_done(wk);
        }
    const int64_t NB = c->NB;
    int built = !l.priv;
    const int64_t item = impl->group * TQ2_ITEM_GROUPS <= TQ2_ITEM_BLOCKS ? impl->group * TQ2_ITEM_GROUPS : impl->group;
    /* paired layouts: every share starts at a pair (its first row block even) */
    const int64_t even = impl->kern_pair != NULL ? ~(int64_t)1 : ~(int64_t)0, T = c->nt;
    const int64_t n_items = kcb == c->KB ? (NB + item - 1) / item : T;
    while ((i = mf_walk_next(wk, n_items)) >= 0) {
        if (!built) {
            for (int64_t m = 0; m < mc; ++m) tern_prep(c, x, m, qx, sx, tab);
            built = 1;
        }
        if (kcb == c->KB)
            tq2_rows(&ta, i * item, (i + 1) * item < NB ? (i + 1) * item : NB);
        else
            tq2_rows(&ta, (NB * i / T) & even, i + 1 == T ? NB : (NB * (i + 1) / T) & even);
        mf_walk_done(wk);
    }
}

static void tern_team(const tern_call *c, uint8_t *scratch, mf_walk *wk) {
    for (int64_t m0 = 0; m0 < c->M; m0 += TOKENS_PER_PASS)
        tern_pass(c, m0, c->M - m0 < TOKENS_PER_PASS ? c->M - m0 : TOKENS_PER_PASS, scratch, wk);
}

/* The per-call driver: a team of its own in one OpenMP region. Returns `isa`, or -1 if scratch
 * allocation failed. */
static int tern_linear_impl(const float *x, int64_t M, int64_t K, const mf_tq2_block *w,
                            int64_t N, float w_scale, const float *row_scales, float *y,
                            int32_t *acc_out, int64_t threads, int isa, const tq2_impl impl) {
    const int64_t t_start = mf_now_ns();
    const int64_t NB = mf_round_up(N, MF_TQ2_ROWS) / MF_TQ2_ROWS;
    int nt = mf_threads(threads);
    if (nt > NB) nt = (int)NB;
    if (nt < 1) nt = 1;
    if (nt > 1 && mf_backoff_active()) nt = 1; /* a recent run found the cores busy */
    const tern_call c = tern_call_of(x, M, K, w, N, w_scale, row_scales, y, acc_out, nt, impl);
    uint8_t *scratch = mf_scratch(tern_scratch_bytes(&c));
    if (scratch == NULL) return -1;
    mf_team team = {0};
    if (nt == 1) {
        mf_walk wk = mf_walk_solo(&team);
        tern_team(&c, scratch, &wk);
        return isa;
    }
    int64_t t_master_done = 0, waited = 0;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        mf_walk wk = {&team, tid, nt, 0, -1, 0, 0};
        tern_team(&c, scratch, &wk);
        if (tid == 0) {
            t_master_done = mf_now_ns();
            waited = wk.waited;
        }
    }
    /* The master waited this long at the join (or for an item) for the other threads: on cores
     * shared with other busy processes a worker can lose its core for a whole scheduler slice
     * (ms). Then run the next calls on one thread rather than stall on every one. */
    mf_backoff_note_run(t_start, t_master_done, waited);
    return isa;
}

/* A call at a given level with VBMI on or off: the seam of the SIMDe harnesses
 * (tests/kernels/avx512_emulated_harness.c, t81_emulated_harness.c), which force VBMI where the CPU lacks it. */
static int tq2_linear_impl(const float *x, int64_t M, int64_t K, const mf_tq2_block *w,
                           int64_t N, float w_scale, const float *row_scales, float *y,
                           int32_t *acc_out, int64_t threads, int isa, int vbmi) {
    return tern_linear_impl(x, M, K, w, N, w_scale, row_scales, y, acc_out, threads, isa,
                            tq2_select(isa, vbmi));
}

static int t81_linear_impl(const float *x, int64_t M, int64_t K, const mf_tq2_block *w,
                           int64_t N, float w_scale, const float *row_scales, float *y,
                           int32_t *acc_out, int64_t threads, int isa, int vbmi) {
    return tern_linear_impl(x, M, K, w, N, w_scale, row_scales, y, acc_out, threads,
                            t81_level(isa, vbmi), t81_select(isa, vbmi));
}

/* VBMI kernels run at the AVX-512 level where the CPU has them. */
static int vbmi_at(int isa) { return isa >= MF_ISA_AVX512 && mf_cpu_vbmi(); }

/* The variant a plan's team runs (its functions) and, in *isa, the level it belongs to: the
 * choice tq2_linear_impl / t81_linear_impl make. */
static tq2_impl tq2_variant(int isa_req, int *isa) {
    *isa = mf_isa_resolve(isa_req);
    return tq2_select(*isa, vbmi_at(*isa));
}

static tq2_impl t81_variant(int isa_req, int *isa) {
    const int req = mf_isa_resolve(isa_req), vbmi = vbmi_at(req);
    *isa = t81_level(req, vbmi);
    return t81_select(req, vbmi);
}

typedef int (*tern_impl_fn)(const float *, int64_t, int64_t, const mf_tq2_block *, int64_t, float,
                            const float *, float *, int32_t *, int64_t, int, int);

/* An op's slots ("pllpldpppll") as one call of the per-call driver. */
static int tern_op(const int64_t *a, tern_impl_fn run) {
    const int isa = mf_isa_resolve((int)a[10]);
    const int rc = run(mf_slot_ptr(a[0]), a[1], a[2], mf_slot_ptr(a[3]), a[4],
                       (float)mf_slot_f64(a[5]), mf_slot_ptr(a[6]), mf_slot_ptr(a[7]),
                       mf_slot_ptr(a[8]), a[9], isa, vbmi_at(isa));
    return rc < 0 ? MF_OP_NOMEM : rc;
}

static int act_quant(const float *x, int64_t M, int64_t K, int8_t *q, float *s, int isa_req) {
    const int isa = mf_isa_resolve(isa_req);
    const tq2_impl impl = tq2_select(isa, 0); /* the quantizer is the same in every variant */
    for (int64_t m = 0; m < M; ++m) impl.quant(x + m * K, K, K, q + m * K, &s[m]);
    return isa;
}

int mf_op_tq2_linear(const int64_t *a) { return tern_op(a, tq2_linear_impl); }

MF_PYFUNC(tq2_linear,
          "tq2_linear(x, M, K, w, N, w_scale, row_scales_or_0, y, acc_or_0, threads, isa) -> isa.") {
    MF_OP_ENTRY(tq2_linear, 11, "pllpldpppll");
}

MF_PYFUNC(act_quant_i8, "act_quant_i8(x, M, K, q, s, isa) -> isa used: int8 absmax per row.") {
    (void)self;
    void *x, *q, *s;
    int64_t M, K, isa;
    if (mf_parse_args(args, nargs, "pllppl", &x, &M, &K, &q, &s, &isa) < 0) return NULL;
    return PyLong_FromLong(act_quant(x, M, K, q, s, (int)isa));
}

int mf_op_t81_linear(const int64_t *a) { return tern_op(a, t81_linear_impl); }

/* The plan runner's team versions of the two ops (csrc/mf_plan.c): the same call split in the
 * team's items; a call asking for one thread (a small weight: plan.threads_for) is one item. */
int mf_op_threads_linear(const int64_t *a) {
    const int64_t NB = mf_round_up(a[4], MF_TQ2_ROWS) / MF_TQ2_ROWS;
    const int nt = mf_threads(a[9]);
    return nt > NB ? (int)NB : nt;
}

static tern_call team_call(const int64_t *a, int nt, const tq2_impl impl) {
    return tern_call_of(mf_slot_ptr(a[0]), a[1], a[2], mf_slot_ptr(a[3]), a[4],
                        (float)mf_slot_f64(a[5]), mf_slot_ptr(a[6]), mf_slot_ptr(a[7]),
                        mf_slot_ptr(a[8]), mf_op_threads_linear(a) <= 1 ? 1 : nt, impl);
}

static int team_linear(const int64_t *a, mf_walk *w, void *scratch, const tq2_impl impl, int isa) {
    const tern_call c = team_call(a, w->nt, impl);
    if (c.nt > 1) {
        tern_team(&c, scratch, w);
        return isa;
    }
    while (mf_walk_next(w, 1) >= 0) { /* one item: the whole call on one thread */
        mf_team solo = {0};
        mf_walk s = mf_walk_solo(&solo);
        tern_team(&c, scratch, &s);
        mf_walk_done(w);
    }
    return isa;
}

int mf_team_tq2_linear(const int64_t *a, mf_walk *w, void *scratch) {
    int isa;
    const tq2_impl impl = tq2_variant((int)a[10], &isa);
    return team_linear(a, w, scratch, impl, isa);
}

int mf_team_t81_linear(const int64_t *a, mf_walk *w, void *scratch) {
    int isa;
    const tq2_impl impl = t81_variant((int)a[10], &isa);
    return team_linear(a, w, scratch, impl, isa);
}

size_t mf_team_bytes_tq2_linear(const int64_t *a, int nt) {
    int isa;
    const tern_call c = team_call(a, nt, tq2_variant((int)a[10], &isa));
    return tern_scratch_bytes(&c);
}

size_t mf_team_bytes_t81_linear(const int64_t *a, int nt) {
    int isa;
    const tern_call c = team_call(a, nt, t81_variant((int)a[10], &isa));
    return tern_scratch_bytes(&c);
}

MF_PYFUNC(t81_linear,
          "t81_linear(x, M, K, w, N, w_scale, row_scales_or_0, y, acc_or_0, threads, isa) -> isa.") {
    MF_OP_ENTRY(t81_linear, 11, "pllpldpppll");
}

MF_PYFUNC(cpu_vbmi, "1 if the CPU has AVX-512 VBMI at the AVX-512 level (t81 weights run the VBMI kernel).") {
    (void)self;
    if (mf_parse_args(args, nargs, "") < 0) return NULL;
    return PyLong_FromLong(mf_cpu_vbmi());
}
