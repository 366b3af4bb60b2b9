/* Linked into every SIMDe harness by build_on_simde (tests/kernels/test_avx512_emulated.py): the
 * MF_PYFUNC wrappers of the included csrc files reference the module's argument parser, which a
 * harness never calls. */
#include "mf_py.h"

int mf_parse_args(PyObject *const *args, Py_ssize_t nargs, const char *fmt, ...) {
    (void)args;
    (void)nargs;
    (void)fmt;
    return -1;
}

int mf_parse_slots(PyObject *const *args, Py_ssize_t nargs, const char *fmt, int64_t *slots) {
    (void)args;
    (void)nargs;
    (void)fmt;
    (void)slots;
    return -1;
}

PyObject *mf_op_error(const char *name, int rc) {
    (void)name;
    (void)rc;
    return NULL;
}

/* The busy-core back-off lives in mf_ternary.c, which not every harness includes (the head and
 * transformer stages only ask whether it runs): weak, so a harness with mf_ternary.c uses its own. */
__attribute__((weak)) int mf_backoff_active(void) { return 0; }
