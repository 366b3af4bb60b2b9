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
 *
 * With kernel calls on several threads the plan runs on one team (below, and mf_common.h
 * "Teams"): one OpenMP region for the whole step, each op's team version splitting its work in
 * items, instead of a fork/join per kernel call; the per-call walk stays for plans with an op
 * that has no team version, during a busy-core back-off, and as the team's twin in the tests.
 */
#include "mf_py.h" /* Python.h first, as CPython requires */

#ifdef _OPENMP
#include <omp.h>
#endif

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

/* ---------------------------------------------------------------------------------------------
 * A step on a team (mf_common.h, "Teams"): one OpenMP region for the whole plan instead of one
 * per kernel call (~150 fork/joins a 370M token), every thread walking the ops in order, each op
 * split in items by its team version. Ops without one (the BitNet stages, the heads: their own
 * OpenMP regions would run on one thread inside this one) keep the plan on the per-call walk.
 * ------------------------------------------------------------------------------------------- */
typedef int (*team_fn)(const int64_t *slots, mf_walk *w, void *scratch);
typedef size_t (*team_bytes_fn)(const int64_t *slots, int nt);
typedef struct {
    mf_op_fn op;         /* the PLAN_OPS entry this stands in for */
    team_fn team;
    team_bytes_fn bytes; /* shared scratch it needs (NULL: none) */
    int linear;          /* its slots are a tq2 / t81 call's (threads in slot 9) */
} team_op;

static const team_op TEAM_OPS[] = {
    {mf_op_tq2_linear, mf_team_tq2_linear, mf_team_bytes_tq2_linear, 1},
    {mf_op_t81_linear, mf_team_t81_linear, mf_team_bytes_t81_linear, 1},
    {mf_op_dec_norm2, mf_team_dec_norm2, NULL, 0},
    {mf_op_dec_mlgru, mf_team_dec_mlgru, NULL, 0},
    {mf_op_dec_glu, mf_team_dec_glu, NULL, 0},
    {mf_op_dec_embed, mf_team_dec_embed, NULL, 0},
};
#define N_TEAM_OPS ((int)(sizeof TEAM_OPS / sizeof TEAM_OPS[0]))

static const team_op *team_of(int64_t id) {
    for (int j = 0; j < N_TEAM_OPS; ++j)
        if (TEAM_OPS[j].op == PLAN_OPS[id].fn) return &TEAM_OPS[j];
    return NULL;
}

/* plan_team() sets this (benchmarks and tests: the per-call walk is the team walk's twin) */
static atomic_int team_on = 1;
static _Atomic int64_t team_runs; /* plans run on a team (tests: the team path did run) */

/* The team size a plan asks for (its kernel calls' largest thread count; 1: run it per call);
 * 0 when some op has no team version. */
static int plan_team_size(const int64_t *ops, int64_t n_words) {
    int nt = 1;
    for (int64_t i = 0; i < n_words; i += 2 + ops[i + 1]) {
        const team_op *t = team_of(ops[i]);
        if (t == NULL) return 0;
        if (t->linear) {
            const int k = mf_op_threads_linear(ops + i + 2);
            if (k > nt) nt = k;
        }
    }
    return nt;
}

/* The plan on a team of nt threads. Returns the number of ops run; *rc their status (< 0: the
 * op at the returned index failed). */
static int64_t plan_team_run(const int64_t *ops, int64_t n_words, int nt, int *rc) {
    size_t bytes = 0;
    for (int64_t i = 0; i < n_words; i += 2 + ops[i + 1]) {
        const team_op *t = team_of(ops[i]);
        if (t->bytes != NULL) {
            const size_t b = t->bytes(ops + i + 2, nt);
            if (b > bytes) bytes = b;
        }
    }
    void *scratch = mf_scratch(bytes > 0 ? bytes : 1); /* the master's, shared by the team */
    if (scratch == NULL) {
        *rc = MF_OP_NOMEM;
        return 0;
    }
    mf_team team = {0};
    int64_t n_ops = 0;
    atomic_fetch_add_explicit(&team_runs, 1, memory_order_relaxed);
    int64_t t_master_done = 0, waited = 0;
    const int64_t t_start = mf_now_ns();
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const int tid = 0, T = 1;
#endif
        mf_walk w = {&team, tid, T, 0, -1, 0, 0};
        int64_t k = 0;
        for (int64_t i = 0; i < n_words; i += 2 + ops[i + 1], ++k) {
            w.op = k;
            const int r = team_of(ops[i])->team(ops + i + 2, &w, scratch);
            if (r < 0) mf_walk_fail(&w, r); /* an argument check: every thread fails here */
            if (atomic_load(&team.err) != 0) break;
        }
        if (tid == 0) {
            n_ops = k;
            t_master_done = mf_now_ns();
            waited = w.waited;
        }
    }
    *rc = atomic_load(&team.err);
    if (*rc < 0) return atomic_load(&team.err_op);
    /* a stall: the master waited (for items, team_wait, and at the join) longer than it worked */
    mf_backoff_note_run(t_start, t_master_done, waited);
    return n_ops;
}

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

MF_PYFUNC(plan_team, "plan_team(on, spin_ns) -> (on, spin_ns, team runs, back-off) before: plan_run on a team (1, the default) or call by call (0), the team's spin before a wait sleeps (ns; -1 keeps a setting), how many plans ran on a team so far, and the busy-core back-off's time left (ns).") {
    (void)self;
    int64_t on, spin;
    if (mf_parse_args(args, nargs, "ll", &on, &spin) < 0) return NULL;
    const int was = atomic_load(&team_on);
    const int64_t was_spin = mf_team_spin_ns(spin);
    if (on >= 0) atomic_store(&team_on, on != 0);
    return Py_BuildValue("(iLLL)", was, (long long)was_spin, (long long)atomic_load(&team_runs),
                         (long long)mf_backoff_left());
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
    const int nt = plan_team_size(ops, n_words);
    if (nt > 1 && atomic_load(&team_on) && !mf_backoff_active()) { /* one region for the plan */
        k = plan_team_run(ops, n_words, nt, &rc);
        for (int64_t j = 0; j < k && rc < 0; ++j) i += 2 + ops[i + 1]; /* the failed op's words */
    } else { /* call by call (each kernel call its own region, if any; each consumes one call of
              * a back-off) */
        for (; i < n_words; ++k) {
            rc = PLAN_OPS[ops[i]].fn(ops + i + 2);
            if (rc < 0) break;
            i += 2 + ops[i + 1];
        }
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
