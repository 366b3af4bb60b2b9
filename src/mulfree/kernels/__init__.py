"""Python side of the compiled core `mulfree._C`: loading, CPU dispatch, threads, fallback.

How a kernel reaches C (csrc/README is this docstring):
- csrc/<family>.c holds a scalar reference (the spec), SIMD variants marked MF_TARGET_AVX2 /
  MF_TARGET_AVX512, and one selection function from an ISA level (mf_isa_resolve) to variants;
- a `MF_PYFUNC(name, "doc")` in that file becomes `mulfree._C.name` (setup.py generates the
  method table; arguments are ints for tensor.data_ptr()/sizes and floats for scales);
- a launcher here (see ternary.py) resolves the ISA (`resolve_isa`) and threads
  (`resolve_threads`), allocates outputs and calls `core().name(...)`;
- the public op falls back to torch when `resolve_isa` returns "torch".

Threads: OpenMP (libgomp, the same runtime torch uses), `threads=` or torch.get_num_threads().
libgomp's default wait policy (workers spin a while between parallel regions, then sleep) is the
fast one on idle cores: decoding makes ~150 short parallel regions per token, and with
OMP_WAIT_POLICY=PASSIVE each wakes a sleeping worker (~100 us per call measured here at batch 1;
370M decode 40 vs 90 tok/s). On cores shared with other busy processes the opposite holds: a
spinning worker gets descheduled and a fork/join can wait a scheduler slice (8-16 ms measured
here, for torch's own ops as well); set OMP_WAIT_POLICY=PASSIVE (before torch is imported) there.
"""

from mulfree._lazy import attach

# Served lazily (mulfree/_lazy.py): `mulfree.kernels.memory` and the torch-free packed runtime
# (mulfree.engine.lite) import this package without importing torch, which _core needs.
_NAMES = {name: "mulfree.kernels._core" for name in (
    "ISA_LEVELS",
    "TORCH",
    "available",
    "available_isas",
    "core",
    "isa_max",
    "load_error",
    "resolve_isa",
    "resolve_threads",
    "set_isa",
    "use_isa",
    "warn_slow_path_once",
)}  # fmt: skip
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "ISA_LEVELS",
    "TORCH",
    "available",
    "available_isas",
    "core",
    "isa_max",
    "load_error",
    "resolve_isa",
    "resolve_threads",
    "set_isa",
    "use_isa",
    "warn_slow_path_once",
]
