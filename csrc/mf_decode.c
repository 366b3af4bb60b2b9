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
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <math.h>
#include <stdint.h>

static inline float inv_rms(const float *v, int64_t n, float eps) {
    double s = 0.0; /* double sum: the order no longer matters at fp32 precision */
    for (int64_t j = 0; j < n; ++j) s += (double)v[j] * v[j];
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

MF_PYFUNC(dec_norm2, "dec_norm2(x, add_or_0, B, n, w1, eps1, eps2, w2, out, w2b_or_0, outb_or_0, w2c_or_0, outc_or_0): x += add; out = rmsnorm(rmsnorm(x) w1; eps2) w2.") {
    (void)self;
    void *x, *add, *w1;
    const float *w2[3];
    float *out[3];
    int64_t B, n;
    double eps1, eps2;
    if (mf_parse_args(args, nargs, "ppllpddpppppp", &x, &add, &B, &n, &w1, &eps1, &eps2, &w2[0],
                      &out[0], &w2[1], &out[1], &w2[2], &out[2]) < 0)
        return NULL;
    if (w2[0] == NULL || out[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "dec_norm2: the first weight and output are required");
        return NULL;
    }
    norm2(x, add, B, n, w1, (float)eps1, (float)eps2, w2, out);
    Py_RETURN_NONE;
}

MF_PYFUNC(dec_mlgru, "dec_mlgru(yi, yf, yg, ystride, B, E, lb_or_0, olb_or_0, state, gw, g_eps, ow, o_eps, out): MLGRU gates, recurrence, g-norm, o-norm.") {
    (void)self;
    void *yi, *yf, *yg, *lb, *olb, *state, *gw, *ow, *out;
    int64_t ys, B, E;
    double g_eps, o_eps;
    if (mf_parse_args(args, nargs, "ppplllppppdpdp", &yi, &yf, &yg, &ys, &B, &E, &lb, &olb,
                      &state, &gw, &g_eps, &ow, &o_eps, &out) < 0)
        return NULL;
    mlgru(yi, yf, yg, ys, B, E, lb, olb, state, gw, (float)g_eps, ow, (float)o_eps, out);
    Py_RETURN_NONE;
}

MF_PYFUNC(dec_glu, "dec_glu(gu, B, I, dw, d_eps, out): silu(gate) * up, then the down BitLinear norm.") {
    (void)self;
    void *gu, *dw, *out;
    int64_t B, I;
    double d_eps;
    if (mf_parse_args(args, nargs, "pllpdp", &gu, &B, &I, &dw, &d_eps, &out) < 0) return NULL;
    glu(gu, B, I, dw, (float)d_eps, out);
    Py_RETURN_NONE;
}
