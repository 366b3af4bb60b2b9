/* Python binding helpers for the compiled core.
 *
 * A kernel file exposes a function to Python with
 *
 *     MF_PYFUNC(name, "one-line doc") { ...parse with mf_parse_args...; return ...; }
 *
 * setup.py scans the csrc .c files for MF_PYFUNC lines and generates the method table that
 * mf_module.c registers, so adding a kernel file never touches another file. The functions are
 * METH_FASTCALL and take plain Python ints/floats (tensor.data_ptr(), sizes, scales): about
 * 0.1-0.2 us per call, against ~2 us for ctypes with the same arguments, which matters for the
 * ~170 small GEMVs of one decode step.
 */
#ifndef MF_PY_H
#define MF_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MF_PYFUNC(name, doc) \
    PyObject *mf_py_##name(PyObject *self, PyObject *const *args, Py_ssize_t nargs)

/* Parse positional args by a format string: 'p' -> void ** (int address, 0 allowed = NULL),
 * 'l' -> int64_t *, 'd' -> double *. Returns 0, or -1 with a Python TypeError set. */
int mf_parse_args(PyObject *const *args, Py_ssize_t nargs, const char *fmt, ...);
/* The same, into int64 slots (mf_common.h: a double's bit pattern for 'd'); slots >= strlen(fmt). */
int mf_parse_slots(PyObject *const *args, Py_ssize_t nargs, const char *fmt, int64_t *slots);
/* Raise the Python error of an op's negative return code (MemoryError / ValueError). */
PyObject *mf_op_error(const char *name, int rc);

/* The body of an op's Python entry point: parse n slots by fmt, run mf_op_<name> without the
 * GIL, return its code (an error raised when negative). */
#define MF_OP_ENTRY(name, n, fmt)                                    \
    int64_t a[n];                                                    \
    (void)self;                                                      \
    if (mf_parse_slots(args, nargs, fmt, a) < 0) return NULL;        \
    int rc;                                                          \
    Py_BEGIN_ALLOW_THREADS rc = mf_op_##name(a);                     \
    Py_END_ALLOW_THREADS if (rc < 0) return mf_op_error(#name, rc);  \
    return PyLong_FromLong(rc)

#endif
