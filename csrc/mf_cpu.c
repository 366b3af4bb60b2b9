/* CPU feature detection, thread count and per-thread scratch: the generic part of dispatch. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mf_common.h"

int mf_isa_max(void) {
#if MF_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return MF_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return MF_ISA_AVX2;
#endif
    return MF_ISA_SCALAR;
}

int mf_cpu_vbmi(void) {
#if MF_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") && mf_isa_max() >= MF_ISA_AVX512;
#else
    return 0;
#endif
}

int mf_isa_resolve(int requested) {
    int best = mf_isa_max();
    if (requested < 0 || requested > best) return best;
    return requested;
}

int mf_threads(int64_t requested) {
    if (requested > 0) return (int)(requested > 1024 ? 1024 : requested);
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static _Thread_local void *scratch_ptr = NULL;
static _Thread_local size_t scratch_cap = 0;

void *mf_scratch(size_t bytes) {
    if (bytes <= scratch_cap) return scratch_ptr;
    size_t cap = mf_align_up(bytes + bytes / 4);
    void *p = aligned_alloc(MF_ALIGN, cap);
    if (p == NULL) return NULL;
    free(scratch_ptr);
    scratch_ptr = p;
    scratch_cap = cap;
    return p;
}
