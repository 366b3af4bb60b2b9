/* Harness for tests/lmul/test_avx512_emulated.py: the AVX-512 L-Mul paths of csrc/mf_lmul_ew.c and csrc/mf_lmatmul.c,
 * built on SIMDe's emulation of AVX-512 (runs on any x86-64 with AVX2), against the scalar spec.
 * Returns the number of failing cases; prints one line per case. */
#include "mf_lmul_ew.c"
#include "mf_lmatmul.c"
#include "mf_cpu.c"
#include <stdio.h>
#include <stdlib.h>

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }

/* A bit pattern of format f: ~1/3 special (zero, subnormal, min/max normal, inf, NaN, 1.0),
 * ~1/3 with edge exponents (products under/overflow), the rest random. */
static uint32_t pattern(const lm_fmt *f) {
    const uint32_t sign = (rnd() & 1) ? f->sign_mask : 0;
    const uint32_t specials[] = {0, 1, f->man_mask, 1u << f->m, f->max_finite, f->inf_mag, f->nan_bits,
                                 f->inf_mag | 1, (uint32_t)f->bias << f->m};
    const uint64_t r = rnd() % 3;
    if (r == 0) return sign | specials[rnd() % 9];
    const uint32_t all = f->bits == 32 ? 0xFFFFFFFFu : (1u << f->bits) - 1;
    if (r == 1) {
        const uint32_t top = (f->inf_mag >> f->m);
        const uint32_t exps[] = {1, 2, (uint32_t)f->bias / 2, top - 1, top - 2, (uint32_t)f->bias * 3 / 2};
        return sign | (exps[rnd() % 6] << f->m) | ((uint32_t)rnd() & f->man_mask);
    }
    return (uint32_t)rnd() & all;
}

static int check_elementwise(int fmt_id, int k, int mode) {
    lm_fmt f;
    fmt_init(fmt_id, &f);
    if (k > f.m) k = f.m;
    lm_vconst c;
    vconst_init(&f, k, mode, &c);
    const int64_t n = 4099;
    const size_t bytes = (size_t)n * (size_t)(f.bits / 8);
    void *x = malloc(bytes), *y = malloc(bytes), *o_ref = malloc(bytes), *o_512 = malloc(bytes);
    for (int64_t i = 0; i < n; ++i) {
        store_bits(x, i, f.bits, pattern(&f));
        store_bits(y, i, f.bits, pattern(&f));
    }
    lmul_ew_scalar(&f, x, y, o_ref, 0, n, k, mode);
    lmul_ew_avx512(&f, &c, x, y, o_512, 0, n, k, mode);
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += load_bits(o_ref, i, f.bits) != load_bits(o_512, i, f.bits);
    printf("elementwise fmt=%d k=%d mode=%d: %s (%d mismatches)\n", fmt_id, k, mode, bad ? "FAIL" : "ok", bad);
    free(x), free(y), free(o_ref), free(o_512);
    return bad != 0;
}

/* kind 0: normal values; 1: with zeros and tiny values; 2: with inf/NaN (the full route);
 * 3: a causal mask's zeros in A (row i zero past k = 8 i: all-zero chunks, chunks whose only
 * invalid lanes are A's zeros, chunks with none) */
static int check_lmatmul(int64_t M, int64_t K, int64_t N, int k, int mode, int kind) {
    uint32_t *A = malloc(M * K * 4), *B = malloc(K * N * 4);
    float *c_ref = malloc(M * N * 4 + 4), *c_512 = malloc(M * N * 4 + 4);
    for (int64_t i = 0; i < M * K + K * N; ++i) {
        /* sign, exponent in [120, 134], random mantissa: products stay normal */
        uint32_t v = ((uint32_t)(rnd() & 1) << 31) | ((120u + (uint32_t)(rnd() % 15)) << 23) |
                     ((uint32_t)rnd() & 0x7FFFFFu);
        if (kind >= 1 && rnd() % 5 == 0) v = (rnd() & 1) ? 0 : (1u << 23); /* zero or tiny */
        if (kind == 2 && rnd() % 17 == 0) v = (rnd() & 1) ? 0x7F800000u : 0x7FC00000u;
        if (kind == 3 && i < M * K && i % K > 8 * (i / K)) v = (rnd() & 1) ? 0 : 0x80000000u;
        if (i < M * K) A[i] = v; else B[i - M * K] = v;
    }
    lmatmul_scalar(A, B, c_ref, M, K, N, k, mode, 0, M);
    const int fast = lmatmul_batch(MF_ISA_AVX512, A, B, c_512, 1, M, K, N, k, mode, 1, -1);
    int bad = 0;
    for (int64_t i = 0; i < M * N; ++i) {
        uint32_t u, v;
        memcpy(&u, c_ref + i, 4);
        memcpy(&v, c_512 + i, 4);
        const int both_nan = (u & 0x7FFFFFFFu) > 0x7F800000u && (v & 0x7FFFFFFFu) > 0x7F800000u;
        bad += u != v && !both_nan; /* NaN payloads of sums are canonicalized by the caller */
    }
    printf("lmatmul M=%ld K=%ld N=%ld k=%d mode=%d kind=%d route=%s: %s (%d mismatches)\n", (long)M,
           (long)K, (long)N, k, mode, kind, fast == 2 ? "fast-nounder" : (fast ? "fast" : "full"), bad ? "FAIL" : "ok", bad);
    free(A), free(B), free(c_ref), free(c_512);
    return bad != 0;
}

int mf_lmul_avx512_emulated_check(void) {
    int fails = 0;
    for (int fmt = 0; fmt < 3; ++fmt)
        for (int mode = 0; mode < 2; ++mode) {
            fails += check_elementwise(fmt, 1, mode);
            fails += check_elementwise(fmt, 3, mode);
            fails += check_elementwise(fmt, 23, mode);
        }
    /* the direct route (M <= 8), the packed one with partial row blocks / panels, K % 8 tails
     * and several k-chunks (K = 300) */
    const int64_t shapes[][3] = {{7, 33, 45}, {13, 70, 64}, {1, 5, 1}, {6, 1, 32}, {37, 300, 45}};
    for (int s = 0; s < 5; ++s)
        for (int kind = 0; kind < 4; ++kind) {
            fails += check_lmatmul(shapes[s][0], shapes[s][1], shapes[s][2], 23, 0, kind);
            fails += check_lmatmul(shapes[s][0], shapes[s][1], shapes[s][2], 3, 0, kind);
            fails += check_lmatmul(shapes[s][0], shapes[s][1], shapes[s][2], 23, 1, kind);
        }
    return fails;
}
