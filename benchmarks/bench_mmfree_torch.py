"""Prefill and decode tokens/s of the PyTorch MatMul-free LM at a released shape (random weights),
against a Transformer++ (transformers' LlamaForCausalLM) of the same width, depth and size.

This measures the QAT/reference PyTorch path (fake-quantized float weights, torch GEMMs), not
the packed ternary kernels. Decoding uses the model's recurrent-state cache (constant memory);
the Transformer++ uses transformers' KV cache.

    python benchmarks/bench_mmfree_torch.py                      # 370M, 64-token prompt, 20 steps
    python benchmarks/bench_mmfree_torch.py --shape tiny --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _timing import median_time
from mulfree.models.hf_compat import cache_kwargs, output_cache


@torch.no_grad()
def measure(
    model, make_cache, vocab: int, batch: int, prompt: int, steps: int, repeats: int
) -> dict:
    """Median prefill time of a `prompt`-token batch and median time of one decoding step."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g)

    def prefill():
        return model(ids, **cache_kwargs(make_cache()), use_cache=True, logits_to_keep=1)

    t_prefill = median_time(prefill, repeats=repeats, warmup=1)

    out = prefill()
    cache = output_cache(out)
    tok = out.logits[:, -1:].argmax(-1)
    step_times = []
    for i in range(steps + 2):  # the first two steps are warm-up
        t0 = time.perf_counter()
        out = model(tok, **cache_kwargs(cache), use_cache=True)
        dt = time.perf_counter() - t0
        if i >= 2:
            step_times.append(dt)
        tok = out.logits[:, -1:].argmax(-1)
    t_step = statistics.median(step_times)
    return {
        "prefill_s": t_prefill,
        "prefill_tok_s": batch * prompt / t_prefill,
        "step_s": t_step,
        "decode_tok_s": batch / t_step,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shape", default="370M", help="MatMul-free preset (370M, 1.3B, 2.7B, tiny, ...)"
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64, help="prefill length in tokens")
    ap.add_argument("--steps", type=int, default=20, help="timed decoding steps (median reported)")
    ap.add_argument("--repeats", type=int, default=3, help="timed prefill runs (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the Transformer++ comparison")
    args = ap.parse_args(argv)

    from transformers import DynamicCache, LlamaForCausalLM

    import mulfree  # noqa: F401  (registers hgrn_bit)
    from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM, transformerpp_config
    from mulfree.models.mmfree.modeling_mmfree import HGRNBitCache

    # Other processes on a shared machine slow every number here; print the load so a reader can
    # tell a quiet run from a contended one.
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = HGRNBitConfig.from_name(args.shape)
    t0 = time.perf_counter()
    mm = HGRNBitForCausalLM(cfg).eval()
    n_mm = sum(p.numel() for p in mm.parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shape {args.shape}: d={cfg.hidden_size} "
        f"L={cfg.num_hidden_layers} I={cfg.mlp_intermediate_size} vocab={cfg.vocab_size}; "
        f"batch {args.batch}, prompt {args.prompt} tokens, {args.steps} decode steps, float32, random weights"
    )
    print(
        f"MatMul-free (hgrn_bit, PyTorch QAT path): {n_mm / 1e6:.1f}M params, built in {time.perf_counter() - t0:.1f}s"
    )
    r_mm = measure(
        mm,
        lambda: HGRNBitCache(cfg),
        cfg.vocab_size,
        args.batch,
        args.prompt,
        args.steps,
        args.repeats,
    )
    print(
        f"  prefill {r_mm['prefill_tok_s']:8.1f} tok/s ({r_mm['prefill_s'] * 1e3:.0f} ms, median of {args.repeats})"
        f"   decode {r_mm['decode_tok_s']:6.2f} tok/s ({r_mm['step_s'] * 1e3:.0f} ms/token, median of {args.steps})"
    )
    del mm

    if not args.no_baseline:
        lcfg = transformerpp_config(args.shape)
        torch.manual_seed(0)
        tpp = LlamaForCausalLM(lcfg).eval()
        n_tpp = sum(p.numel() for p in tpp.parameters())
        print(f"Transformer++ (LlamaForCausalLM, same d/L/I): {n_tpp / 1e6:.1f}M params")
        r_tpp = measure(
            tpp,
            lambda: DynamicCache(config=lcfg),
            lcfg.vocab_size,
            args.batch,
            args.prompt,
            args.steps,
            args.repeats,
        )
        print(
            f"  prefill {r_tpp['prefill_tok_s']:8.1f} tok/s ({r_tpp['prefill_s'] * 1e3:.0f} ms)"
            f"   decode {r_tpp['decode_tok_s']:6.2f} tok/s ({r_tpp['step_s'] * 1e3:.0f} ms/token)"
        )
        print(
            f"ratio MatMul-free / Transformer++: prefill {r_mm['prefill_tok_s'] / r_tpp['prefill_tok_s']:.2f}x, "
            f"decode {r_mm['decode_tok_s'] / r_tpp['decode_tok_s']:.2f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
