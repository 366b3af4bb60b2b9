/* exp_avx2: the 8-lane exp of the compiled stages (csrc/mf_decode.c's MLGRU / GLU gates,
 * csrc/mf_tfm.c's softmax and SiLU), one definition; its lane-exact twin is
 * mulfree.engine.decode_ref.exp_avx2. */
#ifndef MF_EXP_H
#define MF_EXP_H

#include "mf_common.h"

#if MF_X86
#include <immintrin.h>

/* exp(x) = 2^n exp(r): n = floor(x log2(e) + 1/2), r = x - n ln 2 in two parts (Cody-Waite),
 * exp(r) by the Cephes expf polynomial, 2^n put in the exponent field. x is clamped to
 * [-87.3, 88.7]: below, the result is ~0 where the stages need it (1 + exp(-v) or v / that),
 * above, n = 128 gives +inf as expf does (sigmoid -> 0, silu -> -0). */
MF_TARGET_AVX2 static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_floor_ps(
        _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif /* MF_X86 */

#endif /* MF_EXP_H */
