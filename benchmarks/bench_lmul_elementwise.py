"""Elementwise L-Mul throughput vs torch's own `a * b` (issue #2 benchmark).

Method: fixed thread count (--threads, default 2), inputs of N random normal values, 3 warm-up
calls, then the median of --repeats timed calls (time.perf_counter) for each of: torch `a * b`,
`mulfree.lmul.lmul(a, b)` (mode int and eq1, full mantissa and k=3). Prints elements/s and the
ratio to `a * b` measured in the same run.
"""

from __future__ import annotations

import argparse

import torch

from _timing import median_time
from mulfree.lmul import lmul


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,10000000")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"threads={torch.get_num_threads()} torch={torch.__version__} median of {args.repeats} after 3 warm-up"
    )
    print(f"{'dtype':9} {'N':>9} {'variant':16} {'time ms':>9} {'Melem/s':>9} {'vs a*b':>8}")
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        for n in (int(s) for s in args.sizes.split(",")):
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(n, generator=gen).to(dtype)
            b = torch.randn(n, generator=gen).to(dtype)
            reps = args.repeats if n <= 1_000_000 else max(5, args.repeats // 4)
            base = median_time(lambda a=a, b=b: a * b, reps, warmup=3)
            rows = [("torch a*b", base)]
            for label, kw in (
                ("lmul int", {}),
                ("lmul eq1", {"mode": "eq1"}),
                ("lmul int k=3", {"mantissa_bits": 3}),
            ):
                rows.append(
                    (label, median_time(lambda a=a, b=b, kw=kw: lmul(a, b, **kw), reps, warmup=3))
                )
            for label, t in rows:
                print(
                    f"{dname:9} {n:>9} {label:16} {t * 1e3:9.3f} {n / t / 1e6:9.1f} {base / t:8.3f}x"
                )


if __name__ == "__main__":
    main()
