"""Time per evaluated item on Gemma 3 270M: exact (eager) attention vs L-Mul / fp8 attention.

Method: the model (`mulfree models get gemma3-270m`, float32) is loaded once; threads pinned
(--threads, default 1). For each attention configuration, `mulfree.eval.evaluate` scores the first
--items LAMBADA passages and the first --items PIQA items once as warm-up and then --repeats times;
the median wall time per item is reported, with the ratio to eager attention measured in the same
run. A second table times the attention function alone on one Gemma 3 270M layer's shapes (4 query
heads, 1 KV head, head_dim 256) for --seq tokens of prefill: median of --repeats calls.
L-Mul uses the compiled L-Matmul when the C core is built (`mulfree.kernels.resolve_isa()` is
printed; MULFREE_ISA=torch forces the pure-torch emulation).
"""

from __future__ import annotations

import argparse

import torch

from _timing import median_time

CONFIGS = {
    "eager (fp32)": None,
    "exact (registered)": dict(kind="exact"),
    "L-Mul k=3": dict(mantissa_bits=3),
    "L-Mul full": dict(mantissa_bits=None),
    "fp8 e4m3": dict(kind="fp8_e4m3"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--items", type=int, default=20, help="items per task")
    ap.add_argument("--tasks", default="lambada,piqa")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq", type=int, default=256, help="tokens for the attention-only timing")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mulfree.attention import LMulConfig, lmul_attention_forward
    from mulfree.eval import EvalConfig, evaluate
    from mulfree.eval.harness import load_model
    from mulfree.kernels import resolve_isa

    model, tok = load_model(args.model)
    print(f"model {args.model}, threads {args.threads}, L-Mul ISA {resolve_isa()}")
    tasks = tuple(args.tasks.split(","))

    print("\n| attention | " + " | ".join(f"{t} s/item" for t in tasks) + " | ratio to eager |")
    print("| --- | " + " | ".join("---:" for _ in tasks) + " | ---: |")
    base = None
    for label, kw in CONFIGS.items():
        lmul = None if kw is None else LMulConfig(**kw)
        per_task = []
        for t in tasks:
            cfg = EvalConfig(tasks=(t,), limit=args.items, progress=False)
            sec = median_time(
                lambda cfg=cfg, lmul=lmul: evaluate(model, tok, cfg, lmul=lmul),
                args.repeats,
                warmup=1,
            )
            per_task.append(sec / args.items)
        total = sum(per_task)
        base = base or total
        cells = " | ".join(f"{s:.3f}" for s in per_task)
        print(f"| {label} | {cells} | {total / base:.2f} |")

    # The attention function alone, Gemma 3 270M shapes.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, args.seq, 256, generator=g)
    k = torch.randn(1, 1, args.seq, 256, generator=g)
    v = torch.randn(1, 1, args.seq, 256, generator=g)
    mask = torch.full((args.seq, args.seq), torch.finfo(torch.float32).min).triu(1)[None, None]
    module = torch.nn.Module()
    module.head_dim = 256
    print(f"\n| attention ({args.seq} tokens, one layer) | ms | ratio to exact |")
    print("| --- | ---: | ---: |")
    base = None
    for label, kw in CONFIGS.items():
        cfg = LMulConfig(**(kw or dict(kind="exact")))
        with torch.inference_mode():
            sec = median_time(
                lambda cfg=cfg: lmul_attention_forward(cfg, module, q, k, v, mask, scaling=0.0625),
                args.repeats,
                warmup=1,
            )
        base = base or sec
        print(f"| {label} | {1000 * sec:.1f} | {sec / base:.2f} |")


if __name__ == "__main__":
    main()
