/* L-Mul elementwise: out[i] = lmul(x[i], y[i]) in any of the five formats (mf_lmul.h: the
 * formats, the scalar spec `lmul_one` and the vector cores). The SIMD paths handle the 32/16-bit
 * formats in 32-bit lanes; fp8 runs on the scalar path. No multiply instruction is used.
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mf_common.h"
#include "mf_lmul.h"
#if MF_X86
#include <immintrin.h>
#endif

static void lmul_ew_scalar(const lm_fmt *f, const void *x, const void *y, void *out, int64_t lo,
                           int64_t hi, int k, int mode) {
    for (int64_t i = lo; i < hi; ++i)
        store_bits(out, i, f->bits, lmul_one(f, load_bits(x, i, f->bits), load_bits(y, i, f->bits), k, mode));
}

#if MF_X86

MF_TARGET_AVX2 static void lmul_ew_avx2(const lm_fmt *f, const lm_vconst *c, const void *x,
                                        const void *y, void *out, int64_t lo, int64_t hi, int k,
                                        int mode);

MF_TARGET_AVX512 static void lmul_ew_avx512(const lm_fmt *f, const lm_vconst *c, const void *x,
                                            const void *y, void *out, int64_t lo, int64_t hi,
                                            int k, int mode) {
    if (f->bits != 32) {
        /* 16-bit formats: the AVX2 path (this loop is bound by memory, not by lane count) */
        lmul_ew_avx2(f, c, x, y, out, lo, hi, k, mode);
        return;
    }
    int64_t i = lo;
    for (; i + 16 <= hi; i += 16) {
        const __m512i vx = _mm512_loadu_si512((const uint32_t *)x + i);
        const __m512i vy = _mm512_loadu_si512((const uint32_t *)y + i);
        _mm512_storeu_si512((uint32_t *)out + i, lmul512(c, vx, vy));
    }
    lmul_ew_scalar(f, x, y, out, i, hi, k, mode);
}

MF_TARGET_AVX2 static void lmul_ew_avx2(const lm_fmt *f, const lm_vconst *c, const void *x,
                                        const void *y, void *out, int64_t lo, int64_t hi, int k,
                                        int mode) {
    int64_t i = lo;
    if (f->bits == 32) {
        for (; i + 8 <= hi; i += 8) {
            const __m256i vx = _mm256_loadu_si256((const __m256i *)((const uint32_t *)x + i));
            const __m256i vy = _mm256_loadu_si256((const __m256i *)((const uint32_t *)y + i));
            _mm256_storeu_si256((__m256i *)((uint32_t *)out + i), lmul256(c, vx, vy));
        }
    } else if (f->bits == 16) {
        for (; i + 8 <= hi; i += 8) {
            const __m256i vx = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
            const __m256i vy = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)y + i)));
            const __m256i r = lmul256(c, vx, vy); /* lanes < 2^16: pack without saturation */
            const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), packed);
        }
    }
    lmul_ew_scalar(f, x, y, out, i, hi, k, mode);
}
#endif /* MF_X86 */

/* One selection point for the elementwise family. */
static void lmul_ew_run(int isa, const lm_fmt *f, const lm_vconst *c, const void *x,
                        const void *y, void *out, int64_t lo, int64_t hi, int k, int mode) {
#if MF_X86
    if (isa >= MF_ISA_AVX512) {
        lmul_ew_avx512(f, c, x, y, out, lo, hi, k, mode);
        return;
    }
    if (isa >= MF_ISA_AVX2) {
        lmul_ew_avx2(f, c, x, y, out, lo, hi, k, mode);
        return;
    }
#else
    (void)c;
    (void)isa;
#endif
    lmul_ew_scalar(f, x, y, out, lo, hi, k, mode);
}

MF_PYFUNC(lmul_ew, "lmul_ew(x, y, out, n, fmt, k, mode, isa, threads): elementwise L-Mul.") {
    (void)self;
    void *x, *y, *out;
    int64_t n, fmt_id, k, mode, isa, threads;
    if (mf_parse_args(args, nargs, "pppllllll", &x, &y, &out, &n, &fmt_id, &k, &mode, &isa, &threads) < 0)
        return NULL;
    lm_fmt f;
    if (fmt_init((int)fmt_id, &f) < 0 || k < 1 || k > f.m || mode < 0 || mode > 1) {
        PyErr_SetString(PyExc_ValueError, "lmul_ew: bad format, k or mode");
        return NULL;
    }
    lm_vconst c;
    vconst_init(&f, (int)k, (int)mode, &c);
    const int level = mf_isa_resolve((int)isa);
    const int nt = mf_threads(threads);
    Py_BEGIN_ALLOW_THREADS;
    const int64_t chunk = 1 << 14; /* 16k elements per task: spreads work, stays in L1/L2 */
    const int64_t tasks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(static) if (tasks > 1)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t lo = t * chunk, hi = lo + chunk < n ? lo + chunk : n;
        lmul_ew_run(level, &f, &c, x, y, out, lo, hi, (int)k, (int)mode);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}
