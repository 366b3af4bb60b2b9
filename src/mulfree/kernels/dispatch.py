"""Per-family ISA choice: the fastest level of each kernel family on the running CPU.

Every level of a family gives the same bits (tests/kernels, tests/lmul), so the choice is about
speed only: a higher level is not always faster (on Intel Sapphire Rapids the AVX-512 ternary
kernels were measured slower than the AVX2 ones, csrc/mf_ternary.c). When the level is "auto",
`choice(family)` times the family's candidate levels once on a small shape, keeps the fastest
and caches it in the process and on disk, so later processes (and the first token of
`mulfree generate`) pay only a small JSON read.

Families (`FAMILIES`): the C entry point, the probe shape and the candidate levels. Candidates
are the SIMD levels with their own code in csrc/ (the decode stages have no AVX-512 variant:
there is nothing to choose); the scalar level is the readable spec, 3-300x slower in every
family here (one scalar ternary call at the probe shape costs more than the whole budget), so it
runs only when forced or when the CPU has no SIMD level.

Measurement (`measure`): one thread; a warm-up call per level; samples of ~`SAMPLE_S` seconds
(the same call count for every level), taken in rounds that interleave the levels (order
reversed every other round) so every level sees the same drift of a shared machine; per round
the time ratio of each level to the highest one; `choose` keeps the highest level unless a lower
one is clearly faster (median ratio below 1 - `MARGIN`). About 10-20 ms per family.

Disk cache: `isa-<key>.json` under `$MULFREE_CACHE`, else `$XDG_CACHE_HOME/mulfree`, else
`~/.cache/mulfree`. The key is the CPU model, a hash of its feature flags and a hash of the
compiled core's file, so another CPU or another build measures again. The file (JSON, written
atomically: temp file + rename) holds `format`, `version`, `key` and `families` (family ->
level, medians in µs, rounds, the 1-minute load average when measured). A file that does not
parse, has another key or names a level this CPU or family cannot run is ignored and rewritten
after measuring.

Weight layout (`layout(k, isa_b1, isa_batch)`): the same kind of choice for data, not code.
A ternary weight can sit in memory as tq2 (every level runs it) or as t81 (the same bytes
re-coded, mulfree.ternary.packing; only the AVX-512 VBMI kernel runs it fast). Where both
ternary families run at a level with that kernel, t81 and tq2 are timed against each other on
[2048, K] weights (one token and a batch of 8, cold copies), per input width K, since the t81
tables grow with K; t81 is kept only where it is clearly faster for one token or for a batch
and not slower for the other (`layout_rule`). The entries ("layout_k<K>") share the cache file
and its rules; they keep the measured ratios, and the rule is applied to them when read.

A busy machine (`disturbed`): a near-tie measured while other work shares the cores is noise,
and a disk entry would keep it for good. So a measurement taken when the 1-minute load average
exceeds the core count, or whose paired ratios spread too widely from round to round
(interquartile range above `MAX_SPREAD` of their median, and across the decision threshold), is
used in this process only (its
entry says why) and not written; the next process measures again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mulfree.kernels import _core

FORMAT = "mulfree-isa-choice"
VERSION = 3  # bump when probes, candidates or the rule change: old files are then foreign
MARGIN = 0.05  # a lower level must be >= 5 % faster (median paired ratio) to be chosen
SAMPLE_S = 6e-4  # target seconds per sample
ROUNDS = 9
MIN_ROUNDS = 5
BUDGET_S = 0.05  # per family: stop after MIN_ROUNDS once this is spent
PROBE_COPIES = 16  # ternary probes: weight copies cycled through (16 x 512 KiB, past L2)
MAX_SPREAD = 0.25  # paired ratios' IQR / median above this: the rounds disagree, do not cache
LAYOUTS = ("tq2", "t81")  # in-memory ternary weight layouts `layout` chooses between
LAYOUT_PREFIX = "layout_k"  # cache entries "layout_k<K>": the layout for weights of K inputs
LAYOUT_ROWS = 2048  # layout probe: [2048, K] weights, cycled through at least 40 MiB of copies
LAYOUT_PROBE_BYTES = 40 << 20  # past a 32 MiB L3: decoding streams weights from DRAM
LAYOUT_BATCH = 8  # the batched probe's tokens

TERNARY_B1 = "ternary_b1"
TERNARY_BATCH = "ternary_batch"
DECODE_STAGES = "decode_stages"
LMUL_EW = "lmul_ew"
LMATMUL = "lmatmul"


def ternary_family(m: int) -> str:
    """The family of a ternary linear call on m tokens (decode GEMV vs batched kernel)."""
    return TERNARY_B1 if m == 1 else TERNARY_BATCH


@dataclass(frozen=True)
class Family:
    what: str  # the C functions it covers
    shape: str  # the probe shape, for reports
    levels: tuple[str, ...]  # candidate levels, low to high


FAMILIES: dict[str, Family] = {
    TERNARY_B1: Family(
        "tq2_linear, 1 token (decode GEMV)", "1x2048->1024, 16 weight copies", ("avx2", "avx512")
    ),
    TERNARY_BATCH: Family(
        "tq2_linear, > 1 token (prefill)", "8x2048->1024, 16 weight copies", ("avx2", "avx512")
    ),
    # mf_decode.c: dec_mlgru / dec_glu run AVX2 for any level >= AVX2 (dec_norm2 has no level)
    DECODE_STAGES: Family("dec_mlgru, dec_glu", "E 1024, I 2816", ("avx2",)),
    LMUL_EW: Family("lmul_ew", "16384 fp32", ("avx2", "avx512")),
    LMATMUL: Family("lmatmul_f32", "64x64x64 fp32", ("avx2", "avx512")),
}


# --- the choice rule (pure: tests inject timings) ---------------------------------------------
def choose(samples: Mapping[str, Sequence[float]], margin: float = MARGIN) -> str:
    """The level to use from per-round times (level -> [seconds per sample, one per round],
    rounds aligned). Start from the highest level; walking down, a lower level replaces the
    current choice only when the median over rounds of (its time / the choice's time) is below
    1 - margin, i.e. it is clearly faster; noise alone keeps the higher level."""
    order = sorted(samples, key=lambda n: _core.ISA_LEVELS[n], reverse=True)
    if not order:
        raise ValueError("no levels to choose from")
    best = order[0]
    for low in order[1:]:
        if median_ratio(samples[low], samples[best]) < 1.0 - margin:
            best = low
    return best


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[r] / b[r] (paired: both taken in the same round)."""
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("no rounds")
    return statistics.median(a[r] / b[r] for r in range(n))


def _quartiles(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """(q1, median, q3) of the paired ratios a[r] / b[r]; None with fewer than 4 rounds."""
    r = [a[i] / b[i] for i in range(min(len(a), len(b)))]
    if len(r) < 4:
        return None
    q1, med, q3 = statistics.quantiles(r, n=4, method="inclusive")
    return q1, med, q3


def ratio_spread(a: Sequence[float], b: Sequence[float]) -> float:
    """Interquartile range of the paired ratios a[r] / b[r], relative to their median: 0 when
    every round agrees; large when the machine's load changed between the two levels' samples
    (a steady slowdown both levels see does not move it)."""
    q = _quartiles(a, b)
    return 0.0 if q is None else (q[2] - q[0]) / q[1]


def disturbed(
    samples: Mapping[str, Sequence[float]],
    load: float | None,
    cores: int,
    max_spread: float = MAX_SPREAD,
    margin: float = MARGIN,
    order: Sequence[str] | None = None,
) -> str | None:
    """Why a measurement must not be cached on disk, or None when it may be. `load` is the
    1-minute load average when measuring (None: unknown, e.g. no os.getloadavg), `cores` the
    cores this process may run on. Busy: load above the core count (the probe's own thread
    counts for about 1, so a quiet machine stays below). Noisy: some level's paired ratios to the
    highest level spread wider than `max_spread` (relative IQR) AND their interquartile range
    straddles the decision threshold 1 - margin, i.e. the rounds disagree about which level wins
    (a wide spread on a clear winner, as a process's first probe often shows, is still cached).
    `order`: the reference first, then the candidates measured against it (default: the
    levels, highest first)."""
    if load is not None and load > cores:
        return f"load {load:.2f} > {cores} cores"
    if order is None:  # ISA levels: each lower level against the highest
        order = sorted(samples, key=lambda n: _core.ISA_LEVELS[n], reverse=True)
    for low in order[1:]:
        q = _quartiles(samples[low], samples[order[0]])
        if q is None:
            continue
        sp = (q[2] - q[0]) / q[1]
        if sp > max_spread and q[0] < 1.0 - margin < q[2]:
            return f"{low}/{order[0]} spread {sp:.2f} > {max_spread:g} across 1 - margin"
    return None


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def measure(
    levels: Sequence[str],
    sample: Callable[[str], float],
    rounds: int = ROUNDS,
    min_rounds: int = MIN_ROUNDS,
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Interleaved samples: level -> one time per round. `sample(level)` times one sample;
    the level order is reversed every other round; stops after `rounds`, or after `min_rounds`
    once `budget_s` is spent."""
    out: dict[str, list[float]] = {n: [] for n in levels}
    t0 = clock()
    for r in range(rounds):
        for name in levels if r % 2 == 0 else reversed(levels):
            out[name].append(sample(name))
        if r + 1 >= min_rounds and clock() - t0 > budget_s:
            break
    return out


# --- probes: small inputs and one sample of a family at a level --------------------------------
def _probe(family: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(run(level) -> one call at that level, keep-alive closure) for a family's probe shape."""
    import torch

    from mulfree.kernels import ternary as K_  # the compiled packer (ternary.packing sits above)

    C = _core.core()
    g = torch.Generator().manual_seed(0)
    if family in (TERNARY_B1, TERNARY_BATCH):
        # A model's shape (2048 inputs), its weights not in L1/L2: calls cycle through copies
        # (PROBE_COPIES x 512 KiB), as decoding streams each layer's weights once per token. A
        # hot 8x1024->512 probe picked AVX2 for batches on AMD Zen 4 where the cold benchmark
        # table favoured AVX-512 (benchmarks/bench_ternary_linear.py --quick).
        m, k, n = (1, 2048, 1024) if family == TERNARY_B1 else (8, 2048, 1024)
        q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
        w = K_.tq2_pack(q, -(-n // 32) * 32 * -(-k // 16) * 16 // 4)  # packing.packed_nbytes
        ws = [w] + [w.clone() for _ in range(PROBE_COPIES - 1)]
        x, y = torch.randn(m, k, generator=g), torch.empty(m, n)
        head, tail = (x.data_ptr(), m, k), (n, 1.0, 0, y.data_ptr(), 0, 1)
        wptrs = [c.data_ptr() for c in ws]
        keep = (ws, x, y)
        turn = [0]

        def run(level: int) -> None:
            turn[0] = (turn[0] + 1) % PROBE_COPIES
            C.tq2_linear(*head, wptrs[turn[0]], *tail, level)

    elif family == DECODE_STAGES:
        e, i = 1024, 2816
        yi, st = torch.randn(1, 3 * e, generator=g), torch.zeros(1, e)
        gw, out = torch.rand(e, generator=g) + 0.5, torch.empty(1, e)
        gu, dw, o2 = (
            torch.randn(1, 2 * i, generator=g),
            torch.rand(i, generator=g),
            torch.empty(1, i),
        )
        b = yi.data_ptr()
        a1 = (b, b + 4 * e, b + 8 * e, 3 * e, 1, e, 0, 0, st.data_ptr(), gw.data_ptr(), 1e-6,
              gw.data_ptr(), 1e-6, out.data_ptr())  # fmt: skip
        a2 = (gu.data_ptr(), 1, i, dw.data_ptr(), 1e-6, o2.data_ptr())
        keep = (yi, st, gw, out, gu, dw, o2)

        def run(level: int) -> None:
            C.dec_mlgru(*a1, level)
            C.dec_glu(*a2, level)

    elif family == LMUL_EW:
        n = 16384
        a, b_, c = torch.randn(n, generator=g), torch.randn(n, generator=g), torch.empty(n)
        keep = (a, b_, c)

        def run(level: int) -> None:
            C.lmul_ew(a.data_ptr(), b_.data_ptr(), c.data_ptr(), n, 0, 4, 0, level, 1)

    elif family == LMATMUL:
        s = 64
        a, b_, c = torch.randn(s, s, generator=g), torch.randn(s, s, generator=g), torch.empty(s, s)
        keep = (a, b_, c)

        def run(level: int) -> None:
            C.lmatmul_f32(a.data_ptr(), b_.data_ptr(), c.data_ptr(), 1, s, s, s, 4, 0, level, 1, -1)

    else:
        raise KeyError(family)
    return run, lambda: keep


def measure_family(family: str) -> dict[str, list[float]]:
    """Time the family's candidate levels (those this CPU runs) on its probe shape."""
    best = _core.ISA_LEVELS[_core.isa_max()]
    levels = [n for n in FAMILIES[family].levels if _core.ISA_LEVELS[n] <= best]
    if len(levels) < 2:
        return {n: [] for n in levels}
    run, _keep = _probe(family)
    ints = {n: _core.ISA_LEVELS[n] for n in levels}
    for n in levels:  # warm-up: scratch, page faults, caches
        run(ints[n])
        run(ints[n])
    t0 = time.perf_counter()
    run(ints[levels[-1]])
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, min(200, round(SAMPLE_S / one)))

    def sample(name: str) -> float:
        lv = ints[name]
        t = time.perf_counter()
        for _ in range(calls):
            run(lv)
        return (time.perf_counter() - t) / calls

    return measure(levels, sample)


# --- cache key and file ---------------------------------------------------------------------
def _cpu() -> tuple[str, str]:
    """(CPU model name, sha256 of its sorted feature flags), from the first processor's block
    of /proc/cpuinfo (platform.processor() and no flags elsewhere)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if not key:  # the end of the first processor's block
                    break
                if key == "model name" and not model:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(val.split()))
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return model, hashlib.sha256(flags.encode()).hexdigest()[:16]


def _core_id() -> str:
    """Hash of the compiled core's file: another build is another key."""
    C = _core.core()
    path = getattr(C, "__file__", None)
    if not path:
        return "unknown"
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key() -> dict[str, str]:
    model, flags = _cpu()
    return {"cpu": model, "flags": flags, "core": _core_id(), "max": _core.isa_max()}


def cache_dir() -> Path:
    """$MULFREE_CACHE, else $XDG_CACHE_HOME/mulfree, else ~/.cache/mulfree."""
    if os.environ.get("MULFREE_CACHE"):
        return Path(os.environ["MULFREE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mulfree"


def cache_path(key: Mapping[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"isa-{digest}.json"


def read_cache(path: Path, key: Mapping[str, str]) -> dict[str, dict]:
    """family -> entry from the file, or {} when it is missing, broken or foreign. Entries whose
    level is not a candidate of the family this CPU runs are dropped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    if data.get("version") != VERSION or data.get("key") != dict(key):
        return {}
    fams = data.get("families")
    if not isinstance(fams, dict):
        return {}
    best = _core.ISA_LEVELS.get(str(key.get("max")), -1)
    out = {}
    for fam, entry in fams.items():
        lv = entry.get("level") if isinstance(entry, dict) else None
        if fam in FAMILIES and lv in FAMILIES[fam].levels and _core.ISA_LEVELS[lv] <= best:
            out[fam] = entry
        elif fam.startswith(LAYOUT_PREFIX) and lv in LAYOUTS and isinstance(entry.get("isas"), dict):
            out[fam] = entry
    return out


def write_cache(path: Path, key: Mapping[str, str], families: Mapping[str, dict]) -> bool:
    """Write atomically (temp file in the same directory, then rename); False on any OSError
    (read-only home, full disk: the choice then lives in this process only)."""
    data = {"format": FORMAT, "version": VERSION, "key": dict(key), "families": dict(families)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


# --- the process-wide state -------------------------------------------------------------------
_lock = threading.RLock()
chosen: dict[str, str] = {}  # family -> level (public: the per-call fast path of _core.resolve_isa)
_entries: dict[str, dict] = {}  # family -> entry (level, medians, source) for isa_report
_key: dict[str, str] | None = None
_disk: dict[str, dict] | None = None  # the cache file's entries, read once


def reset() -> None:
    """Forget every choice of this process (tests; the disk cache is kept)."""
    global _key, _disk
    with _lock:
        chosen.clear()
        _entries.clear()
        _key = _disk = None


def _entry(
    levels: Sequence[str], samples: Mapping[str, Sequence[float]], load: float | None = None
) -> dict:
    if len(levels) == 1:
        return {"level": levels[0], "source": "only candidate"}
    lv = choose(samples)
    top = levels[-1]
    return {
        "level": lv,
        "source": "measured",
        "load": None if load is None else round(load, 2),
        "median_us": {n: round(statistics.median(s) * 1e6, 2) for n, s in samples.items()},
        "ratio_to_" + top: {
            n: round(median_ratio(s, samples[top]), 3) for n, s in samples.items() if n != top
        },
        "rounds": min(len(s) for s in samples.values()),
    }


def choice(family: str) -> str:
    """The measured (or cached) level of a family on this CPU; the compiled core is loaded."""
    lv = chosen.get(family)
    if lv is not None:
        return lv
    global _key, _disk
    with _lock:
        if family in chosen:
            return chosen[family]
        if family not in FAMILIES:
            raise KeyError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
        best = _core.ISA_LEVELS[_core.isa_max()]
        levels = [n for n in FAMILIES[family].levels if _core.ISA_LEVELS[n] <= best]
        if len(levels) < 2:  # nothing to measure (AVX2-only CPU, a family with one variant)
            entry = {"level": levels[-1] if levels else _core.isa_max(), "source": "only candidate"}
        else:
            if _key is None:
                _key = cache_key()
                _disk = read_cache(cache_path(_key), _key)
            assert _disk is not None
            if family in _disk:
                entry = dict(_disk[family], source="cache")
            else:
                try:
                    samples = measure_family(family)
                    load = load_average()
                    entry = _entry(levels, samples, load)
                    why = disturbed(samples, load, usable_cores())
                except Exception as e:  # a probe must never break a kernel call
                    entry = {"level": levels[-1], "source": f"default (probe failed: {e!r})"}
                else:
                    if why is not None:  # this process only: the next one measures again
                        entry["source"] = f"measured, not cached ({why})"
                        _entries[family] = entry
                        chosen[family] = entry["level"]
                        return entry["level"]
                    stored = {k: v for k, v in entry.items() if k != "source"}
                    fresh = read_cache(cache_path(_key), _key)  # another process may have added
                    _disk = {**fresh, family: stored}
                    write_cache(cache_path(_key), _key, _disk)
        _entries[family] = entry
        chosen[family] = entry["level"]
        return entry["level"]


# --- the weight layout: tq2 or t81, per input width -----------------------------------------
def choose_layout(b1: Mapping[str, Sequence[float]], batch: Mapping[str, Sequence[float]],
                  margin: float = MARGIN) -> str:  # fmt: skip
    """The layout the samples favour (`layout_rule` on the median paired ratios t81 / tq2)."""
    return layout_rule(median_ratio(b1["t81"], b1["tq2"]), median_ratio(batch["t81"], batch["tq2"]), margin)


def layout_rule(r1: float, rb: float, margin: float = MARGIN) -> str:
    """t81 when its kernel is clearly faster (time ratio t81 / tq2 below 1 - margin) for one
    token (r1: decoding) or for a batch (rb: prefill, batched serving) and not slower for the
    other (ratio below 1); else tq2, the layout every level runs. Measured on AMD Zen 4 it
    keeps t81 at K = 2560 (r1 0.97, rb 0.78: a prompt 1.28x faster, a token no slower), not
    at K = 2752..6912 (r1 1.03-1.22: decoding would lose)."""
    if (r1 < 1.0 - margin and rb < 1.0) or (rb < 1.0 - margin and r1 < 1.0):
        return "t81"
    return "tq2"


def measure_layout(k: int, isa_t81: str, isa_b1: str, isa_batch: str) -> tuple[dict, dict]:
    """(one-token samples, batch samples), each layout -> seconds per call per round: t81 at
    `isa_t81` against tq2 at `isa_b1` / `isa_batch` (the levels its families run), one
    thread, on [LAYOUT_ROWS, k] weights cycled through LAYOUT_PROBE_BYTES of copies (cold, as
    a decode step streams them). NumPy buffers: no torch import on the way (mulfree generate)."""
    import numpy as np

    C = _core.core()
    n = LAYOUT_ROWS
    nbytes = -(-n // 32) * 32 * -(-k // 16) * 16 // 4  # packing.packed_nbytes("tq2", n, k)
    copies = max(2, min(64, -(-LAYOUT_PROBE_BYTES // nbytes)))
    rng = np.random.default_rng(0)
    q = np.ascontiguousarray(rng.integers(-1, 2, size=(n, k), dtype=np.int8))

    def aligned(shape, dtype):  # 64-byte aligned, as the kernels' weights are (torch, Arena)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.empty(size + 64, dtype=np.uint8)
        off = -raw.ctypes.data % 64
        return raw[off : off + size].view(dtype).reshape(shape)

    tq2, t81 = aligned((copies, nbytes), np.uint8), aligned((copies, nbytes), np.uint8)
    C.tq2_pack(q.ctypes.data, n, k, tq2.ctypes.data)
    tq2[1:] = tq2[0]
    t81[:] = tq2
    for c in range(copies):
        C.tq2_to_t81(t81[c].ctypes.data, n, k, t81[c].ctypes.data)
    x, y = aligned((LAYOUT_BATCH, k), np.float32), aligned((LAYOUT_BATCH, n), np.float32)
    x[:] = rng.standard_normal((LAYOUT_BATCH, k), dtype=np.float32)
    t81_level = _core.ISA_LEVELS[isa_t81]

    def probe(m: int, tq2_level: int) -> dict[str, list[float]]:
        fns = {"tq2": (C.tq2_linear, tq2, tq2_level), "t81": (C.t81_linear, t81, t81_level)}
        turn = [0]

        def run(name: str) -> None:
            fn, w, lv = fns[name]
            turn[0] = (turn[0] + 1) % copies
            fn(x.ctypes.data, m, k, w[turn[0]].ctypes.data, n, 1.0, 0, y.ctypes.data, 0, 1, lv)

        for name in LAYOUTS:  # warm-up: scratch, page faults
            run(name)
            run(name)
        t0 = time.perf_counter()
        run("tq2")
        calls = max(1, min(200, round(SAMPLE_S / max(time.perf_counter() - t0, 1e-7))))

        def sample(name: str) -> float:
            t = time.perf_counter()
            for _ in range(calls):
                run(name)
            return (time.perf_counter() - t) / calls

        return measure(LAYOUTS, sample)

    return (probe(1, _core.ISA_LEVELS[isa_b1]),
            probe(LAYOUT_BATCH, _core.ISA_LEVELS[isa_batch]))  # fmt: skip


def t81_runs_simd(isa: str) -> bool:
    """True if t81 weights run on the VBMI kernel at level `isa` on this CPU (else on the
    scalar spec). Torch-free (mulfree.kernels.ternary re-exports it)."""
    C = _core.core()
    level = _core.ISA_LEVELS.get(isa, 0)
    return C is not None and level > 0 and C.isa_resolve(level) >= 2 and bool(C.cpu_vbmi())


def layout_levels(isa: str | None = None) -> tuple[str, str, str]:
    """(t81's level, tq2's one-token level, tq2's batch level) for kernel calls asked to run
    at `isa` (None: the process setting): t81 runs at the level `isa` resolves to (its VBMI
    kernel needs AVX-512), tq2 at the level of each ternary family (the dispatcher's pick)."""
    return (_core.resolve_isa(isa), _core.resolve_isa(isa, TERNARY_B1),
            _core.resolve_isa(isa, TERNARY_BATCH))  # fmt: skip


def weight_layout(k: int, isa: str | None = None) -> str:
    """`layout(k, *layout_levels(isa))`: the layout for a weight of k inputs run at `isa`."""
    return layout(k, *layout_levels(isa))


def layout(k: int, isa_t81: str, isa_b1: str, isa_batch: str) -> str:
    """The in-memory layout ("tq2" or "t81") for ternary weights of `k` inputs, t81 calls
    running at `isa_t81` and tq2's one-token and batched calls at `isa_b1` / `isa_batch`
    (`layout_levels`). MULFREE_LAYOUT=tq2 or t81 forces one; else tq2 where t81 has no SIMD
    kernel at `isa_t81` (it needs AVX-512 VBMI), and otherwise the measured choice
    (`choose_layout`), cached per K and levels like the ISA choice."""
    forced = os.environ.get("MULFREE_LAYOUT", "auto").strip().lower() or "auto"
    if forced in LAYOUTS:
        return forced
    if forced != "auto":
        from mulfree.errors import MulfreeError

        raise MulfreeError(f"MULFREE_LAYOUT must be auto, tq2 or t81, not {forced!r}")
    if not t81_runs_simd(isa_t81):
        return "tq2"
    fam = f"{LAYOUT_PREFIX}{int(k)}"
    isas = {"t81": isa_t81, TERNARY_B1: isa_b1, TERNARY_BATCH: isa_batch}
    lv = chosen.get(fam)
    if lv is not None and _entries.get(fam, {}).get("isas") == isas:
        return lv
    global _key, _disk
    with _lock:
        if _key is None:
            _key = cache_key()
            _disk = read_cache(cache_path(_key), _key)
        assert _disk is not None
        if _disk.get(fam, {}).get("isas") == isas:
            entry = dict(_disk[fam], source="cache")
            ratios = entry.get("ratio_t81_to_tq2", {})
            if {"b1", f"b{LAYOUT_BATCH}"} <= ratios.keys():  # the rule of this build, on the file's ratios
                entry["level"] = layout_rule(ratios["b1"], ratios[f"b{LAYOUT_BATCH}"])
        else:
            try:
                b1, batch = measure_layout(int(k), isa_t81, isa_b1, isa_batch)
                load = load_average()
                entry = {
                    "level": choose_layout(b1, batch), "source": "measured", "isas": isas,
                    "load": None if load is None else round(load, 2),
                    "median_us": {f"{n} b{m}": round(statistics.median(s[n]) * 1e6, 2)
                                  for m, s in ((1, b1), (LAYOUT_BATCH, batch)) for n in LAYOUTS},
                    "ratio_t81_to_tq2": {f"b{m}": round(median_ratio(s["t81"], s["tq2"]), 3)
                                         for m, s in ((1, b1), (LAYOUT_BATCH, batch))},
                    "rounds": min(len(v) for s in (b1, batch) for v in s.values()),
                }  # fmt: skip
                why = next((w for w in (disturbed(s, load, usable_cores(), order=("tq2", "t81"))
                                        for s in (b1, batch)) if w), None)  # fmt: skip
            except Exception as e:  # a probe must never break loading a model
                entry = {"level": "tq2", "source": f"default (probe failed: {e!r})", "isas": isas}
                why = "probe failed"
            if why is not None:
                if entry["source"] == "measured":
                    entry["source"] = f"measured, not cached ({why})"
            else:
                stored = {key: v for key, v in entry.items() if key != "source"}
                _disk = {**read_cache(cache_path(_key), _key), fam: stored}
                write_cache(cache_path(_key), _key, _disk)
        _entries[fam] = entry
        chosen[fam] = entry["level"]
        return entry["level"]


def report(measure_all: bool = True) -> dict:
    """What the dispatcher chose: CPU, forced level, and family -> entry (level, source, µs)."""
    out: dict = {"max": _core.isa_max(), "forced": _core.forced_isa()}
    if out["max"] == _core.TORCH:
        out["families"] = {}
        return out
    if measure_all:
        for fam in FAMILIES:
            choice(fam)
    key = _key or cache_key()
    out.update(cpu=key["cpu"], cache=str(cache_path(key)))
    out["families"] = {f: dict(e) for f, e in _entries.items()}
    if _core.forced_isa() not in (None, _core.AUTO):
        for fam, e in out["families"].items():
            if not fam.startswith(LAYOUT_PREFIX):
                e["used"] = _core.forced_isa()
    return out


def summary(measure_all: bool = True) -> str:
    """One line: the level each family runs at and where it came from."""
    r = report(measure_all)
    if r["max"] == _core.TORCH:
        return "isa: torch (compiled core unavailable)"
    forced = r["forced"] not in (None, _core.AUTO)
    parts = []
    for fam, e in r["families"].items():
        lv = r["forced"] if forced and not fam.startswith(LAYOUT_PREFIX) else e["level"]
        us = e.get("median_us")
        detail = " ".join(f"{n} {v:g}" for n, v in us.items()) + " µs" if us else e["source"]
        if us and e["source"] != "measured" and e["source"].startswith("measured"):
            detail += ", " + e["source"].removeprefix("measured, ")  # "not cached (why)"
        parts.append(f"{fam}={lv} ({detail})")
    head = f"isa ({r['cpu']}; forced {r['forced']})" if forced else f"isa ({r['cpu']})"
    return f"{head}: " + ", ".join(parts)
