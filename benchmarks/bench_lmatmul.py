"""L-Matmul throughput vs torch fp32 `matmul` and vs the pure-torch emulation (issue #4).

Method: threads pinned (--threads, default 2); random normal operands (exact zeros, which
torch.randn produces now and then at these sizes, replaced by 1e-3); for each size, 2 warm-up
calls then the median of --repeats timed calls (time.perf_counter) of:
  - torch.matmul, float32 (the baseline);
  - mulfree.lmul.lmatmul, float32 operands (compiled kernel, fast add-only route; every product
    is a normal number, so the no-underflow kernel runs);
  - the same with 1 % of A's entries set to 0 (the fast route's masked kernel: zero or
    underflowing products must add nothing, checked per lane);
  - mulfree.lmul.lmatmul, bfloat16 operands (compiled kernel on widened operands);
The kernel route of each compiled variant is printed (0 full, 1 fast masked, 2 fast
no-underflow; `lmatmul_f32`'s return value).
  - the pure-torch emulation (mulfree.lmul.ops.lmatmul_reference, which materializes every
    L-Mul product with vectorized integer tensor ops). Its cost is linear in K, so for large
    sizes it is timed on a K-slice (--emu-k) and scaled by K / slice (printed as such).
Throughput is counted as 2*M*N*K "flop-equivalents" per second (one multiply + one add per
product, as for GEMM). Ratios are against numbers measured in the same run.

Attention shapes (--attn, default on; issue #14): L-Mul attention's two products per layer,
q kᵀ = [H, Tq, hd] x [H, hd, ctx] and p v = [H, Tq, ctx] x [H, ctx, hd] (H = --heads, hd =
--head-dim, Tq = --queries: 1 is a decode step, more a prefill chunk; ctx = --ctx), float32,
k = 23 and k = 3 (LMulConfig(mantissa_bits=3)); p is softmax-like (positive, some exact zeros
from a causal mask: the masked kernel), q, k, v normal. Each is timed through the public
`lmatmul` and as the raw compiled call (`lmatmul_f32` on prepared contiguous operands; the
difference is the Python/custom-op layer), against torch.matmul fp32 on the same operands,
interleaved (torch, ours, raw, torch, ...) so both see the same drift of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from _timing import median_time
from mulfree.kernels import isa_max
from mulfree.lmul import lmatmul
from mulfree.lmul.ops import lmatmul_reference


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.2f} (cores shared?); "
        f"threads={torch.get_num_threads()} isa={isa_max()} torch={torch.__version__}; "
        f"median of {args.repeats} (fewer for slow variants) after 2 warm-up calls"
    )
    if args.attn:
        _attention(args)
    if not args.square:
        return
    print(
        f"{'size':>6} {'variant':28} {'time ms':>11} {'GFLOP-eq/s':>11} {'vs fp32 GEMM':>13} {'vs emulation':>13}"
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
        t_gemm = median_time(lambda a=a, b=b: torch.matmul(a, b), args.repeats)
        t_l32 = median_time(lambda a=a, b=b: lmatmul(a, b), reps)
        t_l32z = median_time(lambda a=az, b=b: lmatmul(a, b), reps)
        t_l16 = median_time(lambda a=ab, b=bb: lmatmul(a, b), reps)
        ks = min(n, args.emu_k) if n > 512 else n
        a3, b3 = a[None, :, :ks].contiguous(), b[None, :ks, :].contiguous()
        t_emu = median_time(lambda a3=a3, b3=b3: lmatmul_reference(a3, b3), 1, warmup=0) * (n / ks)
        emu_label = "torch emulation" + (f" (K={ks} x{n // ks})" if ks < n else "")
        for label, t, ops in (
            ("torch.matmul fp32", t_gemm, None),
            ("lmatmul fp32 (compiled)", t_l32, (a, b)),
            ("lmatmul fp32, 1% zeros", t_l32z, (az, b)),
            ("lmatmul bf16 (compiled)", t_l16, (ab.float(), bb.float())),
            (emu_label, t_emu, None),
        ):
            route = f" route {_route(*ops)}" if ops is not None else ""
            print(
                f"{n:>6} {label:28} {t * 1e3:11.2f} {flops / t / 1e9:11.2f} {t_gemm / t:12.3f}x {t_emu / t:12.1f}x{route}"
            )


def _interleaved(fns: dict, repeats: int, rounds: int = 4) -> dict:
    """name -> median time of `repeats` calls of each fn, taken in `rounds` interleaved slices."""
    per = max(1, -(-repeats // rounds))
    samples: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, per, warmup=1))
    return {name: statistics.median(t) for name, t in samples.items()}


def _attention(args) -> None:
    """q kᵀ and p v at attention shapes: ours (public and raw call) vs torch.matmul fp32."""
    from mulfree.kernels import ISA_LEVELS
    from mulfree.kernels._core import core

    H, hd = args.heads, args.head_dim
    level = ISA_LEVELS[isa_max()]
    print(f"\nattention products, H={H}, hd={hd}, float32 operands (interleaved medians)")
    print(f"{'product':>28} {'k':>3} {'torch us':>9} {'ours us':>9} {'raw us':>9} "
          f"{'ours/torch':>11} {'raw/torch':>10} route")  # fmt: skip
    for ctx in (int(c) for c in args.ctx.split(",")):
        for tq in (int(q) for q in args.queries.split(",")):
            gen = torch.Generator().manual_seed(ctx + tq)
            q = torch.randn(H, tq, hd, generator=gen)
            kt = torch.randn(H, hd, ctx, generator=gen)  # kᵀ, as attention passes it (contiguous)
            p = torch.rand(H, tq, ctx, generator=gen)
            p[:, :, ctx - ctx // 8 :] = 0.0  # a causal mask's zeros
            p = p / p.sum(-1, keepdim=True)
            v = torch.randn(H, ctx, hd, generator=gen)
            for name, a, b in ((f"q·kᵀ [{H},{tq},{hd}]x[{hd},{ctx}]", q, kt),
                               (f"p·v [{H},{tq},{ctx}]x[{ctx},{hd}]", p, v)):  # fmt: skip
                out = torch.empty(H, a.shape[1], b.shape[2])
                for k in (23, 3):
                    mb = None if k == 23 else k

                    def raw(a=a, b=b, out=out, k=k):
                        return core().lmatmul_f32(
                            a.data_ptr(), b.data_ptr(), out.data_ptr(), H, a.shape[1], a.shape[2],
                            b.shape[2], k, 0, level, torch.get_num_threads(), -1)  # fmt: skip

                    t = _interleaved({"torch": lambda a=a, b=b: torch.matmul(a, b),
                                      "ours": lambda a=a, b=b, mb=mb: lmatmul(a, b, mantissa_bits=mb),
                                      "raw": raw}, args.repeats)  # fmt: skip
                    print(f"{name:>28} {k:>3} {t['torch'] * 1e6:9.0f} {t['ours'] * 1e6:9.0f} "
                          f"{t['raw'] * 1e6:9.0f} {t['torch'] / t['ours']:10.2f}x "
                          f"{t['torch'] / t['raw']:9.2f}x {raw()}")  # fmt: skip


def _route(a: torch.Tensor, b: torch.Tensor) -> int:
    """The compiled L-Matmul's route code for these float32 operands (k = 23, int mode)."""
    from mulfree.kernels import ISA_LEVELS
    from mulfree.kernels._core import core

    c = torch.empty(a.shape[0], b.shape[1])
    return core().lmatmul_f32(a.data_ptr(), b.data_ptr(), c.data_ptr(), 1, a.shape[0], a.shape[1],
                              b.shape[1], 23, 0, ISA_LEVELS[isa_max()], torch.get_num_threads(), -1)  # fmt: skip


if __name__ == "__main__":
    main()
