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
"""

from __future__ import annotations

import argparse

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"threads={torch.get_num_threads()} isa={isa_max()} torch={torch.__version__}; "
        f"median of {args.repeats} (fewer for slow variants) after 2 warm-up calls"
    )
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


def _route(a: torch.Tensor, b: torch.Tensor) -> int:
    """The compiled L-Matmul's route code for these float32 operands (k = 23, int mode)."""
    from mulfree.kernels import ISA_LEVELS
    from mulfree.kernels._core import core

    c = torch.empty(a.shape[0], b.shape[1])
    return core().lmatmul_f32(a.data_ptr(), b.data_ptr(), c.data_ptr(), 1, a.shape[0], a.shape[1],
                              b.shape[1], 23, 0, ISA_LEVELS[isa_max()], torch.get_num_threads(), -1)  # fmt: skip


if __name__ == "__main__":
    main()
