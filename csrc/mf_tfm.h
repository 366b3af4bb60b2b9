/* Transformer decode stages of the compiled core (csrc/mf_tfm.c), for the BitNet b1.58 step
 * (src/mulfree/engine/bitnet_plan.py) and the plan runner (csrc/mf_plan.c).
 *
 * KV cache layout (one layer; `ctx` positions per slot, a multiple of TFM_KTILE):
 *   keys   K [slots][Hkv][ctx / 8][hd][8]  (8-position tiles: a tile of one head is hd x 8
 *          contiguous values, so the scores of 8 positions stream one block of memory)
 *   values V [slots][Hkv][ctx][hd]
 *   steps  [slots][Hkv][ctx] float32, int8 caches only (x = code * step, step = absmax / 127)
 * in float32, bfloat16, float16 or int8 (TFM_KV_*). Rows of a step name their (slot, position)
 * in an int64 array rows[B][2] the caller refills before each run: one encoded plan serves
 * every step of the same slots.
 */
#ifndef MF_TFM_H
#define MF_TFM_H

#include <math.h>
#include <stdint.h>

#include "mf_common.h"

/* Threads for a head of V rows: at most `nt` (already resolved), at least 4096 rows each, one
 * while the busy-core back-off runs (csrc/mf_ternary.c: a kernel call found a worker
 * descheduled). The heads' loops hand out rows in chunks (TFM_HEAD_CHUNK rows, dynamic), so a
 * descheduled thread holds up one chunk rather than its static half: beside a busy loop on 2
 * cores, BitNet decode at 2 threads ran 0.4-0.6x the 1-thread speed with static halves. */
static inline int64_t tfm_head_threads(int64_t nt, int64_t V) {
    nt = nt < V / 4096 ? nt : V / 4096;
    return nt < 1 || mf_backoff_active() ? 1 : nt;
}
#define TFM_HEAD_CHUNK 1024 /* head rows per handed-out chunk (a multiple of 4) */

/* The heads' activation quantizer (tfm_head_i8 in mf_tfm.c, tfm_head_i4 in mf_head.c): int8
 * absmax per row, s = 127 / max(absmax, 1e-5), q = clamp(rint(x s), -127, 127); returns s. */
static inline float tfm_head_quant(const float *x, int64_t D, int8_t *q) {
    float m = 0.0f;
    for (int64_t d = 0; d < D; ++d) m = fabsf(x[d]) > m ? fabsf(x[d]) : m;
    const float s = 127.0f / (m > 1e-5f ? m : 1e-5f);
    for (int64_t d = 0; d < D; ++d) {
        float v = rintf(x[d] * s);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[d] = (int8_t)v;
    }
    return s;
}

#define TFM_KTILE 8
enum { TFM_KV_F32 = 0, TFM_KV_BF16 = 1, TFM_KV_F16 = 2, TFM_KV_I8 = 3 };
enum { TFM_ACT_RELU2 = 0, TFM_ACT_SILU = 1 };

int mf_op_tfm_norm(const int64_t *a);     /* "ppllpdp" */
int mf_op_tfm_rope(const int64_t *a);     /* "plllpppp" */
int mf_op_tfm_kv_write(const int64_t *a); /* "plllpppppllllp" */
int mf_op_tfm_attend(const int64_t *a);   /* "pllplpppplllllpdlll" */
int mf_op_tfm_glu(const int64_t *a);      /* "pllpdpll" */

#endif
