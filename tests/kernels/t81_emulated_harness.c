/* Harness for tests/kernels/test_ternary_t81.py: the t81 VBMI kernel (csrc/mf_ternary.c section
 * 5), built on the SIMDe emulation of AVX-512 so it runs on any x86-64 with AVX2, through the
 * real driver (tables, k-chunks, groups of 8 row blocks and their remainders, token tiles of 2,
 * threads) against the scalar spec of tq2 on the same weight. Prints one line per case; returns
 * the number of failing cases. */
#include "mf_ternary.c"
#include "mf_pack.c"
#include "mf_cpu.c"
#include <stdio.h>
#include <stdlib.h>
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
int mf_t81_emulated_check(void) {
    int fails = 0;
    /* M, N, K: N = 32 * (16 k + 1..15) exercises the group of 16 row blocks and its remainders
     * (a 4-pair tile, single pairs, an odd last block: 27 row blocks has all three), K
     * past one int16 flush (1024) and a batch past the L2 k-chunk (9 x 4100), odd batches (the
     * single-token tile), |q_x| = 127 on all-+-1 rows (the largest partial sums), and odd row
     * block counts (the last block unpaired) with k-chunks (a static split of 2 threads rounded
     * down to a pair: 9 and 11 row blocks) */
    const int64_t shapes[][3] = {{1, 32, 16},   {1, 256, 1040}, {1, 290, 2100}, {3, 33, 50},
                                 {5, 512, 1040}, {4, 40, 2096},  {7, 300, 517},  {2, 256, 3120},
                                 {9, 100, 4100}, {17, 70, 200},  {1, 512, 3120}, {8, 320, 2048},
                                 {6, 288, 4100}, {6, 352, 4100}, {3, 864, 1040}};
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    for (int si = 0; si < nshapes; ++si) {
        const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        const int64_t KB = mf_round_up(K, 16) / 16, NB = mf_round_up(N, 32) / 32;
        const int extreme = K == 3120;
        int8_t *qw = malloc(N * K);
        float *x = malloc(M * K * 4), *y_ref = malloc(M * N * 4), *y = malloc(M * N * 4);
        for (int64_t i = 0; i < N * K; ++i) qw[i] = extreme ? ((i / K) % 2 ? 1 : -1) : (int8_t)((int)(rnd() % 3) - 1);
        for (int64_t i = 0; i < M * K; ++i)
            x[i] = extreme ? ((i / K) % 2 ? -1.0f : 1.0f) : (float)((int)(rnd() % 2001) - 1000) / 300.0f;
        mf_tq2_block *w = aligned_alloc(64, NB * KB * 128), *w81 = aligned_alloc(64, NB * KB * 128);
        tq2_pack(qw, N, K, (uint8_t *)w);
        t81_convert((const uint8_t *)w, N, K, (uint8_t *)w81, 0);
        int32_t *a_ref = calloc(M * N, 4), *a = calloc(M * N, 4);
        tq2_linear_impl(x, M, K, w, N, 0.5f, NULL, y_ref, a_ref, 1, MF_ISA_SCALAR, 0);
        for (int threads = 1; threads <= 2; ++threads) {
            const int used = t81_linear_impl(x, M, K, w81, N, 0.5f, NULL, y, a, threads, MF_ISA_AVX512, 1);
            int bad = used != MF_ISA_AVX512;
            for (int64_t i = 0; i < M * N; ++i) bad += a_ref[i] != a[i] || y_ref[i] != y[i];
            printf("t81 vbmi M=%ld N=%ld K=%ld threads=%d: %s (%d mismatches) sample ref=%d got=%d\n",
                   (long)M, (long)N, (long)K, threads, bad ? "FAIL" : "ok", bad, a_ref[0], a[0]);
            fails += bad != 0;
        }
        free(qw), free(x), free(y_ref), free(y), free(w), free(w81), free(a_ref), free(a);
    }
    return fails;
}
