/* Harness for tests/kernels/test_avx512_emulated.py: the AVX-512 tq2 tables + kernel, built on the
 * SIMDe emulation of AVX-512 (so it runs on any x86-64 with AVX2), against the scalar spec. */
#include "mf_ternary.c"
#include "mf_pack.c"
#include "mf_cpu.c"
#include <stdio.h>  /* prints one line per shape; returns the number of failing shapes */
#include <stdlib.h>
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
int mf_avx512_emulated_check(void) {
    int fails = 0;
    const int64_t shapes[][3] = {{1, 32, 16}, {3, 33, 50}, {5, 64, 1040}, {4, 40, 2048 + 48}, {7, 96, 517}, {2, 64, 3 * 1024 + 48}};
    for (int si = 0; si < 6; ++si) {
        const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        const int64_t KB = mf_round_up(K, 16) / 16, Kp = KB * 16, NB = mf_round_up(N, 32) / 32, Np = NB * 32;
        int8_t *qw = malloc(N * K), *qx = aligned_alloc(64, mf_align_up(M * Kp));
        for (int64_t i = 0; i < N * K; ++i) qw[i] = (int8_t)((int)(rnd() % 3) - 1);
        if (si == 5) for (int64_t i = 0; i < N * K; ++i) qw[i] = (i / K) % 2 ? 1 : -1;
        for (int64_t i = 0; i < M * Kp; ++i) qx[i] = (i % Kp) < K ? (int8_t)((int)(rnd() % 255) - 127) : 0;
        if (si == 5) for (int64_t i = 0; i < M * Kp; ++i) qx[i] = (i % Kp) < K ? ((i / Kp) ? -127 : 127) : 0;
        mf_tq2_block *w = aligned_alloc(64, NB * KB * 128);
        tq2_pack(qw, N, K, (uint8_t *)w);
        const int64_t ts = TQ2_TAB_AVX512 * KB;
        uint8_t *tab = aligned_alloc(64, M * ts);
        for (int64_t m = 0; m < M; ++m) tq2_tables_avx512(qx + m * Kp, KB, tab + m * ts);
        int32_t *a_ref = calloc(M * Np, 4), *a_512 = calloc(M * Np, 4);
        for (int64_t nb = 0; nb < NB; ++nb) {
            tq2_kern_scalar(qx, Kp, NULL, 0, w + nb * KB, KB, a_ref + nb * 32, Np, M);
            /* two k chunks to exercise partial ranges */
            const int64_t h = KB / 2;
            tq2_kern_avx512(qx, Kp, tab, ts, w + nb * KB, h, a_512 + nb * 32, Np, M);
            tq2_kern_avx512(qx, Kp, tab + h * TQ2_TAB_AVX512, ts, w + nb * KB + h, KB - h, a_512 + nb * 32, Np, M);
        }
        int bad = 0;
        for (int64_t i = 0; i < M * Np; ++i) bad += a_ref[i] != a_512[i];
        printf("M=%ld N=%ld K=%ld: %s (%d mismatches) sample ref=%d avx512=%d\n", (long)M, (long)N, (long)K,
               bad ? "FAIL" : "ok", bad, a_ref[0], a_512[0]);
        fails += bad != 0;
    }
    return fails;
}
