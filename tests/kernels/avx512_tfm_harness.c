/* Harness for tests/kernels/test_tfm_stages.py::test_attend_avx512_under_simde: tfm_attend's
 * AVX-512 routes, exact (attend_row512_t) and L-Mul (lmf_row512_t), built on SIMDe's emulation
 * of AVX-512 so they run on any x86-64 with AVX2, through the real driver (attend_impl: the (row, kv head) split, threads,
 * the hand-off to the full route) against the scalar spec (attend_impl at MF_ISA_SCALAR, which
 * tests compare with the NumPy twin): every cache dtype, GQA groups 1..5, head_dim 16..128,
 * contexts 1..600, exact zeros, an inf value (hand-off) and tiny products (underflow). Prints
 * one line per case; returns the number of failing cases. */
/* F16C natively (the AVX2 float16 conversions), AVX-512 from SIMDe: plain functions */
#pragma GCC target("f16c")
#define MF_TARGET_AVX512_F16C
#define TFM_MIN_WORK 4096 /* 2 threads on small shapes: emulated AVX-512 is slow */
#include "mf_tfm.c"
#include "mf_cpu.c"
#include <stdio.h>
#include <stdlib.h>
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
static float gauss(void) { /* a sum of 4 uniforms: a bell on (-2, 2), enough for the test */
    float s = 0.0f;
    for (int i = 0; i < 4; ++i) s += (float)(rnd() % 100001) / 50000.0f - 1.0f;
    return s;
}

int mf_tfm_avx512_check(void) {
    /* H, Hkv, hd, ctx, n of row 0 (row 1: n - 5 or 1), value scale (1e-20: tiny products), an
     * inf value, rows B; the last: 5 kv heads on 2 threads (the fifth split by query heads) */
    const struct { int64_t H, Hkv, hd, ctx, n; float scale; int inf; int64_t B; } cases[] = {
        {4, 1, 128, 64, 1, 1.0f, 0, 2},   {4, 1, 128, 64, 7, 1.0f, 0, 2},
        {4, 1, 128, 64, 9, 1.0f, 0, 2},   {10, 2, 32, 64, 63, 1.0f, 0, 2},
        {3, 3, 48, 32, 17, 1.0f, 0, 2},   {6, 2, 16, 24, 24, 1.0f, 0, 2},
        {8, 2, 64, 64, 40, 1e-20f, 0, 2}, {4, 2, 32, 32, 30, 1.0f, 1, 2},
        {8, 2, 128, 128, 100, 1.0f, 0, 2}, {20, 5, 32, 128, 100, 1.0f, 1, 1},
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    int fails = 0;
    for (int ci = 0; ci < ncases; ++ci)
        for (int dtype = 0; dtype < 4; ++dtype) {
            const int64_t H = cases[ci].H, Hkv = cases[ci].Hkv, hd = cases[ci].hd, ctx = cases[ci].ctx;
            const int64_t B = cases[ci].B, esz = dtype == TFM_KV_F32 ? 4 : dtype == TFM_KV_I8 ? 1 : 2;
            const int64_t nkv = B * Hkv * ctx * hd;
            void *kc = calloc((size_t)nkv, (size_t)esz), *vc = calloc((size_t)nkv, (size_t)esz);
            float *ks = calloc((size_t)(B * Hkv * ctx), 4), *vs = calloc((size_t)(B * Hkv * ctx), 4);
            float *x = malloc((size_t)(B * 2 * Hkv * hd) * 4), *q = malloc((size_t)(B * H * hd) * 4);
            float *o_ref = calloc((size_t)(B * H * hd), 4), *o = calloc((size_t)(B * H * hd), 4);
            int64_t rows[4];
            for (int64_t p = 0; p < ctx; ++p) { /* k | v rows of both slots at position p */
                for (int64_t i = 0; i < B * 2 * Hkv * hd; ++i)
                    x[i] = rnd() % 5 == 0 ? 0.0f : gauss() * cases[ci].scale;
                if (cases[ci].inf && p == 3) x[2 * Hkv * hd - 1] = INFINITY; /* slot 0, last kv head */
                rows[0] = 0, rows[1] = p, rows[2] = 1, rows[3] = p;
                kv_write(x, B, 2 * Hkv * hd, 0, Hkv * hd, kc, vc, ks, vs, dtype, Hkv, hd, ctx, rows);
            }
            for (int64_t i = 0; i < B * H * hd; ++i)
                q[i] = rnd() % 4 == 0 ? 0.0f : gauss() * 2.0f * (cases[ci].scale < 1 ? 1e-20f : 1.0f);
            const int64_t n = cases[ci].n;
            rows[0] = 0, rows[1] = n - 1, rows[2] = 1, rows[3] = n > 5 ? n - 6 : 0;
            for (int run = 0; run < 4; ++run) { /* exact, L-Mul x 1, 2 threads */
                const int threads = 1 + run % 2, lmul = run / 2;
                attn_args A = {kc, vc, ks, vs, dtype, H, Hkv, hd, ctx, 1.0f / sqrtf((float)hd), lmul, {0}, 3};
                attn_args R = A;
                const int used = attend_impl(&A, q, B, H * hd, o, H * hd, rows, MF_ISA_AVX512, threads);
                attend_impl(&R, q, B, H * hd, o_ref, H * hd, rows, MF_ISA_SCALAR, 1);
                int bad = used != (hd % 16 == 0 ? MF_ISA_AVX512 : MF_ISA_AVX2);
                for (int64_t i = 0; i < B * H * hd; ++i) {
                    uint32_t a, b;
                    memcpy(&a, o + i, 4), memcpy(&b, o_ref + i, 4);
                    bad += a != b;
                }
                printf("%s dtype=%d H=%ld Hkv=%ld hd=%ld n=%ld scale=%g inf=%d threads=%d: %s (%d "
                       "mismatches, level %d) sample ref=%g got=%g\n", lmul ? "lmul3" : "exact",
                       dtype, (long)H, (long)Hkv, (long)hd, (long)n, (double)cases[ci].scale,
                       cases[ci].inf, threads, bad ? "FAIL" : "ok", bad, used, (double)o_ref[0],
                       (double)o[0]);
                fails += bad != 0;
            }
            free(kc), free(vc), free(ks), free(vs), free(x), free(q), free(o_ref), free(o);
        }
    return fails;
}
