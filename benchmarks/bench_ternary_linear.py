"""Ternary linear (packed tq2, add-only kernels) against torch's fastest dense F.linear.

Method (printed with the table):
- threads pinned: torch.set_num_threads(T) for torch, threads=T for the kernel; every table is
  run for each T of --threads (default 1 and 2), each T with its own bandwidth measurement;
- every timing is the median of `reps` (>= 20) single calls after `warmup` calls, wall clock
  (time.perf_counter), through the public `ternary_linear` (Python overhead included);
- "hot": the same weight every call (it sits in L2/L3 after the first call);
- "cold": calls cycle through enough copies of the weight (packed copies for the kernel, dense
  copies for torch) to cover >= `cold_mb` MB, so each call reads its weights from DRAM as in
  real decoding (L3 here is 32 MB). Our copies lie back to back in one arena on 2 MiB pages
  (mulfree.kernels.memory), as `load_packed` / `place_weights_` lay out a model's weights; the
  same calls on ordinary 4 KiB-page tensors are reported beside them;
- baseline: F.linear in fp32 and in bf16 (weights and activations in that dtype), cold on
  ordinary tensors and in a huge-page arena too, whichever is fastest for that shape, batch and
  condition;
- bandwidth (best of 10): "read" = fp32 sum over a `cold_mb` buffer (a streaming read),
  "copy" = Tensor.copy_ of `cold_mb` MB (bytes copied / time); roofline time = packed bytes /
  read bw, so "% roofline" = roofline time / our cold time.
- summary: per shape and T, each batch's cold time over batch 1's (the cost of sharing one weight
  read across tokens; issue #14 asks <= 3x at batch 8) and, per shape and batch, the cold time at
  1 thread over the time at each other T (thread scaling, same run);
- ISA levels: the main table times the level the dispatcher picks for each batch (`isa=None`:
  per kernel family the level measured fastest on this CPU, mulfree.kernels.dispatch; or
  `--isa`); a second table times every SIMD level (`--isas`, default all this CPU has but
  scalar, the 100-300x slower spec) side by side, hot and cold, interleaved in the same rounds
  as the main variants, and marks the dispatcher's pick; `avx512-t81` there is the t81 layout
  (4 weights per byte as one base-3 index, vpermi2b lookups; where the CPU has AVX-512 VBMI) on
  its own copies, with its batch cost per shape in the summary;
- OpenMP wait policy: `import mulfree` (first, before torch) sets GOMP_SPINCOUNT=100000 unless
  OMP_WAIT_POLICY / GOMP_SPINCOUNT are set (csrc/README.md, "Threads": libgomp's default 300000
  spins made 2 threads stall 50-100 ms per step on busy shared cores); it applies to torch and
  the kernels alike (one libgomp). Both are printed; so is the load average: on cores shared
  with other busy processes the 2-thread figures measure the other processes too.
Run: python benchmarks/bench_ternary_linear.py [--threads 1,2] [--batches 1,8,16] [--reps 40]
     [--rounds 5] [--cold-mb 512] [--isas avx2,avx512] [--shapes 2048x2048,5632x2048]
     python benchmarks/bench_ternary_linear.py --quick   (issue #14's shapes, batch 1/8, 1/2 threads)
"""

from __future__ import annotations

# isort: off
import mulfree  # noqa: F401  (first: its OpenMP spin default must precede torch's libgomp)

# isort: on
import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mulfree import kernels
from mulfree.kernels import dispatch, memory
from mulfree.kernels import ternary as K_
from mulfree.ternary.packed_linear import ternary_linear, ternary_linear_torch
from mulfree.ternary.packing import PackedTernary
from mulfree.ternary.quant import act_fake_quant, weight_fake_quant

# (in_features, out_features): the official MMfreeLM 370M / 1.3B projection shapes and the head
SHAPES = [
    (1024, 1024),
    (1024, 5632),
    (2816, 1024),
    (2048, 2048),
    (2048, 11264),
    (5632, 2048),
    (1024, 32000),
]
T81 = "avx512-t81"  # the t81 layout on its VBMI kernel (csrc/mf_ternary.c section 5), as a level
TARGET_SHAPES = {(2048, 2048), (2048, 11264), (5632, 2048)}  # 1.3B: >= 8x at 1, >= 3x at 8
DT_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16"}
# --quick: the four shapes issue #14 sets targets on, batches 1 and 8 (the lead's final run)
QUICK = {"shapes": "2048x2048,2048x5632,5632x2048,1024x32000", "batches": "1,8", "reps": 20,
         "rounds": 4, "cold_mb": 256}  # fmt: skip


def _times(calls, reps: int, warmup: int) -> list[float]:
    """Wall times of `reps` single calls after `warmup`; `calls` is cycled through (len 1 = hot)."""
    for i in range(warmup):
        calls[i % len(calls)]()
    times = []
    for i in range(reps):
        f = calls[(warmup + i) % len(calls)]
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return times


def _interleaved_medians(variants: dict, reps: int, rounds: int) -> dict:
    """name -> median time over `reps` calls of each variant, taken in `rounds` interleaved
    slices (a, b, c, a, b, c, ...) so that every variant sees the same drift of a shared
    machine; variants: name -> (calls, warmup)."""
    per = -(-reps // rounds)
    samples: dict = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (calls, warmup) in variants.items():
            samples[name] += _times(calls, per, warmup)
    return {name: statistics.median(t) for name, t in samples.items()}


def _best_time(f, reps: int) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(mb: int, reps: int = 10) -> tuple[float, float]:
    """(read GB/s, copy GB/s) over `mb` MB buffers, with torch's current thread count; best of
    `reps` (what the memory system can deliver, not the median under shared-core noise)."""
    n = mb * (1 << 20) // 4
    src, dst = torch.ones(n), torch.empty(n)
    read = _best_time(lambda: src.sum(), reps)
    copy = _best_time(lambda: dst.copy_(src), reps)
    nbytes = n * 4
    return nbytes / read / 1e9, nbytes / copy / 1e9


@dataclass
class Row:
    k: int
    n: int
    m: int
    threads: int
    packed_mb: float
    ours_hot: float
    ours_cold: float  # weights in a huge-page arena, as load_packed / place_weights_ lay them out
    ours_cold_4k: float  # the same calls on ordinary 4 KiB-page tensors
    torch_hot: float  # fastest dense variant, hot
    torch_hot_name: str
    torch_cold: float  # fastest dense variant, cold (fp32 / bf16 x ordinary / huge pages)
    torch_cold_name: str
    read_gbs: float
    per_isa: dict  # ISA level -> (hot, cold) seconds, the same rounds as the columns above
    picked: str  # the level the dispatcher runs for this batch (or --isa); T81: the t81 layout
    layout: str = "tq2"  # the main columns' layout (the engine's for this K)

    def isa_cells(self, isas: list[str]) -> list[str]:
        cold = {n: self.per_isa[n][1] for n in isas}
        fastest = min(cold, key=cold.get)
        cells = [f"{self.k}→{self.n}", str(self.m), str(self.threads)]
        cells += [f"{self.per_isa[n][0] * 1e6:.0f}" for n in isas]
        cells += [f"{cold[n] * 1e6:.0f}" + (" *" if n == fastest else "") for n in isas]
        pick = cold.get(self.picked)
        cells.append(self.picked)
        cells.append(f"{pick / cold[fastest]:.2f}" if pick is not None else "-")
        return cells

    def cells(self) -> list[str]:
        roof = self.packed_mb * 1e6 / (self.read_gbs * 1e9)
        return [
            f"{self.k}→{self.n}" + (f" ({self.layout})" if self.layout != "tq2" else ""),
            str(self.m),
            str(self.threads),
            f"{self.packed_mb:.2f}",
            f"{self.ours_hot * 1e6:.0f}",
            f"{self.torch_hot * 1e6:.0f} ({self.torch_hot_name})",
            f"**{self.torch_hot / self.ours_hot:.1f}x**",
            f"{self.ours_cold * 1e6:.0f}",
            f"{self.ours_cold_4k * 1e6:.0f}",
            f"{self.torch_cold * 1e6:.0f} ({self.torch_cold_name})",
            f"**{self.torch_cold / self.ours_cold:.1f}x**",
            f"{self.torch_cold / self.ours_cold_4k:.1f}x",
            f"{self.packed_mb * 1e6 / self.ours_cold / 1e9:.1f}",
            f"{self.read_gbs:.1f}",
            f"{100 * roof / self.ours_cold:.0f}%",
        ]


HEADER = [
    "shape K→N",
    "batch",
    "threads",
    "packed MB",
    "ours hot µs",
    "torch hot µs",
    "ratio hot",
    "ours cold µs",
    "ours cold µs, 4K pages",
    "torch cold µs",
    "ratio cold",
    "ratio cold, 4K pages",
    "ours cold GB/s",
    "streaming read GB/s (same T)",
    "% roofline (cold)",
]


def bench_shape(
    k: int,
    n: int,
    batches: list[int],
    threads: int,
    reps: int,
    warmup: int,
    cold_mb: int,
    isa,
    rounds: int = 5,
    isas: tuple[str, ...] = (),
) -> list[Row]:
    torch.manual_seed(0)
    w = torch.randn(n, k) * 0.02
    packed = PackedTernary.from_float(w)
    pbytes = packed.nbytes
    # "ours": the layout the engine gives weights of k inputs (load_packed / LiteModel.load:
    # t81 where kernels.dispatch measured its kernel faster, else tq2), at the dispatcher's levels
    auto = isa in (None, "auto")
    layout = "tq2" if kernels.resolve_isa(isa) == kernels.TORCH else dispatch.weight_layout(k, None if auto else isa)
    main = packed.to_format(layout)
    # cold sets: enough copies to cover cold_mb (at least 2); ours twice: back to back in one
    # huge-page arena (how load_packed / place_weights_ lay out a model) and as ordinary tensors
    n_packed = max(2, -(-cold_mb * (1 << 20) // pbytes))
    _, datas = memory.copy_to_arena([packed.data] * n_packed)
    packed_copies = [PackedTernary(d, packed.scale, n, k) for d in datas]
    layouts = {level: (packed, packed_copies) for level in isas}
    main_copies = packed_copies
    if layout != "tq2":
        main_copies = [PackedTernary(d, packed.scale, n, k, layout)
                       for d in memory.copy_to_arena([main.data] * n_packed)[1]]  # fmt: skip
    if T81 in isas:  # the t81 layout (kernels.ternary.t81_linear): its own arena of copies
        p81 = packed.to_format("t81")
        _, datas81 = memory.copy_to_arena([p81.data] * n_packed)
        layouts[T81] = (p81, [PackedTernary(d, packed.scale, n, k, "t81") for d in datas81])
    packed_4k = [PackedTernary(main.data.clone(), packed.scale, n, k, layout) for _ in range(n_packed)]
    dense_copies = {}  # (dtype, pages) -> copies; torch gets the huge pages too, to be fair
    for dt in (torch.float32, torch.bfloat16):
        wd = w.to(dt)
        nd = max(2, -(-cold_mb * (1 << 20) // (wd.numel() * wd.element_size())))
        dense_copies[dt, "4K"] = [wd.clone() for _ in range(nd)]
        dense_copies[dt, "huge"] = memory.copy_to_arena([wd] * nd)[1]
    rows = []
    for m in batches:
        x = torch.randn(m, k)
        # sanity: the timed kernel computes BitLinear's forward (bit-exact vs the int path)
        y = ternary_linear(x, main, threads=threads, isa=isa)
        assert torch.equal(y, ternary_linear_torch(x, packed))
        assert torch.equal(ternary_linear(x, main_copies[-1], threads=threads, isa=isa), y)
        ref = F.linear(act_fake_quant(x), weight_fake_quant(w))
        assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

        def ours(p, x=x):
            return lambda: ternary_linear(x, p, threads=threads, isa=isa)

        def at(level, p, x=x):
            return lambda: ternary_linear(x, p, threads=threads, isa=level)

        variants = {
            "ours_hot": ([ours(main)], warmup),
            "ours_cold": ([ours(p) for p in main_copies], len(main_copies)),
            "ours_cold_4k": ([ours(p) for p in packed_4k], len(packed_4k)),
        }
        for level in isas:  # every level side by side, in the same interleaved rounds
            hot_w, cold_ws = layouts[level]
            run_at = "avx512" if level == T81 else level
            assert torch.equal(ternary_linear(x, hot_w, threads=threads, isa=run_at), y)
            variants[level, "hot"] = ([at(run_at, hot_w)], warmup)
            variants[level, "cold"] = ([at(run_at, p) for p in cold_ws], len(cold_ws))
        for dt in (torch.float32, torch.bfloat16):
            wd, xd = w.to(dt), x.to(dt)
            variants[DT_NAME[dt], "hot"] = ([lambda wd=wd, xd=xd: F.linear(xd, wd)], warmup)
            for pages in ("4K", "huge"):
                copies = dense_copies[dt, pages]
                calls = [lambda c=c, xd=xd: F.linear(xd, c) for c in copies]
                variants[DT_NAME[dt], pages] = (calls, len(copies))
        t = _interleaved_medians(variants, reps, rounds)
        del variants
        hot = min((t[DT_NAME[dt], "hot"], DT_NAME[dt]) for dt in (torch.float32, torch.bfloat16))
        cold = min(
            (t[DT_NAME[dt], pages], f"{DT_NAME[dt]}, {pages}")
            for dt in (torch.float32, torch.bfloat16)
            for pages in ("4K", "huge")
        )
        rows.append(
            Row(
                k,
                n,
                m,
                threads,
                pbytes / 1e6,
                t["ours_hot"],
                t["ours_cold"],
                t["ours_cold_4k"],
                hot[0],
                hot[1],
                cold[0],
                cold[1],
                0.0,
                {level: (t[level, "hot"], t[level, "cold"]) for level in isas},
                T81 if layout == "t81" and auto else kernels.resolve_isa(isa, kernels.ternary_family(m)),
                layout,
            )  # fmt: skip
        )
    del dense_copies
    return rows


def run(
    shapes=SHAPES,
    batches=(1, 8, 16),
    threads: tuple[int, ...] = (1, 2),
    reps: int = 40,
    warmup: int = 5,
    cold_mb: int = 512,
    isa: str | None = None,
    rounds: int = 5,
    isas: tuple[str, ...] | None = None,
) -> str:
    """Run the benchmark and return the Markdown report (method, tables, summaries)."""
    if reps < 20:
        raise ValueError("reps must be >= 20")
    threads = tuple(threads)
    path = kernels.resolve_isa(isa)
    if isas is None:
        isas = tuple(n for n in kernels.available_isas() if n not in ("torch", "scalar"))
        isas += (T81,) if K_.t81_runs_simd("avx512") else ()
    isas = tuple(isas) if path != kernels.TORCH else ()
    picks = {m: kernels.resolve_isa(isa, kernels.ternary_family(m)) for m in batches}
    summary = kernels.isa_summary()
    load0 = os.getloadavg()
    bandwidth = {}  # threads -> (read, copy) GB/s
    rows: list[Row] = []
    for nt in threads:
        torch.set_num_threads(nt)
        bandwidth[nt] = measure_bandwidth(cold_mb)
        for k, n in shapes:
            for r in bench_shape(k, n, list(batches), nt, reps, warmup, cold_mb, isa, rounds,
                                 isas):  # fmt: skip
                r.read_gbs = bandwidth[nt][0]
                rows.append(r)
    load1 = os.getloadavg()
    picked = ", ".join(f"batch {m}: {lv}" for m, lv in picks.items())
    lines = [
        f"### Ternary linear (the engine's layout per K, tq2 unless marked; {picked}) vs torch "
        f"{torch.__version__} F.linear",
        "",
        f"Dispatcher: {summary}",
        "",
        f"Method: {', '.join(map(str, threads))} threads (torch.set_num_threads and kernel threads), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, median of {reps} "
        f"single calls after warm-up ({warmup} hot; one full cycle cold), taken in {rounds} "
        "interleaved slices (ours, torch fp32, torch bf16, ours, ...) so that both sides see "
        "the same drift of the shared machine, wall clock through "
        f"`ternary_linear`. Hot = same weights every call; cold = cycling through >= {cold_mb} MB "
        "of weight copies (each format its own copies): ours back to back in one arena on 2 MiB "
        "pages, as load_packed / place_weights_ lay out a model's weights (`ours cold, 4K "
        "pages`: ordinary tensors); torch's on ordinary pages and in such an arena. Torch = "
        "fastest of fp32 / bf16 (x 4K / huge pages when cold) F.linear per row and condition. "
        f"Bandwidth ({cold_mb} MB buffers, best of 10, per thread count): "
        + "; ".join(
            f"{nt} threads: read (fp32 sum) {r:.1f} GB/s, copy (Tensor.copy_, bytes "
            f"copied / s) {c:.1f} GB/s"
            for nt, (r, c) in bandwidth.items()
        )
        + "; "
        "roofline = packed bytes / read bandwidth. Ratio = torch time / ours. "
        f"Load average before/after: {load0[0]:.2f} / {load1[0]:.2f} (cores shared).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    lines.append("")
    if isas:
        head = ["shape K→N", "batch", "threads"] + [f"{n} hot µs" for n in isas]
        head += [f"{n} cold µs" for n in isas] + ["dispatcher picks", "picked / fastest (cold)"]
        lines += [
            "Every ISA level side by side (same rounds; * = fastest cold):",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        lines += ["| " + " | ".join(r.isa_cells(list(isas))) + " |" for r in rows]
        lines.append("")
    lines += _scaling_lines(rows)
    for r in rows:
        if (r.k, r.n) in TARGET_SHAPES:
            target = 8.0 if r.m == 1 else 3.0
            ok = "met" if r.torch_cold / r.ours_cold >= target else "MISSED"
            lines.append(
                f"- target {target:.0f}x at {r.k}→{r.n}, batch {r.m}, {r.threads} threads: cold "
                f"{r.torch_cold / r.ours_cold:.1f}x, hot {r.torch_hot / r.ours_hot:.1f}x ({ok}, cold)"
            )
    return "\n".join(lines)


def _scaling_lines(rows: list[Row]) -> list[str]:
    """Batch cost (cold time at batch m / at batch 1, same shape and threads) and thread scaling
    (cold time at the fewest threads / at each other count, same shape and batch)."""
    cold = {(r.k, r.n, r.m, r.threads): r.ours_cold for r in rows}
    out = []
    for (k, n, m, t), v in cold.items():
        one = cold.get((k, n, 1, t))
        if m != 1 and one is not None:
            out.append(f"- batch cost {k}→{n}, {t} threads: batch {m} = {v / one:.2f}x batch 1 "
                       f"(cold; {v / one / m:.2f}x per token)")  # fmt: skip
    for r in rows:  # the same batch cost per level of the side-by-side table
        base = next((b for b in rows if (b.k, b.n, b.threads, b.m) == (r.k, r.n, r.threads, 1)), None)
        if r.m != 1 and base is not None and r.per_isa:
            per = ", ".join(f"{lv} {r.per_isa[lv][1] / base.per_isa[lv][1]:.2f}x"
                            for lv in r.per_isa)  # fmt: skip
            out.append(f"- batch cost per level {r.k}→{r.n}, {r.threads} threads: batch {r.m} = "
                       f"{per} batch 1 (cold)")  # fmt: skip
    t_min = min((r.threads for r in rows), default=1)
    for (k, n, m, t), v in cold.items():
        base = cold.get((k, n, m, t_min))
        if t != t_min and base is not None:
            out.append(f"- thread scaling {k}→{n}, batch {m}: {t} threads = {base / v:.2f}x "
                       f"{t_min} thread(s) (cold)")  # fmt: skip
    return out + ([""] if out else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved slices of the reps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cold-mb", type=int, default=512)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--isa", default=None, help="auto | avx512 | avx2 | scalar | torch")
    ap.add_argument("--shapes", default=None, help="e.g. 2048x2048,5632x2048 (KxN)")
    ap.add_argument("--isas", default=None,
                    help="levels side by side, e.g. scalar,avx2,avx512 (default: SIMD levels)")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="issue #14's four shapes at batch 1 and 8, 1 and 2 threads, 20 reps, "
                    "256 MB cold sets (explicit --shapes/--batches/--reps/--cold-mb still win)")  # fmt: skip
    a = ap.parse_args()
    if a.quick:
        for name, value in QUICK.items():
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    shapes = SHAPES
    if a.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    batches = tuple(int(b) for b in a.batches.split(","))
    isas = tuple(a.isas.split(",")) if a.isas else None
    threads = tuple(int(t) for t in a.threads.split(","))
    print(run(shapes, batches, threads, a.reps, a.warmup, a.cold_mb, a.isa, a.rounds, isas))


if __name__ == "__main__":
    main()
