/* Packing of ternary weights (scalar: packing runs once per model, not per token).
 * The spec is the pure-torch code in src/mulfree/ternary/packing.py; tests compare atol=0. */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <stdlib.h>
#include <string.h>

#include "mf_common.h"

/* One row block: codes [32][stride] (row-major, code 1 past K) -> KB tq2 blocks. */
static void tq2_from_codes(const uint8_t *codes, int64_t stride, int64_t KB, mf_tq2_block *out) {
    for (int64_t kb = 0; kb < KB; ++kb)
        for (int u = 0; u < MF_TQ2_K / 4; ++u)
            for (int r = 0; r < MF_TQ2_ROWS; ++r) {
                const uint8_t *c = codes + r * stride + kb * MF_TQ2_K + 4 * u;
                out[kb].q[u][r] = (uint8_t)(c[0] | c[1] << 2 | c[2] << 4 | c[3] << 6);
            }
}

/* tq2: q int8 [N][K] in {-1,0,1} -> blocks [ceil(N/32)][ceil(K/16)] (see mf_common.h).
 * Returns -1 if the row-block buffer cannot be allocated. */
static int tq2_pack(const int8_t *q, int64_t N, int64_t K, uint8_t *out) {
    const int64_t NB = mf_round_up(N, MF_TQ2_ROWS) / MF_TQ2_ROWS;
    const int64_t KB = mf_round_up(K, MF_TQ2_K) / MF_TQ2_K, Kp = KB * MF_TQ2_K;
    uint8_t *codes = malloc((size_t)(MF_TQ2_ROWS * Kp));
    if (codes == NULL) return -1;
    for (int64_t nb = 0; nb < NB; ++nb) {
        memset(codes, 1, (size_t)(MF_TQ2_ROWS * Kp)); /* code 1 = weight 0 in the padding */
        for (int r = 0; r < MF_TQ2_ROWS && nb * MF_TQ2_ROWS + r < N; ++r) {
            const int8_t *row = q + (nb * MF_TQ2_ROWS + r) * K;
            for (int64_t k = 0; k < K; ++k) codes[r * Kp + k] = (uint8_t)(row[k] + 1);
        }
        tq2_from_codes(codes, Kp, KB, (mf_tq2_block *)out + nb * KB);
    }
    free(codes);
    return 0;
}

/* Code 3 never comes out of the packer; like the kernels, unpack reads it as weight 0. */
static const int8_t TQ2_CODE_TO_Q[4] = {-1, 0, 1, 0};

static void tq2_unpack(const uint8_t *w, int64_t N, int64_t K, int8_t *q) {
    const int64_t KB = mf_round_up(K, MF_TQ2_K) / MF_TQ2_K;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const mf_tq2_block *blk =
                (const mf_tq2_block *)w + (n / MF_TQ2_ROWS) * KB + k / MF_TQ2_K;
            const int kk = (int)(k % MF_TQ2_K);
            const unsigned byte = blk->q[kk / 4][n % MF_TQ2_ROWS];
            q[n * K + k] = TQ2_CODE_TO_Q[(byte >> (2 * (kk % 4))) & 3u];
        }
}

static void tq1_pack(const int8_t *q, int64_t N, int64_t K, uint8_t *out) {
    const int64_t KB = (K + MF_TQ1_TRITS - 1) / MF_TQ1_TRITS;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < KB; ++j) {
            unsigned byte = 0;
            for (int i = MF_TQ1_TRITS - 1; i >= 0; --i) {  /* Horner: c0 + 3 (c1 + 3 (...)) */
                const int64_t k = j * MF_TQ1_TRITS + i;
                const unsigned c = k < K ? (unsigned)(q[n * K + k] + 1) : 1u;
                byte = byte * 3u + c;
            }
            out[n * KB + j] = (uint8_t)byte;
        }
}

/* Returns the number of invalid bytes (>= 243); their weights are written as 0. */
static int64_t tq1_unpack(const uint8_t *w, int64_t N, int64_t K, int8_t *q) {
    const int64_t KB = (K + MF_TQ1_TRITS - 1) / MF_TQ1_TRITS;
    int64_t bad = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < KB; ++j) {
            const unsigned b = w[n * KB + j];
            bad += b >= 243;
            unsigned v = b < 243 ? b : 121u; /* 121 = five codes 1: invalid bytes read as 0 */
            for (int i = 0; i < MF_TQ1_TRITS; ++i, v /= 3u) {
                const int64_t k = j * MF_TQ1_TRITS + i;
                if (k < K) q[n * K + k] = (int8_t)((int)(v % 3u) - 1);
            }
        }
    return bad;
}

/* tq1 -> tq2 without an int8 [N][K] intermediate (row block by row block, table decode).
 * Returns the number of invalid bytes (>= 243, read as weight 0), or -1 on allocation failure. */
static int64_t tq1_to_tq2(const uint8_t *w, int64_t N, int64_t K, uint8_t *out) {
    const int64_t NB = mf_round_up(N, MF_TQ2_ROWS) / MF_TQ2_ROWS;
    const int64_t KB2 = mf_round_up(K, MF_TQ2_K) / MF_TQ2_K, Kp = KB2 * MF_TQ2_K;
    const int64_t KB1 = (K + MF_TQ1_TRITS - 1) / MF_TQ1_TRITS;
    const int64_t stride = Kp + MF_TQ1_TRITS; /* room for the last byte's padding trits */
    uint8_t dec[256][MF_TQ1_TRITS]; /* byte -> its 5 codes, least significant trit first */
    for (int b = 0; b < 256; ++b) {
        unsigned v = b < 243 ? (unsigned)b : 121u; /* 121 = five codes 1 */
        for (int i = 0; i < MF_TQ1_TRITS; ++i, v /= 3u) dec[b][i] = (uint8_t)(v % 3u);
    }
    uint8_t *codes = malloc((size_t)(MF_TQ2_ROWS * stride));
    if (codes == NULL) return -1;
    int64_t bad = 0;
    for (int64_t nb = 0; nb < NB; ++nb) {
        memset(codes, 1, (size_t)(MF_TQ2_ROWS * stride));
        for (int r = 0; r < MF_TQ2_ROWS && nb * MF_TQ2_ROWS + r < N; ++r) {
            const uint8_t *src = w + (nb * MF_TQ2_ROWS + r) * KB1;
            uint8_t *dst = codes + r * stride;
            for (int64_t j = 0; j < KB1; ++j) {
                bad += src[j] >= 243;
                memcpy(dst + MF_TQ1_TRITS * j, dec[src[j]], MF_TQ1_TRITS);
            }
            for (int64_t k = K; k < Kp; ++k) dst[k] = 1; /* tq2 padding past K */
        }
        tq2_from_codes(codes, stride, KB2, (mf_tq2_block *)out + nb * KB2);
    }
    free(codes);
    return bad;
}

MF_PYFUNC(tq2_pack, "tq2_pack(q_ptr, N, K, out_ptr): int8 [N,K] -> tq2 blocks.") {
    (void)self;
    void *q, *out;
    int64_t N, K;
    int rc;
    if (mf_parse_args(args, nargs, "pllp", &q, &N, &K, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS rc = tq2_pack(q, N, K, out);
    Py_END_ALLOW_THREADS if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

MF_PYFUNC(tq2_unpack, "tq2_unpack(w_ptr, N, K, q_ptr): tq2 blocks -> int8 [N,K].") {
    (void)self;
    void *w, *q;
    int64_t N, K;
    if (mf_parse_args(args, nargs, "pllp", &w, &N, &K, &q) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS tq2_unpack(w, N, K, q);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

MF_PYFUNC(tq1_pack, "tq1_pack(q_ptr, N, K, out_ptr): int8 [N,K] -> 5 trits/byte.") {
    (void)self;
    void *q, *out;
    int64_t N, K;
    if (mf_parse_args(args, nargs, "pllp", &q, &N, &K, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS tq1_pack(q, N, K, out);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

MF_PYFUNC(tq1_unpack, "tq1_unpack(w_ptr, N, K, q_ptr) -> number of invalid bytes.") {
    (void)self;
    void *w, *q;
    int64_t N, K, bad;
    if (mf_parse_args(args, nargs, "pllp", &w, &N, &K, &q) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS bad = tq1_unpack(w, N, K, q);
    Py_END_ALLOW_THREADS return PyLong_FromLongLong(bad);
}

MF_PYFUNC(tq1_to_tq2, "tq1_to_tq2(w_ptr, N, K, out_ptr) -> number of invalid bytes.") {
    (void)self;
    void *w, *out;
    int64_t N, K, bad;
    if (mf_parse_args(args, nargs, "pllp", &w, &N, &K, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS bad = tq1_to_tq2(w, N, K, out);
    Py_END_ALLOW_THREADS if (bad < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(bad);
}

/* tq2 <-> t81 (mf_common.h): every byte re-coded (tq2 code 3, never packed and read as weight 0
 * by the kernels, becomes code 1) and row blocks 2j, 2j + 1 interleaved into one stream of
 * 64-row blocks; an odd last row block is only re-coded. In place allowed (in == out): each
 * pair goes through a scratch copy of its 2 KB blocks. t81 -> tq2 returns the number of invalid
 * bytes (>= 81), written as four zero weights; both return -1 if scratch allocation failed. */
static void t81_maps(uint8_t to81[256], uint8_t to2[256]) {
    for (unsigned b = 0; b < 256; ++b) {
        unsigned e = 0;
        for (int i = 3; i >= 0; --i) { /* Horner: c0 + 3 (c1 + 3 (c2 + 3 c3)) */
            const unsigned c = (b >> (2 * i)) & 3u;
            e = 3u * e + (c == 3u ? 1u : c);
        }
        to81[b] = (uint8_t)e;
        unsigned v = b < MF_T81_CODES ? b : 40u, byte = 0; /* 40 = four codes 1 */
        for (int i = 0; i < 4; ++i, v /= 3u) byte |= (v % 3u) << (2 * i);
        to2[b] = (uint8_t)byte;
    }
}

/* dir 0: tq2 -> t81, 1: t81 -> tq2 (the inverse permutation of the pairs' bytes) */
static int64_t t81_convert(const uint8_t *in, int64_t N, int64_t K, uint8_t *out, int dir) {
    uint8_t to81[256], to2[256];
    t81_maps(to81, to2);
    const uint8_t *map = dir == 0 ? to81 : to2;
    const int64_t NB = mf_round_up(N, MF_TQ2_ROWS) / MF_TQ2_ROWS, KB = mf_round_up(K, MF_TQ2_K) / MF_TQ2_K;
    const int64_t blk = (int64_t)sizeof(mf_tq2_block), pair = 2 * KB * blk;
    int64_t bad = 0;
    if (dir == 1)
        for (int64_t i = 0; i < NB * KB * blk; ++i) bad += in[i] >= MF_T81_CODES;
    uint8_t *tmp = malloc(pair > 0 ? (size_t)pair : 1);
    if (tmp == NULL) return -1;
    for (int64_t j = 0; j + 1 < NB; j += 2) {
        const uint8_t *src = in + j * KB * blk;
        for (int64_t kb = 0; kb < KB; ++kb)
            for (int u = 0; u < MF_TQ2_K / 4; ++u)
                for (int h = 0; h < 2; ++h)
                    for (int r = 0; r < MF_TQ2_ROWS; ++r) {
                        /* tq2: block (2j + h, kb) unit u row r; t81: pair kb, unit u, lane 32 h + r */
                        const int64_t o2 = (h * KB + kb) * blk + u * MF_TQ2_ROWS + r;
                        const int64_t o81 = kb * 2 * blk + u * 2 * MF_TQ2_ROWS + h * MF_TQ2_ROWS + r;
                        if (dir == 0)
                            tmp[o81] = map[src[o2]];
                        else
                            tmp[o2] = map[src[o81]];
                    }
        memcpy(out + j * KB * blk, tmp, (size_t)pair);
    }
    if (NB % 2)
        for (int64_t i = (NB - 1) * KB * blk; i < NB * KB * blk; ++i) out[i] = map[in[i]];
    free(tmp);
    return bad;
}

MF_PYFUNC(tq2_to_t81, "tq2_to_t81(in_ptr, N, K, out_ptr): tq2 bytes of an [N, K] weight as t81 (in place ok).") {
    (void)self;
    void *in, *out;
    int64_t n, k, rc;
    if (mf_parse_args(args, nargs, "pllp", &in, &n, &k, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS rc = t81_convert(in, n, k, out, 0);
    Py_END_ALLOW_THREADS if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

MF_PYFUNC(t81_to_tq2, "t81_to_tq2(in_ptr, N, K, out_ptr) -> number of invalid bytes (>= 81).") {
    (void)self;
    void *in, *out;
    int64_t n, k, bad;
    if (mf_parse_args(args, nargs, "pllp", &in, &n, &k, &out) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS bad = t81_convert(in, n, k, out, 1);
    Py_END_ALLOW_THREADS if (bad < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(bad);
}
