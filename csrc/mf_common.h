/* Shared declarations of the compiled core `mulfree._C` (plain C11, no torch headers).
 *
 * Every kernel family follows the same shape (ggml-style):
 *   - a scalar `*_scalar` function that is the spec and builds on every platform;
 *   - per-architecture SIMD variants marked MF_TARGET_AVX2 / MF_TARGET_AVX512, compiled into the
 *     same object with __attribute__((target)) so the build needs no -mavx flags;
 *   - ONE selection function per family that maps an ISA level (mf_isa_resolve) to its variants.
 * ISA levels are small integers shared with Python (mulfree.kernels.ISA_LEVELS).
 */
#ifndef MF_COMMON_H
#define MF_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    MF_ISA_AUTO = -1,   /* best level this CPU supports */
    MF_ISA_SCALAR = 0,  /* portable C: the spec */
    MF_ISA_AVX2 = 1,    /* x86-64 AVX2 */
    MF_ISA_AVX512 = 2,  /* x86-64 AVX-512 F+BW+VL */
};

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MF_X86 1
/* overridable so a test harness can build the AVX-512 code on an emulation header (SIMDe) */
#ifndef MF_TARGET_AVX2
#define MF_TARGET_AVX2 __attribute__((target("avx2")))
#endif
#ifndef MF_TARGET_AVX512
#define MF_TARGET_AVX512 __attribute__((target("avx2,avx512f,avx512bw,avx512vl")))
#endif
#else
#define MF_X86 0
#endif

#define MF_ALIGN 64

/* Highest ISA level the running CPU supports (cpuid via __builtin_cpu_supports). */
int mf_isa_max(void);
/* 1 if the CPU also has AVX-512 VBMI (vpermb): a sub-variant of the AVX-512 level, chosen inside
 * a family's selection function (the level numbering stays scalar / AVX2 / AVX-512). */
int mf_cpu_vbmi(void);
/* requested = MF_ISA_AUTO -> mf_isa_max(); otherwise min(requested, mf_isa_max()). */
int mf_isa_resolve(int requested);
/* Thread count for a kernel: requested > 0 is used as is, else the OpenMP default. */
int mf_threads(int64_t requested);
/* Grow-only, 64-byte aligned scratch owned by the calling thread (kept between calls so the
 * hot path neither mallocs nor page-faults). Returns NULL on allocation failure. A later call
 * may move the buffer: size everything once before an OpenMP region and share that pointer
 * (calling it inside the region from the master thread would free the shared buffer). */
void *mf_scratch(size_t bytes);

static inline int64_t mf_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline size_t mf_align_up(size_t x) { return (x + MF_ALIGN - 1) & ~(size_t)(MF_ALIGN - 1); }

/* ---------------------------------------------------------------------------------------------
 * Packed ternary formats (the pure-torch spec is src/mulfree/ternary/packing.py).
 * A weight q in {-1, 0, +1} is stored as the code c = q + 1 in {0, 1, 2}.
 *
 * "tq2" (2 bits/weight): rows padded to a multiple of 32, in-features to a multiple of 16 (pad
 * code 1 = weight 0). Blocks of 32 rows x 16 inputs, row-block major then k-block:
 *     block[nb][kb].q[u][r] = c(k0) | c(k0+1) << 2 | c(k0+2) << 4 | c(k0+3) << 6,
 *     row n = 32 nb + r, k0 = 16 kb + 4 u.
 * One byte holds 4 consecutive inputs of one row, and a 32-byte unit q[u] holds them for 32
 * rows, so a SIMD byte lane is a row: the low nibble indexes the (k0, k0+1) pair table and the
 * high nibble the (k0+2, k0+3) table, and no horizontal reduction is ever needed.
 *
 * "tq1" (1.6 bits/weight): 5 codes per byte, byte = sum_i c(5 j + i) * 3^i (i < 5, < 243),
 * row-major [N][ceil(K / 5)], trailing codes 1. A storage format: converted to tq2 to run.
 * ------------------------------------------------------------------------------------------- */
#define MF_TQ2_ROWS 32
#define MF_TQ2_K 16
typedef struct {
    uint8_t q[MF_TQ2_K / 4][MF_TQ2_ROWS];
} mf_tq2_block;
_Static_assert(sizeof(mf_tq2_block) == 128, "tq2 block must be 32 rows x 16 inputs x 2 bits");

#define MF_TQ1_TRITS 5

/* "t81" (2 bits/weight, an in-memory layout for AVX-512 VBMI): tq2's padding and bytes per
 * (row, 4 inputs), but each byte is the base-3 number of its 4 codes,
 *     c(k0) + 3 c(k0+1) + 9 c(k0+2) + 27 c(k0+3)  (< 81),
 * so one byte indexes one 81-entry table of the 4 inputs (vpermi2b, csrc/mf_ternary.c section
 * 5), and row blocks go in pairs: row blocks 2j, 2j + 1 (32 rows each) share one stream of
 * 64-row blocks (mf_t81_pair), pair[j][kb].q[u][32 h + r] = the byte of row 32 (2j + h) + r,
 * so one aligned 512-bit load is the index vector of 64 rows. With an odd number of row blocks
 * the last one keeps tq2's block order (mf_tq2_block, bytes re-coded). Same size as tq2; the
 * stream of pair j starts where row block 2j's does (block 2j KB), so it fits in place.
 * Converted from / to tq2 by mf_pack.c (tq2_to_t81 / t81_to_tq2). */
typedef struct {
    uint8_t q[MF_TQ2_K / 4][2 * MF_TQ2_ROWS];
} mf_t81_pair;
_Static_assert(sizeof(mf_t81_pair) == 2 * sizeof(mf_tq2_block), "a t81 pair block is two tq2 blocks");
#define MF_T81_CODES 81

/* ---------------------------------------------------------------------------------------------
 * Ops on argument slots, shared by a Python entry point and the plan runner (csrc/mf_plan.c):
 * an op's arguments are int64 slots in the order of its format string (mf_py.h: 'p' an
 * address, 'l' an int, 'd' the bit pattern of a double). An op returns >= 0 (for the kernels:
 * the ISA level used), MF_OP_NOMEM when scratch allocation failed or MF_OP_BADARG.
 * ------------------------------------------------------------------------------------------- */
#define MF_OP_NOMEM (-1)
#define MF_OP_BADARG (-2)
typedef int (*mf_op_fn)(const int64_t *slots);
static inline void *mf_slot_ptr(int64_t v) { return (void *)(intptr_t)v; }
static inline double mf_slot_f64(int64_t v) {
    union { int64_t i; double d; } u = {v}; /* the bits of a double, as mf_parse_slots wrote them */
    return u.d;
}
int mf_op_tq2_linear(const int64_t *a); /* "pllpldpppll", mf_ternary.c */
int mf_op_t81_linear(const int64_t *a); /* the same slots, t81 weights */
int mf_op_dec_norm2(const int64_t *a);  /* "ppllpddpppppp", mf_decode.c */
int mf_op_dec_mlgru(const int64_t *a);  /* "ppplllppppdpdpl" */
int mf_op_dec_glu(const int64_t *a);    /* "pllpdpl" */
int mf_op_dec_embed(const int64_t *a);  /* "pllllpplp" */
/* ---------------------------------------------------------------------------------------------
 * Teams: threads sharing a sequence of phases without a fork/join or barrier per phase
 * (csrc/mf_plan.c runs a whole decode step in one OpenMP region this way; csrc/mf_ternary.c's
 * per-call driver uses the same code with a team of its own).
 * Every thread walks the same phases in the same order; phase p has n_p work items. Items are
 * tickets of one counter shared by the whole walk (phase p owns tickets [base_p, base_p + n_p)):
 * a thread takes the next ticket, skips to the phase it belongs to and waits until every item
 * of the earlier phases is done (a second counter). So a phase needs no barrier, and a thread
 * that arrives late (descheduled on a busy machine) finds the items taken and holds up nobody:
 * only an item being run is waited for. Results never depend on who runs an item (each item's
 * arithmetic is fixed). Waits spin briefly, then sleep (MF_TEAM_SPIN_NS, csrc/mf_ternary.c).
 * ------------------------------------------------------------------------------------------- */
#include <stdatomic.h>
typedef struct {
    _Atomic int64_t claimed;  /* tickets handed out */
    _Atomic int64_t done;     /* items finished (every item of the earlier phases when >= base) */
    _Atomic uint32_t seq;     /* bumped on a finish while a thread sleeps (futex word) */
    _Atomic int sleepers;
    _Atomic int err;          /* an op failed: every walk stops (its MF_OP_* code) */
    _Atomic int64_t err_op;   /* the failed op's index in the walk (mf_walk.op) */
} mf_team;
typedef struct {
    mf_team *team;
    int tid, nt;     /* this thread, the team's size */
    int64_t base;    /* the current phase's first ticket */
    int64_t ticket;  /* a ticket taken and not yet run (-1: none) */
    int64_t waited;  /* master: ns it waited for the other threads' items so far (mf_stalled) */
    int64_t op;      /* the current op's index (for errors) */
} mf_walk;
/* The next item (0 .. n_items - 1) of the current phase for this thread, or -1 when the phase
 * has none left for it (the walk then moves to the next phase) or the team stopped on an error. */
int64_t mf_walk_next(mf_walk *w, int64_t n_items);
/* Item finished (its results written). */
void mf_walk_done(mf_walk *w);
/* The spin (ns) of a waiting thread before it sleeps; ns >= 0 sets it. Returns the old value. */
int64_t mf_team_spin_ns(int64_t ns);
/* An item failed with MF_OP_* `rc` (call before its mf_walk_done): every walk stops. */
static inline void mf_walk_fail(mf_walk *w, int rc) {
    atomic_store(&w->team->err_op, w->op);
    atomic_store(&w->team->err, rc);
}
/* A one-thread walk on `team` (zeroed by the caller): every item runs in order, no waiting. */
static inline mf_walk mf_walk_solo(mf_team *team) {
    mf_walk w = {team, 0, 1, 0, -1, 0, 0};
    return w;
}

/* Busy cores (csrc/mf_ternary.c, "Busy cores"): mf_backoff_active() is 1 while multi-threaded
 * kernel calls should run on one thread (a recent run found a worker descheduled);
 * mf_backoff_left() the ns it has left; mf_backoff_note(stalled) after a multi-threaded run. */
int mf_backoff_active(void);
int64_t mf_backoff_left(void);
void mf_backoff_note(int stalled);
/* After a multi-threaded run begun at t_start whose master finished at t_master_done having
 * waited `waited` ns for items: mf_backoff_note(mf_stalled(...)), the join's wait included. */
void mf_backoff_note_run(int64_t t_start, int64_t t_master_done, int64_t waited);
int64_t mf_now_ns(void);
#define MF_STALL_NS 500000 /* a master's wait this long (and longer than its own work): a stall */
/* Whether a multi-threaded run (a kernel call, a plan) was held up by a descheduled thread: its
 * master waited for the others (for items and at the join, `waited` ns in all) longer than
 * MF_STALL_NS and longer than it worked (`busy` ns), i.e. the extra threads did not pay for
 * themselves. Judged per run, not per wait: a 64-token prefill call's phases have few items of
 * a millisecond, and one wait for the other thread's item (or one short hiccup of a VM's vCPU)
 * exceeded the master's own work in the op so far; counted as stalls, those put 2-thread
 * prefill on one thread on a quiet machine (BitNet 2B4T, 128 tokens, AMD Zen 4: 66-80 tok/s at
 * 2 threads against 66 at 1). */
static inline int mf_stalled(int64_t waited, int64_t busy) {
    return waited > MF_STALL_NS && waited > busy;
}

/* Team versions of plan ops (all threads of a team call them, in plan order): the same results
 * as mf_op_* (each output computed by the same code), the work split in items. `scratch` is the
 * plan's shared buffer of at least mf_team_bytes_* bytes (sized before the region). */
int mf_team_tq2_linear(const int64_t *a, mf_walk *w, void *scratch);
int mf_team_t81_linear(const int64_t *a, mf_walk *w, void *scratch);
size_t mf_team_bytes_tq2_linear(const int64_t *a, int nt);
size_t mf_team_bytes_t81_linear(const int64_t *a, int nt);
int mf_op_threads_linear(const int64_t *a); /* the threads a tq2 / t81 linear call asks for */
int mf_team_dec_norm2(const int64_t *a, mf_walk *w, void *scratch);
int mf_team_dec_mlgru(const int64_t *a, mf_walk *w, void *scratch);
int mf_team_dec_glu(const int64_t *a, mf_walk *w, void *scratch);
int mf_team_dec_embed(const int64_t *a, mf_walk *w, void *scratch);
#endif
