"""Loading the compiled core, choosing its ISA level and thread count, and the slow-path warning.

ISA selection, in order of precedence:
  1. the `isa=` argument of a kernel function ("torch", "scalar", "avx2", "avx512" or "auto");
  2. `set_isa(name)` / `with use_isa(name):` (process-wide);
  3. the environment variable MULFREE_ISA (read at import);
  4. "auto": per kernel family, the fastest level on this CPU, measured once and cached
     (mulfree.kernels.dispatch; `isa_report()` says what was chosen). A caller that names no
     family gets the best level the CPU supports (the C side checks __builtin_cpu_supports).
"torch" is the pure-torch path, which is also what runs when `mulfree._C` cannot be loaded (not
built, or MULFREE_DISABLE_C=1); the first kernel call then warns once that this is the slow path.
With MULFREE_REQUIRE_C=1 a missing or unloadable core is an error instead (MulfreeError from
`core()`, `available()`, `isa_max()` and every kernel call; `isa="torch"` still runs torch).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

from mulfree.errors import MulfreeError

#: ISA levels of the compiled core, as the integers csrc/mf_common.h uses.
ISA_LEVELS = {"scalar": 0, "avx2": 1, "avx512": 2}
TORCH = "torch"
AUTO = "auto"

_C: ModuleType | None = None
_load_error: str | None = None
_loaded = False
_warned = False
_forced: str | None = os.environ.get("MULFREE_ISA") or None
_best: str | None = None  # cached isa_max() of a loaded core


# How a user gets the core: a prebuilt wheel, or a source build with a compiler (setup.py).
HOW_TO_GET_CORE = (
    "Install a prebuilt manylinux wheel (`pip install --only-binary mulfree mulfree`) or build "
    "from source with a C compiler with OpenMP (`pip install --force-reinstall .`)"
)


def _require_c() -> bool:
    return os.environ.get("MULFREE_REQUIRE_C", "") == "1"


def _load() -> ModuleType | None:
    """The compiled core or None; raises under MULFREE_REQUIRE_C=1 when it is unavailable."""
    C = _try_load()
    if C is None and _require_c():
        raise MulfreeError(
            "MULFREE_REQUIRE_C=1: the compiled core mulfree._C is required but unavailable "
            f"({_load_error}). {HOW_TO_GET_CORE}, or unset MULFREE_REQUIRE_C to allow the "
            "pure-torch path."
        )
    return C


def _try_load() -> ModuleType | None:
    global _C, _load_error, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("MULFREE_DISABLE_C", "") == "1":
            _load_error = "disabled by MULFREE_DISABLE_C=1"
        else:
            try:
                from mulfree import _C as mod  # the extension built from csrc/ by setup.py
            except ImportError as e:
                _load_error = f"{type(e).__name__}: {e}"
            else:
                _C = mod
    return _C


def core() -> ModuleType | None:
    """The compiled module `mulfree._C`, or None when it is unavailable (see `load_error`)."""
    return _load()


def available() -> bool:
    """True when the compiled core is loaded."""
    return _load() is not None


def load_error() -> str | None:
    """Why the compiled core is unavailable (None when it is loaded); never raises."""
    _try_load()
    return _load_error


def warn_slow_path_once() -> None:
    """Say once per process that kernels run on the pure-torch path because _C is missing."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        "mulfree: the compiled core mulfree._C is not available "
        f"({load_error()}); ternary kernels run on the SLOW pure-torch path. "
        f"{HOW_TO_GET_CORE}.",
        RuntimeWarning,
        stacklevel=3,
    )


def isa_max() -> str:
    """Best ISA level of this CPU for the compiled core ("torch" when it is unavailable)."""
    global _best
    if _best is None:
        C = _load()
        if C is None:
            return TORCH
        level = C.isa_max()
        _best = next(name for name, v in ISA_LEVELS.items() if v == level)
    return _best


def available_isas() -> list[str]:
    """Every path that can run here, slowest first: "torch", then the compiled levels."""
    best = isa_max()
    if best == TORCH:
        return [TORCH]
    return [TORCH] + [n for n, v in ISA_LEVELS.items() if v <= ISA_LEVELS[best]]


def _check_name(name: str) -> str:
    if name not in ISA_LEVELS and name not in (TORCH, AUTO):
        raise MulfreeError(
            f"unknown ISA {name!r}; choose one of: auto, torch, {', '.join(ISA_LEVELS)}"
        )
    return name


def set_isa(name: str | None) -> None:
    """Force an ISA level process-wide (None or "auto" = best available)."""
    global _forced
    _forced = None if name in (None, AUTO) else _check_name(name)


def forced_isa() -> str | None:
    """The level forced by set_isa / use_isa / $MULFREE_ISA (None: auto)."""
    return _forced


@contextlib.contextmanager
def use_isa(name: str | None) -> Iterator[None]:
    """`with use_isa("scalar"): ...` runs the kernels inside on that level."""
    global _forced
    old = _forced
    set_isa(name)
    try:
        yield
    finally:
        _forced = old


def resolve_isa(isa: str | None = None, family: str | None = None) -> str:
    """The path a kernel call will take: "torch", "scalar", "avx2" or "avx512".

    `family` (mulfree.kernels.dispatch.FAMILIES, e.g. "ternary_b1") makes "auto" the level
    measured fastest for that family on this CPU (measured at the first such call, cached in
    the process and on disk); without it "auto" is the best level the CPU supports.
    Asking for a level this CPU lacks is an error (a silent downgrade would make a test of that
    level pass vacuously). Without the compiled core everything resolves to "torch" and the
    slow-path warning is given once (an error under MULFREE_REQUIRE_C=1).
    """
    name = isa or _forced or AUTO
    if name == AUTO and _best is not None:  # the per-call fast path
        if family is None:
            return _best
        lv = _chosen.get(family)  # dispatch's in-process cache
        return lv if lv is not None else _dispatch.choice(family)
    name = _check_name(name)
    if name == TORCH:
        return TORCH
    if _load() is None:
        warn_slow_path_once()
        return TORCH
    best = isa_max()
    if name == AUTO:
        return best if family is None else _dispatch.choice(family)
    if ISA_LEVELS[name] > ISA_LEVELS[best]:
        raise MulfreeError(f"ISA {name!r} is not supported by this CPU (best: {best})")
    return name


def isa_report(measure: bool = True) -> dict:
    """What the dispatcher runs: {"max", "forced", "cpu", "cache", "families": family ->
    {"level", "source" ("measured" / "cache" / "only candidate"), "median_us", ...}}.
    measure=False reports only the families chosen so far in this process."""
    if not available():
        return {"max": TORCH, "forced": _forced, "families": {}}
    return _dispatch.report(measure)


def isa_summary(measure: bool = True) -> str:
    """isa_report() as one line (for benchmark and CLI output); measure=False lists only the
    families chosen so far (costs nothing)."""
    if not available():
        return f"isa: torch (compiled core unavailable: {load_error()})"
    return _dispatch.summary(measure)


def resolve_threads(threads: int | None = None) -> int:
    """Kernel thread count: `threads` when given (> 0), else torch.get_num_threads()."""
    if threads is None:
        import torch  # here only: choosing a level and loading the core need no torch

        return torch.get_num_threads()
    if threads < 1:
        raise MulfreeError(f"threads must be >= 1, got {threads}")
    return int(threads)


from mulfree.kernels import dispatch as _dispatch  # noqa: E402  (it imports this module)

_chosen = _dispatch.chosen  # the same dict (dispatch.reset clears it in place)
