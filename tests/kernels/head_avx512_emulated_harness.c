/* Harness for tests/kernels/test_head_avx512_emulated.py: the AVX-512 VNNI int4 head
 * (csrc/mf_head.c, tfm_head_i4), built on the SIMDe emulation of AVX-512 (so it runs on any
 * x86-64 with AVX2), against the scalar spec through the real driver (quantizer, layouts, group
 * tails, rows per thread). Prints one line per case; returns the number of failing cases. */
#define MF_TARGET_AVX512VNNI /* plain functions: the intrinsics come from SIMDe */
#include "mf_head.c"
#include "mf_cpu.c"
#include <stdio.h>
#include <stdlib.h>
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
int mf_head_avx512_emulated_check(void) {
    int fails = 0;
    /* B, V, D: group tails (G % 8), D tails inside a group, the 2B4T row width, two threads */
    const int64_t shapes[][3] = {{1, 37, 300}, {3, 9, 512}, {2, 8203, 264}, {1, 50, 2560},
                                 {2, 5, 20},   {1, 17, 1056}};
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    for (int si = 0; si < nshapes; ++si) {
        const int64_t B = shapes[si][0], V = shapes[si][1], D = shapes[si][2];
        const int64_t G = (D + 31) / 32;
        uint8_t *codes = malloc(V * 16 * G);
        uint16_t *step = malloc(V * G * 2);
        float *x = malloc(B * D * 4), *ref = malloc(B * V * 4), *got = malloc(B * V * 4);
        for (int64_t i = 0; i < V * 16 * G; ++i) codes[i] = (uint8_t)rnd();
        /* bf16 steps: sign, exponent near 2^-7, any 7-bit mantissa */
        for (int64_t i = 0; i < V * G; ++i) step[i] = (uint16_t)(0x3c00 | (rnd() & 0x807f));
        for (int64_t i = 0; i < B * D; ++i) x[i] = (float)((int)(rnd() % 2001) - 1000) / 300.0f;
        head_i4(x, B, D, codes, V, step, ref, 1, MF_ISA_SCALAR, 0);
        for (int threads = 1; threads <= 2; ++threads) {
            const int used = head_i4(x, B, D, codes, V, step, got, threads, MF_ISA_AVX512, 1);
            int bad = used != MF_ISA_AVX512;
            for (int64_t i = 0; i < B * V; ++i) bad += memcmp(&ref[i], &got[i], 4) != 0;
            printf("avx512vnni B=%ld V=%ld D=%ld threads=%d: %s (%d mismatches) ref=%g got=%g\n",
                   (long)B, (long)V, (long)D, threads, bad ? "FAIL" : "ok", bad, ref[0], got[0]);
            fails += bad != 0;
        }
        free(codes), free(step), free(x), free(ref), free(got);
    }
    return fails;
}
