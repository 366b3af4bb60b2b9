"""Decode tokens/s of the whole MatMul-free LM at the released shapes: packed engine vs official.

For each shape (370M, 1.3B; random ternary weights, random norm weights and lower bounds as in
a trained model, so the i/f/g projections run as three kernel calls), this
1. writes packed files (tq1 ternary + int8 or int4 embeddings, `mulfree.engine`) and prints
   their sizes (the issue's bound: a packed 370M <= 100 MB);
2. loads the `--embeddings` one (default int4; `load_packed`: tq1 -> tq2, t81 where chosen)
   and times `Decoder.step` (all layers + the 32000-token ternary head + argmax), after a prefill of `--prompt` tokens (also timed);
3. times transformers' `model.generate` on the same packed model (greedy; its cached steps run
   the fused decoder), decode tokens/s;
4. estimates the energy of one decode step (`Decoder.step_energy`: counted op by op, priced
   with the default energy table) next to the same step with dense fp32 projections;
5. times the official method: the PyTorch model whose BitLinears fake-quantize their float
   weights at every call (`F.linear(act_quant(x), weight_quant(W))`, as the official
   `mmfreelm` BitLinear does; here BitLinear in training mode under inference_mode), on a few
   tokens with the recurrent-state cache.
Every SIMD ISA level (`--isas`, default all this CPU has but scalar) gets its own Decoder on the
same weights; their steps (and prefills) are interleaved round by round with the default one
(the dispatcher's per-family pick, `Decoder.isas`) so all see the same drift, and printed side by
side. Where load_packed laid some weights out as t81 (`kernels.dispatch.layout`), a Decoder
on the same weights all in tq2 ("tq2 layout") is interleaved too, and a "weight layout" line
gives the ratio.
Method: `--threads` (default 2) for torch and the kernels; libgomp's default wait policy unless
OMP_WAIT_POLICY is set (see benchmarks/bench_ternary_linear.py; run on an idle machine). With
several counts (`--threads 1 2`) the most threads is the main decoder, each other count gets a
Decoder of its own, interleaved with the rest, and a "thread scaling" line gives decode tok/s per
count, their ratio and the streaming read bandwidth at each count measured in the same run
(bench_ternary_linear's probe); `--per-call` adds the main count with the step run call by call
(each kernel call its own OpenMP region: `C.plan_team(0, -1)`), the twin of the team step. Each
engine number is the median of `--steps` single-token steps after `--warmup` steps (mean also
printed), and prefill tok/s the median of `--prefills` prompts after one warm-up; wall clock. The load average is printed before and after: on a shared machine the
absolute numbers move with it, the ratio less so.

    python benchmarks/bench_decode.py                   # 370M and 1.3B
    python benchmarks/bench_decode.py --shapes 370M --steps 64
    python benchmarks/bench_decode.py --shapes 370M --isas avx2,avx512
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mulfree import kernels
from mulfree.engine import load_packed
from mulfree.engine.decode import Decoder
from mulfree.engine.format import WEIGHTS_FILE, expected_specs, write_packed
from mulfree.engine.modules import PackedBitLinear
from mulfree.models.hf_compat import cache_kwargs
from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM
from mulfree.ternary import packing
from mulfree.ternary.bitlinear import BitLinear

TARGETS = {"370M": 60.0, "1.3B": 25.0}  # tok/s, issue 4


def random_packed_tensors(
    config, modules: dict, gen: torch.Generator, efmt: str
) -> dict[str, torch.Tensor]:
    """Tensors of a tq1 packed file with random weights and `efmt` (int8/int4) embeddings."""
    from mulfree.engine.modules import Int4Embedding, Int8Embedding

    out = {}
    for key, (shape, _dtype) in expected_specs(config, "tq2", "float32").items():
        mod, _, leaf = key.rpartition(".")
        if leaf == "weight_packed":
            continue
        if leaf == "weight_scale":
            m = modules[mod]
            q = torch.randint(
                -1, 2, (m.out_features, m.in_features), dtype=torch.int8, generator=gen
            )
            out[f"{mod}.weight_packed"] = packing.pack(q, "tq1")
            out[key] = torch.tensor(
                1.0 / (0.02 * (2 / 3)), dtype=torch.float32
            )  # ~N(0, .02) absmean
        elif key == "model.embeddings.weight":
            cls = Int8Embedding if efmt == "int8" else Int4Embedding
            q, step = cls.quantize(torch.randn(shape, generator=gen) * 0.02)
            out[f"model.embeddings.weight_{efmt}"], out["model.embeddings.weight_step"] = q, step
        elif key.endswith("norm.weight"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key == "model.lower_bounds":
            out[key] = torch.randn(shape, generator=gen)
        else:
            raise KeyError(key)
    return out


def bench_engine(name: str, args, tmp: str) -> dict:
    config = HGRNBitConfig.from_name(name)
    with torch.device("meta"):
        meta_model = HGRNBitForCausalLM(config)
    modules = {n: m for n, m in meta_model.named_modules() if isinstance(m, BitLinear)}
    gen = torch.Generator().manual_seed(0)
    sizes = {}
    for efmt in ("int8", "int4"):  # the decoded file is the --embeddings one, written last
        if efmt == args.embeddings:
            continue
        tensors = random_packed_tensors(config, modules, gen, efmt)
        file = Path(tmp) / f"{name}-{efmt}" / WEIGHTS_FILE
        write_packed(file, tensors, config.to_json_string(use_diff=False), "tq1", efmt)
        sizes[efmt] = os.path.getsize(file)
        file.unlink()
    tensors = random_packed_tensors(config, modules, gen, args.embeddings)
    path = Path(tmp) / name
    file = path / WEIGHTS_FILE
    write_packed(file, tensors, config.to_json_string(use_diff=False), "tq1", args.embeddings)
    del tensors
    size = sizes[args.embeddings] = os.path.getsize(file)
    t0 = time.perf_counter()
    model = load_packed(path)
    load_s = time.perf_counter() - t0
    dec = model.fused_decoder(threads=args.threads)
    # the default decoder ("auto": the dispatcher's picks) and one per ISA level, same weights;
    # one per other thread count (and the main count call by call), all interleaved
    decs = {"auto": dec} | {lv: Decoder(model, threads=args.threads, isa=lv) for lv in args.isas}
    decs |= {f"{t} threads": Decoder(model, threads=t) for t in args.thread_counts[:-1]}
    if args.per_call:
        decs["per-call"] = Decoder(model, threads=args.threads)
    layouts = {}  # layout -> projections in it (load_packed's choice, kernels.dispatch.layout)
    for m in model.modules():
        if isinstance(m, PackedBitLinear):
            layouts[m.layout] = layouts.get(m.layout, 0) + 1
    if layouts.get("t81"):  # the same weights all in tq2, the layout every level runs
        decs["tq2 layout"] = Decoder(load_packed(path, layout="tq2"), threads=args.threads)
    C = kernels.core()

    def team_for(n: str) -> None:  # the per-call decoder runs its steps without the team
        if args.per_call:
            C.plan_team(0 if n == "per-call" else 1, -1)

    prompt = torch.randint(0, config.vocab_size, (1, args.prompt), generator=gen)
    prefill = {n: [] for n in decs}
    toks = {}
    for r in range(1 + args.prefills):  # warm-up, then timed; interleaved, order alternating
        for n in decs if r % 2 == 0 else reversed(decs):
            team_for(n)
            t0 = time.perf_counter()
            logits = decs[n].prefill(prompt)
            prefill[n].append(time.perf_counter() - t0)
            toks[n] = int(logits[0].argmax())
    steps = {n: [] for n in decs}
    for i in range(args.warmup + args.steps):
        for n in decs if i % 2 == 0 else reversed(decs):  # every level sees the same drift
            team_for(n)
            t0 = time.perf_counter()
            toks[n] = int(decs[n].step([toks[n]])[0].argmax())
            if i >= args.warmup:
                steps[n].append(time.perf_counter() - t0)
    team_for("auto")
    times, tok = steps["auto"], toks["auto"]
    overhead = call_overhead(dec, tok, args.steps)
    per_isa = {n: (args.prompt / statistics.median(prefill[n][1:]), 1 / statistics.median(steps[n]))
               for n in decs}  # fmt: skip
    picks = dict(dec.isas)
    scaling = {
        n: per_isa.pop(n)[1] for n in list(per_isa) if n.endswith(" threads") or n == "per-call"
    }
    scaling[f"{args.threads} threads"] = per_isa["auto"][1]
    for n in [*args.isas, *scaling]:
        decs.pop(n, None)
    energy = dec.step_energy([tok])  # after the timing: counting runs the torch path once
    hf_tok_s = bench_hf_generate(model, prompt, args.steps)
    del model, dec
    return {
        "size": size,
        "sizes": sizes,
        "load_s": load_s,
        "prefill_tok_s": per_isa["auto"][0],
        "per_isa": per_isa,
        "picks": picks,
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "energy": energy,
        "hf_tok_s": hf_tok_s,
        "overhead": overhead,
        "scaling": scaling,
        "layouts": layouts,
    }


def call_overhead(dec, tok: int, n: int) -> tuple[float, float] | None:
    """(median Decoder.step s, median s of its plan runner call alone), interleaved: the
    difference is what Python adds per token around the one C call of a fused step (argument
    checks, the id list, the logits view; the embedding lookup is the call's first op). The bare
    call is the step's very call (`runner_call`: the same words and token ids), and each of the
    two is timed right after a plan run, as a step follows a step in real decoding: a step
    streams ~100 MB of weights, so the Python around the call runs with cold caches, where it
    costs ~10x its warm time (a back-to-back loop of the Python alone would flatter it). The
    state drifts (the runner repeats the step), which does not change the cost of a step."""
    run = dec.runner_call()
    if run is None:
        return None
    full, bare = [], []
    for i in range(2 + n):
        t0 = time.perf_counter()
        dec.step([tok])
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        if i >= 2:
            full.append(t1 - t0)
            bare.append(t2 - t1)
    return statistics.median(full), statistics.median(bare)


def bench_hf_generate(model, prompt: torch.Tensor, steps: int) -> float:
    """Decode tokens/s of transformers' `model.generate` (greedy) on the packed model: the time
    of 1 + steps new tokens minus that of 1 (the prompt and the first token), per step."""

    def run(n: int) -> float:
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0

    run(2)  # warm-up
    first = min(run(1) for _ in range(3))
    return steps / max(run(1 + steps) - first, 1e-9)


@torch.inference_mode()
def bench_official(name: str, args) -> float:
    """Median seconds per token of the PyTorch model re-quantizing every weight at every call."""
    from mulfree.models.mmfree import HGRNBitCache

    config = HGRNBitConfig.from_name(name)
    torch.manual_seed(0)
    model = HGRNBitForCausalLM(config).eval()
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.train()  # BitLinear in training mode fake-quantizes its weight on every call
    cache = HGRNBitCache(config)
    tok = torch.tensor([[1]])
    times = []
    for i in range(1 + args.baseline_steps):
        t0 = time.perf_counter()
        out = model(tok, **cache_kwargs(cache), use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        if i >= 1:
            times.append(time.perf_counter() - t0)
    del model
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["370M", "1.3B"])
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="thread counts (several: a thread-scaling line)")  # fmt: skip
    ap.add_argument("--per-call", action="store_true",
                    help="also the main count with each kernel call its own OpenMP region")  # fmt: skip
    ap.add_argument("--steps", type=int, default=48, help="timed engine decode steps")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64, help="prefill tokens")
    ap.add_argument("--prefills", type=int, default=5,
                    help="timed prefills per decoder (median; after one warm-up)")  # fmt: skip
    ap.add_argument("--baseline-steps", type=int, default=2, help="timed official-method tokens")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--embeddings", choices=["int8", "int4"], default="int4",
                    help="embedding format of the decoded file (both file sizes are printed)")  # fmt: skip
    ap.add_argument("--isas", default=None,
                    help="levels timed side by side, e.g. avx2,avx512 (default: SIMD levels)")  # fmt: skip
    args = ap.parse_args(argv)
    args.thread_counts = sorted(set(args.threads))
    args.threads = args.thread_counts[-1]  # the main decoder's
    bandwidth = {}
    if len(args.thread_counts) > 1:  # the machine's streaming read at each count, this run
        from bench_ternary_linear import measure_bandwidth

        for t in args.thread_counts:
            torch.set_num_threads(t)
            bandwidth[t] = measure_bandwidth(256)[0]
    torch.set_num_threads(args.threads)
    simd = [n for n in kernels.available_isas() if n not in ("torch", "scalar")]
    args.isas = args.isas.split(",") if args.isas else simd
    print(
        f"threads {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"torch {torch.__version__}"
    )
    print(kernels.isa_summary())
    print(f"load average before: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            e = bench_engine(name, args, tmp)
            base = None if args.no_baseline else bench_official(name, args)
            rows.append((name, e, base))
            tok_s = 1 / e["median_s"]
            other = "int8" if args.embeddings == "int4" else "int4"
            print(f"{name}: packed file ({args.embeddings} embeddings) {e['size'] / 1e6:.1f} MB "
                  f"({e['size'] / 2**20:.1f} MiB; {other} embeddings "
                  f"{e['sizes'][other] / 1e6:.1f} MB), "
                  f"load {e['load_s']:.1f} s, prefill {e['prefill_tok_s']:.0f} tok/s, decode "
                  f"{tok_s:.1f} tok/s (median; mean {1 / e['mean_s']:.1f}; HF generate "
                  f"{e['hf_tok_s']:.1f}), target "
                  f"{TARGETS.get(name, float('nan')):.0f}"
                  + (f"; official fake-quant {base:.2f} s/token ({1 / base:.2f} tok/s), "
                     f"engine = {base / e['median_s']:.0f}x" if base else ""), flush=True)  # fmt: skip
            if e["overhead"] is not None:
                full, bare = e["overhead"]
                print(f"{name} call overhead: Decoder.step {full * 1e3:.3f} ms vs its plan runner "
                      f"call alone {bare * 1e3:.3f} ms: Python adds {(full - bare) * 1e6:.0f} µs "
                      f"per token ({(full - bare) / full:.1%} of the step)", flush=True)  # fmt: skip
            if len(e["scaling"]) > 1:
                sc, t0 = e["scaling"], args.thread_counts[0]
                base = sc[f"{t0} threads"]
                print(f"{name} thread scaling (interleaved): " + "; ".join(
                    f"{n} {v:.1f} tok/s = {v / base:.2f}x {t0}" for n, v in sc.items())
                    + "; streaming read " + ", ".join(
                        f"{t} threads {bw:.1f} GB/s" for t, bw in bandwidth.items())
                    + (f" ({bandwidth[args.threads] / bandwidth[t0]:.2f}x)" if bandwidth else ""),
                    flush=True)  # fmt: skip
            pi = e["per_isa"]
            if "tq2 layout" in pi:
                (pa, da), (pt, dt) = pi["auto"], pi["tq2 layout"]
                print(f"{name} weight layout: " + ", ".join(f"{n} {c}" for n, c in e["layouts"].items())
                      + f" projections; auto decode {da:.1f} vs all-tq2 {dt:.1f} tok/s = "
                      f"{da / dt:.2f}x, prefill {pa:.0f} vs {pt:.0f} tok/s = {pa / pt:.2f}x "
                      "(interleaved)", flush=True)  # fmt: skip
            print(f"{name} per ISA (interleaved): " + "; ".join(
                f"{n} decode {d:.1f} tok/s, prefill {p:.0f} tok/s"
                for n, (p, d) in e["per_isa"].items()) + f"; auto = {e['picks']}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    print()
    print(
        "| shape | packed file, int4 / int8 embeddings | prefill tok/s | decode tok/s (median) "
        "| HF generate tok/s | target | official s/token | speed-up | energy/token, est. µJ "
        "| dense fp32 µJ | less |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, e, base in rows:
        speedup = f"{base / e['median_s']:.0f}x" if base else "-"
        en = e["energy"]
        print(f"| {name} | {e['sizes']['int4'] / 1e6:.1f} / {e['sizes']['int8'] / 1e6:.1f} MB "
              f"| {e['prefill_tok_s']:.0f} | {1 / e['median_s']:.1f} | {e['hf_tok_s']:.1f} | "
              f"{TARGETS.get(name, float('nan')):.0f} | {f'{base:.2f}' if base else '-'} | "
              f"{speedup} | {en.total_pj / 1e6:.0f} | {en.dense_fp32_pj / 1e6:.0f} | "
              f"{en.saving:.1f}x |")  # fmt: skip
    if rows and args.isas:
        print()
        print("| shape | " + " | ".join(f"{n} decode tok/s" for n in args.isas)
              + " | auto (dispatcher) tok/s | dispatcher picks | " + " | ".join(
                  f"{n} prefill tok/s" for n in args.isas) + " |")  # fmt: skip
        print("|---|" + "---|" * (2 * len(args.isas) + 2))
        for name, e, _ in rows:
            pi = e["per_isa"]
            picks = ", ".join(f"{f} {lv}" for f, lv in e["picks"].items())
            print(f"| {name} | " + " | ".join(f"{pi[n][1]:.1f}" for n in args.isas)
                  + f" | {pi['auto'][1]:.1f} | {picks} | "
                  + " | ".join(f"{pi[n][0]:.0f}" for n in args.isas) + " |")  # fmt: skip
    if rows:
        print(f"\nEnergy: one decode step counted op by op (Decoder.step_energy) and priced with "
              f"the {rows[0][1]['energy'].table} table; 'dense fp32' = the same step with every "
              "ternary projection a dense fp32 F.linear (4 bytes per weight from DRAM, K "
              "multiplies and K - 1 adds per output).")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
