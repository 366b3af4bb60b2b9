"""L-Matmul throughput vs torch fp32 `matmul` and vs the pure-torch emulation (issues #4, #14).

Method: threads pinned (--threads, default 2); random normal operands (exact zeros, which
torch.randn produces now and then at these sizes, replaced by 1e-3). Every compiled variant is
run at every SIMD level this CPU has (avx2, avx512: `use_isa`), so the levels' ratios come from
one run; the dispatcher's own pick for the family is printed at the top.

Square sizes (--sizes): for each size, 2 warm-up calls then the median of --repeats timed calls
(time.perf_counter) of:
  - torch.matmul, float32 (the baseline);
  - mulfree.lmul.lmatmul, float32 operands (compiled kernel, fast add-only route; every product
    is a normal number, so the no-underflow kernel runs);
  - the same with 1 % of A's entries set to 0 (zeros scattered at random: the per-lane
    compare runs on every tile);
  - mulfree.lmul.lmatmul, bfloat16 operands (compiled kernel on widened operands);
  - the pure-torch emulation (mulfree.lmul.ops.lmatmul_reference, which materializes every
    L-Mul product with vectorized integer tensor ops). Its cost is linear in K, so for large
    sizes it is timed on a K-slice (--emu-k) and scaled by K / slice (printed as such).
The kernel route of each compiled variant is printed (0 full, 1 fast with zero / underflow
handling, 2 fast no-underflow; `lmatmul_f32`'s return value).
Throughput is counted as 2*M*N*K "flop-equivalents" per second (one multiply + one add per
product, as for GEMM). Ratios are against numbers measured in the same run.

Attention shapes (--attn, default on): L-Mul attention's two products per layer, q kᵀ =
[H, Tq, hd] x [H, hd, ctx] and p v = [H, Tq, ctx] x [H, ctx, hd], float32, k = 23 and k = 3
(LMulConfig(mantissa_bits=3)); q, k, v normal.
  - decode / chunked (H = --heads, hd = --head-dim, Tq = --queries, ctx = --ctx): p is
    softmax-like with its last ctx/8 columns zero (a padding mask);
  - prefill (--prefill T list, hd in --prefill-head-dims, Tq = ctx = T, H = --heads for
    T <= 512, else 4): p has a causal mask's zeros (row i zero past column i: about half).
Each is timed through the public `lmatmul` at every level and as the raw compiled call at the
dispatcher's level (`lmatmul_f32` on prepared contiguous operands; the difference is the
Python/custom-op layer), against torch.matmul fp32 on the same operands, interleaved (torch,
each level, raw, torch, ...) so all see the same drift of a shared machine: the median over 6
rounds of each round's fastest call (see _interleaved).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _timing import median_time
from mulfree.kernels import ISA_LEVELS, LMATMUL, available_isas, resolve_isa, use_isa
from mulfree.kernels._core import core
from mulfree.lmul import lmatmul
from mulfree.lmul.ops import lmatmul_reference

LEVELS = [isa for isa in available_isas() if isa in ("avx2", "avx512")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,2048", help="square sizes M=K=N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--emu-k", type=int, default=64, help="K-slice for timing the emulation")
    ap.add_argument("--no-attn", dest="attn", action="store_false", help="skip attention shapes")
    ap.add_argument("--no-square", dest="square", action="store_false", help="skip square sizes")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--queries", default="1,8,64", help="query rows Tq per head")
    ap.add_argument("--ctx", default="256,1024", help="context lengths")
    ap.add_argument("--prefill", default="128,512,2048", help="prefill lengths T ('' = none)")
    ap.add_argument("--prefill-head-dims", default="64,128")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.2f} (cores shared?); "
        f"threads={torch.get_num_threads()} levels={','.join(LEVELS)} "
        f"dispatcher's lmatmul level={resolve_isa(family=LMATMUL)} torch={torch.__version__}; "
        f"median of {args.repeats} (fewer for slow variants) after warm-up calls"
    )
    if args.attn:
        _attention(args)
    if args.square:
        _square(args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def _square(args) -> None:
    print(
        f"\n{'size':>6} {'variant':34} {'time ms':>11} {'GFLOP-eq/s':>11} {'vs fp32 GEMM':>13} {'vs emulation':>13}"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        a[a == 0], b[b == 0] = 1e-3, 1e-3
        az = a.clone()
        az.view(-1)[torch.randperm(n * n, generator=gen)[: n * n // 100]] = 0.0
        ab, bb = a.bfloat16(), b.bfloat16()
        flops = 2.0 * n**3
        reps = args.repeats if n <= 1024 else max(5, args.repeats // 4)
        rows = [
            (
                "torch.matmul fp32",
                median_time(lambda a=a, b=b: torch.matmul(a, b), args.repeats),
                None,
            )
        ]
        for isa in LEVELS:
            with use_isa(isa):
                for label, x, y, ops in (("fp32", a, b, (a, b)), ("fp32, 1% zeros", az, b, (az, b)),
                                         ("bf16", ab, bb, (ab.float(), bb.float()))):  # fmt: skip
                    t = median_time(lambda x=x, y=y: lmatmul(x, y), reps)
                    rows.append((f"lmatmul {label} [{isa}]", t, (isa, *ops)))
        ks = min(n, args.emu_k) if n > 512 else n
        a3, b3 = a[None, :, :ks].contiguous(), b[None, :ks, :].contiguous()
        t_emu = median_time(lambda a3=a3, b3=b3: lmatmul_reference(a3, b3), 1, warmup=0) * (n / ks)
        rows.append(("torch emulation" + (f" (K={ks} x{n // ks})" if ks < n else ""), t_emu, None))
        t_gemm = rows[0][1]
        for label, t, ops in rows:
            route = f" route {_route(*ops)}" if ops is not None else ""
            print(
                f"{n:>6} {label:34} {t * 1e3:11.2f} {flops / t / 1e9:11.2f} {t_gemm / t:12.3f}x {t_emu / t:12.1f}x{route}"
            )


def _interleaved(fns: dict, repeats: int, rounds: int = 6) -> dict:
    """name -> the median over `rounds` interleaved slices of each slice's fastest call (of
    ~repeats / rounds calls of each fn). The fastest, not the median, of a slice: on a shared
    machine a 2-thread call whose second thread is descheduled takes a time slice (~4-8 ms)
    longer, whichever kernel it runs (torch's too); seen as 8 ms medians for 20 us products."""
    per = max(2, -(-repeats // rounds))
    samples: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()  # warm-up
            ts = []
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            samples[name].append(min(ts))
    return {name: statistics.median(t) for name, t in samples.items()}


def _attention(args) -> None:
    """q kᵀ and p v at attention shapes: ours (public at every level, raw call) vs torch."""
    H, hd = args.heads, args.head_dim
    cases = []  # (section, H, Tq, ctx, hd, causal)
    for ctx in (int(c) for c in args.ctx.split(",")):
        for tq in (int(q) for q in args.queries.split(",")):
            cases.append(("decode/chunk", H, tq, ctx, hd, False))
    for t in (int(x) for x in args.prefill.split(",") if x):
        for d in (int(x) for x in args.prefill_head_dims.split(",")):
            cases.append(("prefill, causal", H if t <= 512 else 4, t, t, d, True))
    level = resolve_isa(family=LMATMUL)
    cols = " ".join(f"{isa + ' us':>10}" for isa in LEVELS)
    ratios = " ".join(f"{isa + '/torch':>12}" for isa in LEVELS)
    print(
        f"\nattention products, float32 operands (median over rounds of the fastest call; "
        f"raw = the compiled call at {level})"
    )
    print(
        f"{'product':>36} {'k':>3} {'torch us':>9} {cols} {'raw us':>9} {ratios} {'raw/torch':>10} route"
    )
    section = None
    for name_s, h, tq, ctx, d, causal in cases:
        if name_s != section:
            section = name_s
            print(f"-- {section}")
        gen = torch.Generator().manual_seed(ctx + tq + d)
        q = torch.randn(h, tq, d, generator=gen)
        kt = torch.randn(h, d, ctx, generator=gen)  # kᵀ, as attention passes it (contiguous)
        p = torch.rand(h, tq, ctx, generator=gen)
        if causal:  # row i sees columns <= i + (ctx - tq)
            i, j = torch.arange(tq)[:, None], torch.arange(ctx)[None, :]
            p = p.masked_fill(j > i + (ctx - tq), 0.0)
        else:
            p[:, :, ctx - ctx // 8 :] = 0.0  # a padding mask's zeros
        p = p / p.sum(-1, keepdim=True)
        v = torch.randn(h, ctx, d, generator=gen)
        reps = args.repeats if h * tq * ctx * d < 2**28 else max(4, args.repeats // 4)
        for name, a, b in ((f"q·kᵀ [{h},{tq},{d}]x[{d},{ctx}]", q, kt),
                           (f"p·v [{h},{tq},{ctx}]x[{ctx},{d}]", p, v)):  # fmt: skip
            out = torch.empty(h, a.shape[1], b.shape[2])
            for k in (23, 3):
                mb = None if k == 23 else k

                def raw(a=a, b=b, out=out, k=k, h=h):
                    return core().lmatmul_f32(
                        a.data_ptr(), b.data_ptr(), out.data_ptr(), h, a.shape[1], a.shape[2],
                        b.shape[2], k, 0, ISA_LEVELS[level], torch.get_num_threads(), -1)  # fmt: skip

                def ours(isa, a=a, b=b, mb=mb):
                    with use_isa(isa):
                        return lmatmul(a, b, mantissa_bits=mb)

                fns = {"torch": lambda a=a, b=b: torch.matmul(a, b)}
                fns.update({isa: (lambda isa=isa: ours(isa)) for isa in LEVELS})
                fns["raw"] = raw
                t = _interleaved(fns, reps)
                lv = " ".join(f"{t[isa] * 1e6:10.0f}" for isa in LEVELS)
                lr = " ".join(f"{t['torch'] / t[isa]:11.2f}x" for isa in LEVELS)
                print(f"{name:>36} {k:>3} {t['torch'] * 1e6:9.0f} {lv} {t['raw'] * 1e6:9.0f} "
                      f"{lr} {t['torch'] / t['raw']:9.2f}x {raw()}")  # fmt: skip


def _route(isa: str, a: torch.Tensor, b: torch.Tensor) -> int:
    """The compiled L-Matmul's route code for these float32 operands (k = 23, int mode)."""
    c = torch.empty(a.shape[0], b.shape[1])
    return core().lmatmul_f32(a.data_ptr(), b.data_ptr(), c.data_ptr(), 1, a.shape[0], a.shape[1],
                              b.shape[1], 23, 0, ISA_LEVELS[isa], torch.get_num_threads(), -1)  # fmt: skip


if __name__ == "__main__":
    main()
