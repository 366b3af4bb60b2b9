"""Python side of the compiled core `mulfree._C`: loading, CPU dispatch, threads, fallback.

How a kernel reaches C (csrc/README is this docstring):
- csrc/<family>.c holds a scalar reference (the spec), SIMD variants marked MF_TARGET_AVX2 /
  MF_TARGET_AVX512, and one selection function from an ISA level (mf_isa_resolve) to variants;
- a `MF_PYFUNC(name, "doc")` in that file becomes `mulfree._C.name` (setup.py generates the
  method table; arguments are ints for tensor.data_ptr()/sizes and floats for scales);
- a launcher here (see ternary.py) resolves the ISA (`resolve_isa(isa, family)`) and threads
  (`resolve_threads`), allocates outputs and calls `core().name(...)`;
- "auto" is, per kernel family, the level measured fastest on this CPU (dispatch.py: measured
  once on a small shape, cached in the process and under $MULFREE_CACHE / ~/.cache/mulfree);
  `isa_report()` / `isa_summary()` say what was chosen; MULFREE_ISA or set_isa overrides it;
- the public op falls back to torch when `resolve_isa` returns "torch".

Threads: OpenMP (libgomp, the same runtime torch uses), `threads=` or torch.get_num_threads().
libgomp's default wait policy (workers spin a while between parallel regions, then sleep) is the
fast one on idle cores: decoding makes ~150 short parallel regions per token, and with
OMP_WAIT_POLICY=PASSIVE each wakes a sleeping worker. On cores shared with other busy processes
the opposite holds: a spinning worker gets descheduled and a fork/join can wait a scheduler
slice; set OMP_WAIT_POLICY=PASSIVE (before torch is imported) there. (The measurements:
docs/engine.md, "Threads".)
"""

from mulfree.kernels._core import (
    ISA_LEVELS,
    TORCH,
    available,
    available_isas,
    core,
    isa_max,
    isa_report,
    isa_summary,
    load_error,
    resolve_isa,
    resolve_threads,
    set_isa,
    use_isa,
    warn_slow_path_once,
)
from mulfree.kernels.dispatch import (
    DECODE_STAGES,
    FAMILIES,
    LMATMUL,
    LMUL_EW,
    TERNARY_B1,
    TERNARY_BATCH,
    ternary_family,
)

__all__ = [
    "DECODE_STAGES",
    "FAMILIES",
    "ISA_LEVELS",
    "LMATMUL",
    "LMUL_EW",
    "TERNARY_B1",
    "TERNARY_BATCH",
    "TORCH",
    "available",
    "available_isas",
    "core",
    "isa_max",
    "isa_report",
    "isa_summary",
    "load_error",
    "resolve_isa",
    "resolve_threads",
    "set_isa",
    "ternary_family",
    "use_isa",
    "warn_slow_path_once",
]
