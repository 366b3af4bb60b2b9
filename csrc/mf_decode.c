/* The elementwise parts of one MatMul-free (hgrn_bit) decode step, fused per stage, for the
 * packed engine's Decoder (src/mulfree/engine/decode.py). The spec is the Decoder's torch path
 * (`Decoder(..., fused=False)`): the same formulas in the same order of operations; results
 * differ from it only by float rounding (libm expf vs torch's vectorized exp, the order of the
 * RMS sums), which tests/engine checks with a stated tolerance.
 *
 * Between the ternary kernel calls of a layer the step does ~25 small torch ops (norms, gates,
 * the recurrence); at batch 1 each costs a few microseconds of dispatch for microseconds of
 * work, more than the kernels at 370M. Here each stage is one call:
 *   dec_norm2  x += add; out = rmsnorm(rmsnorm(x) * w1; eps2) * w2     (block input -> BitLinear;
 *              up to three w2 / out pairs when i/f/g have their own BitLinear norm weights)
 *   dec_mlgru  gates, recurrence h = i + f h, g-norm * silu(h), then o_proj's BitLinear norm
 *   dec_glu    silu(gate) * up, then down_proj's BitLinear norm
 * with rmsnorm(v; eps) = v * (1 / sqrt(mean(v^2) + eps)) and every product rounded to fp32 in
 * the torch path's order (no FMA contraction: -std=c11 turns it off). Rows are independent
 * (batch B); no threads: a row is a few thousand floats.
 *
 * dec_mlgru and dec_glu take an ISA level: the scalar code below is their spec (libm expf); the
 * AVX2 variants run the same formulas 8 lanes at a time with exp_avx2 (a Cephes-style
 * exponential, <= 2 ulp on the range that matters), the only difference from the scalar path.
 * libm expf was ~10 % of a 370M decode step (5.9k calls per layer and token).
 *
 * dec_embed is the step's first stage, the token embedding lookup, so that a plan_run step
 * starts from token ids and needs no NumPy op before its one C call. Its spec is the NumPy
 * lookup (mulfree.engine.lite.embedding_lookup) for the float32, int8 and int4 tables, the same
 * single fp32 operations in the same order (bit-exact, tests/kernels/test_plan.py). Why in C:
 * a decode step streams ~100 MB of weights through the caches, so the Python that runs
 * between two steps runs cold; measured on the Zen 4 (1 thread, load ~1.5), right after a
 * plan_run the int4 NumPy lookup took ~170 us (11 us warm), about 3 % of a 370M step.
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mf_common.h"
#include "mf_exp.h"
#if MF_X86
#include <immintrin.h>
#endif

/* 1 / sqrt(mean(v^2) + eps), the sum in double (each square exact) over 8 interleaved partial
 * sums combined in a fixed order (decode_ref.inv_rms is its twin). Why 8: one chain of
 * dependent double adds was ~60 % of the stages' time (4 cycles per element: 2.6 of 4 us per
 * dec_norm2 at d = 1024); 8 independent chains run at the adds' throughput. */
static inline float inv_rms(const float *v, int64_t n, float eps) {
    double a[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) a[l] += (double)v[j + l] * v[j + l];
    for (int l = 0; j + l < n; ++l) a[l] += (double)v[j + l] * v[j + l];
    const double s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    const float mean = (float)(s / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

static inline float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
static inline float silu(float v) { return v / (1.0f + expf(-v)); }

/* x [B][n] (+= add when given); out [B][n] = ((x r1) w1 r2) w2, and likewise out_b / out_c with
 * w2_b / w2_c when given (projections whose BitLinear norms share the input: i/f/g). */
static void norm2(float *x, const float *add, int64_t B, int64_t n, const float *w1, float eps1,
                  float eps2, const float *const w2[3], float *const out[3]) {
    for (int64_t b = 0; b < B; ++b) {
        float *xr = x + b * n, *o = out[0] + b * n;
        if (add != NULL)
            for (int64_t j = 0; j < n; ++j) xr[j] += add[b * n + j];
        const float r1 = inv_rms(xr, n, eps1);
        for (int64_t j = 0; j < n; ++j) o[j] = (xr[j] * r1) * w1[j];
        const float r2 = inv_rms(o, n, eps2);
        for (int c = 2; c >= 0; --c) /* out[0] last: it holds the shared input until then */
            if (w2[c] != NULL)
                for (int64_t j = 0; j < n; ++j) out[c][b * n + j] = (o[j] * r2) * w2[c][j];
    }
}

/* Token mixer after the i/f/g projections. y* rows of E floats, `ys` floats apart; lb / olb
 * (lower bound and 1 - lower bound) may be NULL; state [B][E] updated; out [B][E]. */
static void mlgru(const float *yi, const float *yf, const float *yg, int64_t ys, int64_t B,
                  int64_t E, const float *lb, const float *olb, float *state, const float *gw,
                  float g_eps, const float *ow, float o_eps, float *out) {
    for (int64_t b = 0; b < B; ++b) {
        const float *ri = yi + b * ys, *rf = yf + b * ys, *rg = yg + b * ys;
        float *h = state + b * E, *o = out + b * E;
        for (int64_t e = 0; e < E; ++e) {
            float f = sigmoid(rf[e]);
            if (lb != NULL) f = f * olb[e] + lb[e]; /* lb + (1 - lb) f */
            const float i = (1.0f - f) * silu(ri[e]);
            h[e] = i + f * h[e];
        }
        const float rg_ = inv_rms(rg, E, g_eps);
        for (int64_t e = 0; e < E; ++e) o[e] = ((rg[e] * rg_) * gw[e]) * silu(h[e]);
        const float ro = inv_rms(o, E, o_eps);
        for (int64_t e = 0; e < E; ++e) o[e] = (o[e] * ro) * ow[e];
    }
}

/* Channel mixer between gate/up and down: gu [B][2I] = [gate | up]; out [B][I]. */
static void glu(const float *gu, int64_t B, int64_t I, const float *dw, float d_eps, float *out) {
    for (int64_t b = 0; b < B; ++b) {
        const float *g = gu + b * 2 * I, *u = g + I;
        float *o = out + b * I;
        for (int64_t j = 0; j < I; ++j) o[j] = silu(g[j]) * u[j];
        const float r = inv_rms(o, I, d_eps);
        for (int64_t j = 0; j < I; ++j) o[j] = (o[j] * r) * dw[j];
    }
}

#if MF_X86
/* v / (1 + exp(-v)), in the scalar silu's order */
MF_TARGET_AVX2 static inline __m256 silu_avx2(__m256 v) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

MF_TARGET_AVX2 static void mlgru_avx2(const float *yi, const float *yf, const float *yg,
                                      int64_t ys, int64_t B, int64_t E, const float *lb,
                                      const float *olb, float *state, const float *gw, float g_eps,
                                      const float *ow, float o_eps, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t b = 0; b < B; ++b) {
        const float *ri = yi + b * ys, *rf = yf + b * ys, *rg = yg + b * ys;
        float *h = state + b * E, *o = out + b * E;
        int64_t e = 0;
        for (; e + 8 <= E; e += 8) {
            const __m256 vf = _mm256_loadu_ps(rf + e);
            __m256 f = _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), vf))));
            if (lb != NULL)
                f = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(olb + e)), _mm256_loadu_ps(lb + e));
            const __m256 i = _mm256_mul_ps(_mm256_sub_ps(one, f), silu_avx2(_mm256_loadu_ps(ri + e)));
            _mm256_storeu_ps(h + e, _mm256_add_ps(i, _mm256_mul_ps(f, _mm256_loadu_ps(h + e))));
        }
        for (; e < E; ++e) {
            float f = sigmoid(rf[e]);
            if (lb != NULL) f = f * olb[e] + lb[e];
            const float i = (1.0f - f) * silu(ri[e]);
            h[e] = i + f * h[e];
        }
        const float rg_ = inv_rms(rg, E, g_eps);
        const __m256 vr = _mm256_set1_ps(rg_);
        for (e = 0; e + 8 <= E; e += 8) {
            const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(rg + e), vr), _mm256_loadu_ps(gw + e));
            _mm256_storeu_ps(o + e, _mm256_mul_ps(t, silu_avx2(_mm256_loadu_ps(h + e))));
        }
        for (; e < E; ++e) o[e] = ((rg[e] * rg_) * gw[e]) * silu(h[e]);
        const float ro = inv_rms(o, E, o_eps);
        for (e = 0; e < E; ++e) o[e] = (o[e] * ro) * ow[e];
    }
}

MF_TARGET_AVX2 static void glu_avx2(const float *gu, int64_t B, int64_t I, const float *dw,
                                    float d_eps, float *out) {
    for (int64_t b = 0; b < B; ++b) {
        const float *g = gu + b * 2 * I, *u = g + I;
        float *o = out + b * I;
        int64_t j = 0;
        for (; j + 8 <= I; j += 8)
            _mm256_storeu_ps(o + j, _mm256_mul_ps(silu_avx2(_mm256_loadu_ps(g + j)), _mm256_loadu_ps(u + j)));
        for (; j < I; ++j) o[j] = silu(g[j]) * u[j];
        const float r = inv_rms(o, I, d_eps);
        for (j = 0; j < I; ++j) o[j] = (o[j] * r) * dw[j];
    }
}
#endif

/* Token ids [B] (each checked < vocab) -> x [B][d] float32 rows of an embedding table:
 *   MF_EMBED_F32  table float32 [V][d]                         x = table[t]
 *   MF_EMBED_INT8 table int8 [V][d], step float32 [V]           x = (float)q * step[t]
 *   MF_EMBED_INT4 table uint8 [V][16 G], step float32 [V][G]    byte j holds columns 2j (low
 *                 nibble) and 2j + 1 (high), code q + 8; x[c] = ((float)code - 8) * step[t][c / 32]
 * (engine/format.py's layouts; G = groups, the step row length). Returns 0, or MF_OP_BADARG for
 * an unknown format or an id out of range (then no row is written). */
enum { MF_EMBED_F32 = 0, MF_EMBED_INT8 = 1, MF_EMBED_INT4 = 2 };
#define MF_INT4_GROUP 32 /* entries per step (engine/format.py INT4_GROUP) */

static int embed(const int64_t *ids, int64_t B, int64_t vocab, int64_t d, int64_t fmt,
                 const void *table, const float *step, int64_t groups, float *x) {
    if (fmt < MF_EMBED_F32 || fmt > MF_EMBED_INT4) return MF_OP_BADARG;
    if (fmt == MF_EMBED_INT4 && groups * MF_INT4_GROUP < d) return MF_OP_BADARG;
    for (int64_t b = 0; b < B; ++b)
        if (ids[b] < 0 || ids[b] >= vocab) return MF_OP_BADARG;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t t = ids[b];
        float *o = x + b * d;
        if (fmt == MF_EMBED_F32) {
            memcpy(o, (const float *)table + t * d, (size_t)d * sizeof(float));
        } else if (fmt == MF_EMBED_INT8) {
            const int8_t *q = (const int8_t *)table + t * d;
            const float s = step[t];
            for (int64_t j = 0; j < d; ++j) o[j] = (float)q[j] * s;
        } else {
            const uint8_t *c = (const uint8_t *)table + t * groups * (MF_INT4_GROUP / 2);
            const float *s = step + t * groups;
            for (int64_t j = 0; j < d; ++j) {
                const int code = j % 2 == 0 ? c[j / 2] & 15 : c[j / 2] >> 4;
                o[j] = ((float)code - 8.0f) * s[j / MF_INT4_GROUP];
            }
        }
    }
    return 0;
}

/* The stages as ops on argument slots (mf_common.h), for their Python entry points below and
 * the plan runner (csrc/mf_plan.c). */
int mf_op_dec_norm2(const int64_t *a) {
    const float *w2[3] = {mf_slot_ptr(a[7]), mf_slot_ptr(a[9]), mf_slot_ptr(a[11])};
    float *out[3] = {mf_slot_ptr(a[8]), mf_slot_ptr(a[10]), mf_slot_ptr(a[12])};
    if (w2[0] == NULL || out[0] == NULL) return MF_OP_BADARG; /* the first pair is required */
    norm2(mf_slot_ptr(a[0]), mf_slot_ptr(a[1]), a[2], a[3], mf_slot_ptr(a[4]),
          (float)mf_slot_f64(a[5]), (float)mf_slot_f64(a[6]), w2, out);
    return 0;
}

int mf_op_dec_embed(const int64_t *a) {
    return embed(mf_slot_ptr(a[0]), a[1], a[2], a[3], a[4], mf_slot_ptr(a[5]), mf_slot_ptr(a[6]),
                 a[7], mf_slot_ptr(a[8]));
}

int mf_op_dec_mlgru(const int64_t *a) {
    const int used = mf_isa_resolve((int)a[14]) >= MF_ISA_AVX2 ? MF_ISA_AVX2 : MF_ISA_SCALAR;
#if MF_X86
    if (used == MF_ISA_AVX2) {
        mlgru_avx2(mf_slot_ptr(a[0]), mf_slot_ptr(a[1]), mf_slot_ptr(a[2]), a[3], a[4], a[5],
                   mf_slot_ptr(a[6]), mf_slot_ptr(a[7]), mf_slot_ptr(a[8]), mf_slot_ptr(a[9]),
                   (float)mf_slot_f64(a[10]), mf_slot_ptr(a[11]), (float)mf_slot_f64(a[12]),
                   mf_slot_ptr(a[13]));
        return used;
    }
#endif
    mlgru(mf_slot_ptr(a[0]), mf_slot_ptr(a[1]), mf_slot_ptr(a[2]), a[3], a[4], a[5],
          mf_slot_ptr(a[6]), mf_slot_ptr(a[7]), mf_slot_ptr(a[8]), mf_slot_ptr(a[9]),
          (float)mf_slot_f64(a[10]), mf_slot_ptr(a[11]), (float)mf_slot_f64(a[12]), mf_slot_ptr(a[13]));
    return MF_ISA_SCALAR;
}

int mf_op_dec_glu(const int64_t *a) {
    const int used = mf_isa_resolve((int)a[6]) >= MF_ISA_AVX2 ? MF_ISA_AVX2 : MF_ISA_SCALAR;
#if MF_X86
    if (used == MF_ISA_AVX2) {
        glu_avx2(mf_slot_ptr(a[0]), a[1], a[2], mf_slot_ptr(a[3]), (float)mf_slot_f64(a[4]),
                 mf_slot_ptr(a[5]));
        return used;
    }
#endif
    glu(mf_slot_ptr(a[0]), a[1], a[2], mf_slot_ptr(a[3]), (float)mf_slot_f64(a[4]), mf_slot_ptr(a[5]));
    return MF_ISA_SCALAR;
}

MF_PYFUNC(dec_norm2, "dec_norm2(x, add_or_0, B, n, w1, eps1, eps2, w2, out, w2b_or_0, outb_or_0, w2c_or_0, outc_or_0): x += add; out = rmsnorm(rmsnorm(x) w1; eps2) w2.") {
    (void)self;
    int64_t a[13];
    if (mf_parse_slots(args, nargs, "ppllpddpppppp", a) < 0) return NULL;
    const int rc = mf_op_dec_norm2(a);
    if (rc < 0) {
        PyErr_SetString(PyExc_ValueError, "dec_norm2: the first weight and output are required");
        return NULL;
    }
    Py_RETURN_NONE;
}

MF_PYFUNC(dec_embed, "dec_embed(ids, B, vocab, d, fmt, table, step_or_0, groups, x): embedding rows of token ids (fmt 0 float32, 1 int8, 2 int4).") {
    (void)self;
    int64_t a[9];
    if (mf_parse_slots(args, nargs, "pllllpplp", a) < 0) return NULL;
    if (mf_op_dec_embed(a) < 0) {
        PyErr_SetString(PyExc_ValueError, "dec_embed: a token id out of range or an unknown format");
        return NULL;
    }
    Py_RETURN_NONE;
}

MF_PYFUNC(dec_mlgru, "dec_mlgru(yi, yf, yg, ystride, B, E, lb_or_0, olb_or_0, state, gw, g_eps, ow, o_eps, out, isa) -> isa used: MLGRU gates, recurrence, g-norm, o-norm.") {
    (void)self;
    int64_t a[15];
    if (mf_parse_slots(args, nargs, "ppplllppppdpdpl", a) < 0) return NULL;
    return PyLong_FromLong(mf_op_dec_mlgru(a));
}

MF_PYFUNC(dec_glu, "dec_glu(gu, B, I, dw, d_eps, out, isa) -> isa used: silu(gate) * up, then the down BitLinear norm.") {
    (void)self;
    int64_t a[7];
    if (mf_parse_slots(args, nargs, "pllpdpl", a) < 0) return NULL;
    return PyLong_FromLong(mf_op_dec_glu(a));
}

/* The plan runner's team versions (csrc/mf_plan.c): rows are independent, so with B > 1 each
 * row is an item (the same code on a one-row view: the same bits); one row is one item (its
 * RMS sums are one fixed-order reduction each: not split). */
static int64_t stage_items(int64_t B) { return B > 1 ? B : 1; }

/* An item finished with status rc: a failed item stops the team before it is marked done, so
 * no thread runs on past it into the next op. Returns rc. */
static int stage_done(mf_walk *w, int rc) {
    if (rc < 0) mf_walk_fail(w, rc);
    mf_walk_done(w);
    return rc;
}

int mf_team_dec_norm2(const int64_t *a, mf_walk *w, void *scratch) {
    (void)scratch;
    if (mf_slot_ptr(a[7]) == NULL || mf_slot_ptr(a[8]) == NULL) return MF_OP_BADARG;
    const int64_t B = a[2], n = a[3];
    int64_t b;
    int rc = 0;
    while ((b = mf_walk_next(w, stage_items(B))) >= 0) {
        int64_t r[13];
        memcpy(r, a, sizeof r);
        const int64_t rows = B > 1 ? 1 : B, off = B > 1 ? b * n * 4 : 0; /* bytes */
        r[0] += off;
        if (r[1] != 0) r[1] += off;
        r[2] = rows;
        for (int c = 8; c <= 12; c += 2)
            if (r[c] != 0) r[c] += off;
        rc = stage_done(w, mf_op_dec_norm2(r));
    }
    return rc;
}

int mf_team_dec_mlgru(const int64_t *a, mf_walk *w, void *scratch) {
    (void)scratch;
    const int64_t B = a[4], E = a[5], ys = a[3];
    int64_t b;
    int rc = 0;
    while ((b = mf_walk_next(w, stage_items(B))) >= 0) {
        int64_t r[15];
        memcpy(r, a, sizeof r);
        if (B > 1) {
            for (int c = 0; c < 3; ++c) r[c] += b * ys * 4;
            r[4] = 1;
            r[8] += b * E * 4;
            r[13] += b * E * 4;
        }
        rc = stage_done(w, mf_op_dec_mlgru(r));
    }
    return rc;
}

int mf_team_dec_glu(const int64_t *a, mf_walk *w, void *scratch) {
    (void)scratch;
    const int64_t B = a[1], I = a[2];
    int64_t b;
    int rc = 0;
    while ((b = mf_walk_next(w, stage_items(B))) >= 0) {
        int64_t r[7];
        memcpy(r, a, sizeof r);
        if (B > 1) {
            r[0] += b * 2 * I * 4;
            r[1] = 1;
            r[5] += b * I * 4;
        }
        rc = stage_done(w, mf_op_dec_glu(r));
    }
    return rc;
}

int mf_team_dec_embed(const int64_t *a, mf_walk *w, void *scratch) {
    (void)scratch;
    int rc = 0;
    while (mf_walk_next(w, 1) >= 0) rc = stage_done(w, mf_op_dec_embed(a)); /* one item: B rows */
    return rc;
}
