"""tfm_attend (csrc/mf_tfm.c) at the BitNet b1.58 2B4T attention shape: exact vs L-Mul products.

One call is one layer's attention of one token (20 query heads over 5 kv heads, head_dim 128, a
bfloat16 cache); a decode step makes 30 (one per layer). The 30 layers get 30 separate caches,
so the keys and values stream from memory as in a real step (30 x 5.2 MB at context 2048,
more than the L3). q, keys and values are random normal (`--zeros` makes a fraction of q exact
zeros; the q of a random 2B4T-shape model after RoPE has none, and timed on its own cache it
costs what a random q does, within 1 %: exact 20.7 ms, L-Mul 39.7-39.9 ms at context 2048 on
the AVX2 level). The op is driven through the C entry point the tests use (mulfree._C.tfm_attend).

Printed per (ISA level, threads, context): attention ms per token (30 calls) exact and L-Mul,
their ratio, and the step-level ratio that implies: (S - exact + L-Mul) / S, S the exact step
time (`--step-ms ctx:threads:ms,...`, figures of bench_bitnet.py on the machine, or measured
with --step). Exact and L-Mul calls alternate token by token (one process, the same load);
median of --tokens tokens after a warm-up token. The load average is printed. `--step PACKED` (a packed 2B4T-shape model with an int8 head, e.g. the one
bench_bitnet.py converts into /tmp/mulfree-bench-bitnet/2b4t/packed-int8) also times the whole
compiled decode step, exact vs L-Mul attention, as bench_bitnet does, and uses its exact step
time for the step ratio. `--baseline` names another build of the compiled core (e.g. main's
src/mulfree/_C*.so) whose tfm_attend is timed in the same rounds, for before / after ratios.

    flock /tmp/mulfree-bench.lock python benchmarks/bench_tfm_attend.py
    python benchmarks/bench_tfm_attend.py --isa avx2,avx512 --baseline /path/to/old/_C.so \
        --step /tmp/mulfree-bench-bitnet/2b4t/packed-int8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from mulfree import kernels
from mulfree.engine import bitnet_ref as ref
from mulfree.kernels import ISA_LEVELS

H, HKV, HD, LAYERS = 20, 5, 128, 30  # microsoft/bitnet-b1.58-2B-4T


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_caches(ctx: int, seed: int = 0) -> list[ref.Cache]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(LAYERS):
        c = ref.Cache(1, HKV, HD, ctx, "bfloat16")
        c.k[...] = ref.bf16_round(rng.standard_normal(c.k.shape, dtype=np.float32))
        c.v[...] = ref.bf16_round(rng.standard_normal(c.v.shape, dtype=np.float32))
        out.append(c)
    return out


def make_q(seed: int = 1, zeros: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, H, HD), dtype=np.float32) * 2.0
    q[rng.random(q.shape) < zeros] = 0.0
    return q


def token_ms(C, caches, q, out, n: int, mbits: int, level: int, threads: int) -> float:
    """One token's attention (every layer's tfm_attend) in ms, the context n positions."""
    rows = np.array([[0, n - 1]], dtype=np.int64)
    qp, op, rp = q.ctypes.data, out.ctypes.data, rows.ctypes.data
    t0 = time.perf_counter()
    for c in caches:
        C.tfm_attend(qp, 1, H * HD, op, H * HD, c.k.ctypes.data, c.v.ctypes.data, 0, 0,
                     ref.KV_DTYPES["bfloat16"], H, HKV, HD, c.ctx, rp, HD**-0.5, mbits, level,
                     threads)  # fmt: skip
    return (time.perf_counter() - t0) * 1e3


def time_steps(args) -> dict[tuple[int, int], float]:
    """Whole compiled decode steps (bench_bitnet's decoders and interleaved timing): exact and
    L-Mul attention at each (context, threads); returns the exact step ms per (context, threads)."""
    import torch

    from bench_bitnet import decoders, time_interleaved
    from mulfree.engine import load_packed

    model = load_packed(args.step)
    exact = {}
    for t in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(t)
        for ctx in (int(c) for c in args.contexts.split(",")):
            runs = decoders(model, t, ctx, args.mantissa_bits, torch_path=False)
            res = time_interleaved(runs, ctx, args.step_rounds)
            e, lm = res["compiled exact"] * 1e3, res["compiled lmul"] * 1e3
            exact[(ctx, t)] = e
            print(f"[step, {t} thread(s)] context {ctx}: exact {e:.1f} ms ({1e3 / e:.2f} tok/s), "
                  f"L-Mul {lm:.1f} ms ({1e3 / lm:.2f} tok/s): L-Mul / exact {lm / e:.3f}x | {load()}",
                  flush=True)  # fmt: skip
            del runs
    del model
    return exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="128,2048")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--isa", default=None,
                    help="levels to compare, e.g. avx2,avx512 (default: $MULFREE_ISA or the best)")  # fmt: skip
    ap.add_argument("--tokens", type=int, default=15)
    ap.add_argument("--mantissa-bits", type=int, default=3)
    ap.add_argument("--zeros", type=float, default=0.0, help="fraction of q elements that are 0")
    ap.add_argument("--step-ms", default="",
                    help="exact step ms per ctx:threads for the step ratio, e.g. 2048:2:75,128:2:55 "
                         "(bench_bitnet's compiled exact, int8 head, 2B4T shape, this machine)")  # fmt: skip
    ap.add_argument("--baseline", default=None,
                    help="path of another _C build (e.g. /work/main/src/mulfree/_C...so) to time too")  # fmt: skip
    ap.add_argument("--step", default=None, metavar="PACKED",
                    help="a packed 2B4T-shape int8-head model: time the whole step too")  # fmt: skip
    ap.add_argument("--step-rounds", type=int, default=6)
    args = ap.parse_args()
    from mulfree.kernels._core import core

    cores = {"": core()}
    if args.baseline:
        import importlib.util

        spec = importlib.util.spec_from_file_location("mf_baseline._C", args.baseline)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cores["baseline "] = mod
    names = args.isa.split(",") if args.isa else [kernels.resolve_isa()]
    step = {}
    for item in filter(None, args.step_ms.split(",")):
        c, t, ms = item.split(":")
        step[(int(c), int(t))] = float(ms)
    print(load())
    if args.step:
        step.update(time_steps(args))
    print(f"tfm_attend, 2B4T shape: {H} heads / {HKV} kv heads, head_dim {HD}, bf16 cache, "
          f"{LAYERS} layers per token, q {args.zeros:.0%} zeros, L-Mul {args.mantissa_bits} bits")  # fmt: skip
    q = make_q(zeros=args.zeros)
    out = np.zeros_like(q)
    for ctx in (int(c) for c in args.contexts.split(",")):
        caches = make_caches(ctx)
        for t in (int(x) for x in args.threads.split(",")):
            runs = {(b, isa, m): [] for b in cores for isa in names for m in ("exact", "lmul")}
            for _ in range(args.tokens + 1):
                for b, isa, m in runs:
                    mb = -1 if m == "exact" else args.mantissa_bits
                    runs[(b, isa, m)].append(
                        token_ms(cores[b], caches, q, out, ctx, mb, ISA_LEVELS[isa], t)
                    )
            for b, isa in ((b, isa) for b in cores for isa in names):
                e = statistics.median(runs[(b, isa, "exact")][1:])
                lm = statistics.median(runs[(b, isa, "lmul")][1:])
                line = (f"{b}[{isa}, {t} thread(s)] context {ctx}: attention per token exact "
                        f"{e:.2f} ms, L-Mul {lm:.2f} ms (L-Mul / exact {lm / e:.2f}x, +{lm - e:.2f} ms)")  # fmt: skip
                s = step.get((ctx, t))
                if s:
                    line += f"; step ratio at an exact step of {s:.0f} ms: {(s - e + lm) / s:.3f}x"
                print(line, flush=True)
        del caches
    print(load())


if __name__ == "__main__":
    main()
