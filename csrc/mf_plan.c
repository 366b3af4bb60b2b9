/* The plan runner: a whole decode step (or any fixed sequence of compiled calls) in one call.
 *
 * src/mulfree/engine/plan.py builds the step as a list of (compiled function, args) pairs on
 * fixed buffers; run from Python, every pair costs an interpreter round trip (argument tuple
 * unpacking, int/float conversion: ~170 per token for a 24-layer model). `encode_plan` there
 * writes the same list once into an int64 array of ops
 *     [op id, slot count, slot 0, slot 1, ...]   (slots as in mf_common.h)
 * and `plan_run` walks it here, calling the very functions the Python entry points call
 * (mf_op_*), in the same order: the results are the same bits by construction, and
 * tests/kernels/test_plan.py checks it against the per-call loop.
 *
 * A decode step passes its token ids too (plan_run(ops, n, ids_ptr, ids_cap, ids)): they are
 * written to the plan's int64 id buffer, which its first op (dec_embed) reads, so the step's
 * Python does no NumPy or torch op at all (Python between two steps runs with cold caches:
 * see csrc/mf_decode.c, dec_embed).
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#include "mf_common.h"
#include "mf_head.h"
#include "mf_tfm.h"

typedef struct {
    const char *name; /* the Python entry point the op stands for */
    const char *fmt;  /* its argument format (mf_py.h) */
    mf_op_fn fn;
} plan_op;

/* Op ids are indices into this table (plan_ops() gives them to Python). */
static const plan_op PLAN_OPS[] = {
    {"tq2_linear", "pllpldpppll", mf_op_tq2_linear},
    {"dec_norm2", "ppllpddpppppp", mf_op_dec_norm2},
    {"dec_mlgru", "ppplllppppdpdpl", mf_op_dec_mlgru},
    {"dec_glu", "pllpdpl", mf_op_dec_glu},
    {"tfm_norm", "ppllpdp", mf_op_tfm_norm},
    {"tfm_rope", "plllpppp", mf_op_tfm_rope},
    {"tfm_kv_write", "plllpppppllllp", mf_op_tfm_kv_write},
    {"tfm_attend", "pllplpppplllllpdlll", mf_op_tfm_attend},
    {"tfm_glu", "pllpdpll", mf_op_tfm_glu},
    {"tfm_head_i8", "pllplppll", mf_op_tfm_head_i8},
    {"tfm_head_i4", "pllplppll", mf_op_tfm_head_i4},
    {"tfm_head_bf16", "pllplpll", mf_op_tfm_head_bf16},
    {"dec_embed", "pllllpplp", mf_op_dec_embed},
    {"t81_linear", "pllpldpppll", mf_op_t81_linear}, /* tq2_linear's slots, t81 weights */
};
#define N_PLAN_OPS ((int64_t)(sizeof PLAN_OPS / sizeof PLAN_OPS[0]))

static int64_t fmt_len(const char *f) {
    int64_t n = 0;
    while (f[n] != '\0') ++n;
    return n;
}

/* Check the whole plan before running any of it: a malformed plan writes nothing. Returns the
 * index of the first bad op, or -1 when every op is well formed. */
static int64_t plan_check(const int64_t *ops, int64_t n_words) {
    int64_t i = 0, k = 0;
    for (; i < n_words; ++k) {
        if (n_words - i < 2) return k;
        const int64_t id = ops[i], n = ops[i + 1];
        if (id < 0 || id >= N_PLAN_OPS || n != fmt_len(PLAN_OPS[id].fmt) || n > n_words - i - 2)
            return k;
        i += 2 + n;
    }
    return -1;
}

MF_PYFUNC(plan_ops, "plan_ops() -> ((name, format), ...): the op ids of plan_run, in order.") {
    (void)self;
    if (mf_parse_args(args, nargs, "") < 0) return NULL;
    PyObject *t = PyTuple_New(N_PLAN_OPS);
    if (t == NULL) return NULL;
    for (int64_t k = 0; k < N_PLAN_OPS; ++k) {
        PyObject *e = Py_BuildValue("(ss)", PLAN_OPS[k].name, PLAN_OPS[k].fmt);
        if (e == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, e);
    }
    return t;
}

/* ids (a list or tuple of ints, at most cap) -> buf. 0, or -1 with a Python error set. */
static int write_ids(PyObject *ids, int64_t *buf, int64_t cap) {
    if (!PyList_Check(ids) && !PyTuple_Check(ids)) {
        PyErr_SetString(PyExc_TypeError, "plan_run: ids must be a list or tuple of ints");
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(ids);
    if (n > cap || (n > 0 && buf == NULL)) {
        PyErr_Format(PyExc_ValueError, "plan_run: %zd ids for a buffer of %lld", n, (long long)cap);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(ids);
    for (Py_ssize_t j = 0; j < n; ++j) {
        const long long v = PyLong_AsLongLong(items[j]);
        if (v == -1 && PyErr_Occurred()) return -1;
        buf[j] = (int64_t)v;
    }
    return 0;
}

MF_PYFUNC(plan_run, "plan_run(ops_ptr, n_words[, ids_ptr, ids_cap, ids]) -> number of ops run: an encoded plan in one call (ids, a list of ints, written to the int64 buffer ids_ptr first).") {
    (void)self;
    void *p, *idp = NULL;
    int64_t n_words, cap = 0;
    if (nargs == 5) {
        if (mf_parse_args(args, 4, "plpl", &p, &n_words, &idp, &cap) < 0) return NULL;
        if (write_ids(args[4], idp, cap) < 0) return NULL;
    } else if (mf_parse_args(args, nargs, "pl", &p, &n_words) < 0) {
        return NULL;
    }
    const int64_t *ops = p;
    if (n_words < 0 || (n_words > 0 && ops == NULL)) {
        PyErr_SetString(PyExc_ValueError, "plan_run: bad plan buffer");
        return NULL;
    }
    const int64_t bad = plan_check(ops, n_words);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "plan_run: op %lld is malformed", (long long)bad);
        return NULL;
    }
    int64_t k = 0, i = 0;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (; i < n_words; ++k) {
        rc = PLAN_OPS[ops[i]].fn(ops + i + 2);
        if (rc < 0) break;
        i += 2 + ops[i + 1];
    }
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        if (rc == MF_OP_NOMEM) return PyErr_NoMemory();
        PyErr_Format(PyExc_ValueError, "plan_run: op %lld (%s) got invalid arguments", (long long)k,
                     PLAN_OPS[ops[i]].name);
        return NULL;
    }
    return PyLong_FromLongLong(k);
}
