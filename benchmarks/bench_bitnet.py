"""BitNet b1.58 on the packed engine at the 2B4T shape, against transformers' own BitNet on the CPU.

Random weights written in the official layout of microsoft/bitnet-b1.58-2B-4T (hidden 2560,
30 layers, 20 heads / 5 KV heads, MLP 6912, vocab 128,256, tied embeddings; packed uint8
4-per-byte + weight_scale, bfloat16 tables: `mulfree.models.bitnet.synthetic`), then
1. `mulfree convert` with an int8 and an int4 head (tq1 on disk): file sizes;
2. the machine's streaming bandwidth in this run (torch sum over a 1 GiB float32 tensor, the
   read pattern of a decode step), per thread count, giving the weight-bytes roofline of a
   step (packed tq2 weights + head + the KV cache read at that context);
3. load time, time to first token (prefill of a `--prompt`-token prompt + head), prefill tok/s
   (`--prefill`-token prompt, blocks of 64) and decode tok/s at 1 and 2 threads, exact vs L-Mul
   attention (`--mantissa-bits`, default 3), contexts 128 and 2048: the cache is filled with
   random keys/values up to the context (a decode step's cost does not depend on their values;
   prefilling 2048 tokens with L-Mul attention would take hours), bfloat16 KV cache;
4. transformers' BitNetForCausalLM on the same checkpoint (bfloat16, its BitLinear unpacks
   the 2-bit weights at every call; TORCHDYNAMO_DISABLE=1 as torch.compile on CPU takes
   minutes), decode tok/s at 128 context, a few steps;
5. accuracy effects on a tiny official-layout model: int8 / int4 / bf16 head against the float32
   head, and bf16 / fp16 / int8 KV caches against float32 (logit SQNR, top-1 agreement).
Peak RSS is printed. Timings: median of `--steps` steps after 2 warm-up rounds, exact, L-Mul and
int4-head steps interleaved round by round; the load average is printed (the machine is shared:
absolute numbers move with the load, ratios less).

    flock /tmp/mulfree-bench.lock python benchmarks/bench_bitnet.py
    python benchmarks/bench_bitnet.py --quick            # 1 thread count, context 128, no HF
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from mulfree.engine import convert, load_packed  # noqa: E402
from mulfree.engine.bitnet_decode import BitNetDecoder  # noqa: E402
from mulfree.engine.convert import ConvertConfig  # noqa: E402
from mulfree.models.bitnet.synthetic import B1_58_2B_4T, write_random_checkpoint  # noqa: E402


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bandwidth_gbs(threads: int, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Streaming read bandwidth (GB/s): torch.sum over a float32 tensor of `nbytes`."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.ones(nbytes // 4)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    return nbytes / statistics.median(times[1:]) / 1e9


def step_bytes(model, ctx: int, kv_bytes: int = 2) -> int:
    """Bytes a decode step must read: packed weights + head table + KV cache at `ctx`."""
    from mulfree.engine.modules import PackedBitLinear

    w = sum(m.weight_packed.numel() for m in model.modules() if isinstance(m, PackedBitLinear))
    head = sum(t.numel() * t.element_size() for t in model.lm_head.buffers())
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * ctx * kv_bytes
    return w + head + kv


def fill_cache(dec: BitNetDecoder, ctx: int) -> None:
    """Random keys/values in slot 0, its length ctx - 1 (the next step is token ctx)."""
    g = torch.Generator().manual_seed(0)
    for t in dec.cache.k + dec.cache.v:
        t[0].copy_(torch.randn(t[0].shape, generator=g).to(t.dtype))
    dec.lengths[0] = ctx - 1


def time_interleaved(runs: dict, ctx: int, steps: int) -> dict[str, float]:
    """Median seconds of one decode step (embedding, 30 layers, head, argmax) at context ctx
    for each named (decoder, attention), their steps interleaved round by round so all see the
    same load; 2 warm-up rounds."""
    for dec, _ in runs.values():
        fill_cache(dec, ctx)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps + 2):
        for name, (dec, att) in runs.items():
            dec.attention = att
            dec.lengths[0] = ctx - 1
            t0 = time.perf_counter()
            int(dec.step([17])[0].argmax())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v[2:]) for k, v in times.items()}


def accuracy_tiny() -> None:
    """Head and KV-cache quantization effects on a tiny official-layout model."""
    from mulfree.engine.bitnet_model import QuantizedHead, from_checkpoint

    def sqnr(ref, got):
        return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))

    with tempfile.TemporaryDirectory() as d:
        ck = write_random_checkpoint(Path(d) / "tiny", seed=11)
        model = from_checkpoint(ck)
    ids = torch.randint(3, 300, (1, 48), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = model.model(ids).last_hidden_state[0]  # [T, D]
        w = model.lm_head.dequantize()
        ref = h @ w.T
    print("tiny model (hidden 64, 2 layers, vocab 300), 48 positions:")
    bf16 = QuantizedHead.from_float(w, "bfloat16")(h)  # the head as 2B4T ships it
    for fmt in ("bfloat16", "int8", "int4"):
        got = QuantizedHead.from_float(w, fmt)(h)
        top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        vs_bf16 = float((got.argmax(-1) == bf16.argmax(-1)).float().mean())
        print(f"  head {fmt:8s} vs float32: logit SQNR {sqnr(ref, got):5.1f} dB, top-1 agreement "
              f"{top1:.3f} | vs the bf16 head: SQNR {sqnr(bf16, got):5.1f} dB, top-1 {vs_bf16:.3f}")  # fmt: skip

    def run(kv):
        dec = BitNetDecoder(model, kv_dtype=kv)
        out = [dec.prefill(ids[:, :8]).clone()]
        out += [dec.step([int(t)]).clone() for t in ids[0, 8:]]
        return torch.cat(out)

    base = run("float32")
    for kv in ("bfloat16", "float16", "int8"):
        got = run(kv)
        top1 = float((got.argmax(-1) == base.argmax(-1)).float().mean())
        print(
            f"  kv cache {kv:8s} vs float32: logit SQNR {sqnr(base, got):5.1f} dB, top-1 agreement {top1:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "mulfree-bench-bitnet"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--contexts", default="128,2048")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens for time to first token")
    ap.add_argument("--prefill", type=int, default=128, help="prompt tokens for prefill tok/s")
    ap.add_argument("--mantissa-bits", type=int, default=3)
    ap.add_argument("--hf-steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.quick:
        threads, contexts, args.hf_steps = threads[-1:], contexts[:1], 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(load())
    ck = work / "ckpt"
    if not (ck / "model.safetensors").is_file():
        t0 = time.perf_counter()
        write_random_checkpoint(ck, B1_58_2B_4T, seed=0)
        print(f"wrote the random 2B4T-shape checkpoint in {time.perf_counter() - t0:.0f} s")
    print(f"official-layout checkpoint: {(ck / 'model.safetensors').stat().st_size / 1e6:.0f} MB "
          "(packed 2-bit ternary + bf16 tied embedding)")  # fmt: skip
    packed = {}
    for head in ("int8", "int4"):
        dst = work / f"packed-{head}"
        if not (dst / "model.safetensors").is_file():
            t0 = time.perf_counter()
            convert(ConvertConfig(str(ck), str(dst), head=head, no_tokenizer=True, force=True))
            print(f"convert --head {head}: {time.perf_counter() - t0:.0f} s")
        packed[head] = dst
        print(
            f"packed file, tq1 + {head} head (tied): {(dst / 'model.safetensors').stat().st_size / 1e6:.0f} MB"
        )

    bw = {t: bandwidth_gbs(t) for t in threads}
    for t, v in bw.items():
        print(f"streaming read bandwidth, {t} thread(s): {v:.1f} GB/s")

    t0 = time.perf_counter()
    model = load_packed(packed["int8"])
    print(f"load_packed (int8 head): {time.perf_counter() - t0:.1f} s")
    m4 = load_packed(packed["int4"])
    g = torch.Generator().manual_seed(1)
    for t in threads:
        torch.set_num_threads(t)
        dec = BitNetDecoder(
            model, threads=t, kv_dtype="bfloat16", max_context=max(contexts + [args.prefill])
        )
        prompt = torch.randint(0, 128000, (args.prompt,), generator=g).tolist()
        t0 = time.perf_counter()
        int(dec.prefill(prompt)[0].argmax())
        ttft = time.perf_counter() - t0
        long = torch.randint(0, 128000, (args.prefill,), generator=g).tolist()
        t0 = time.perf_counter()
        dec.prefill(long)
        pf = args.prefill / (time.perf_counter() - t0)
        print(f"[{t} thread(s)] time to first token ({args.prompt}-token prompt, model loaded): "
              f"{ttft:.2f} s | prefill {args.prefill} tokens: {pf:.1f} tok/s")  # fmt: skip
        dec4 = BitNetDecoder(m4, threads=t, kv_dtype="bfloat16", max_context=max(contexts))
        for ctx in contexts:
            runs = {"exact": (dec, "exact"), "lmul": (dec, "lmul")}
            if ctx == min(contexts):
                runs["int4"] = (dec4, "exact")
            res = time_interleaved(runs, ctx, args.steps)
            roof = bw[t] * 1e9 / step_bytes(model, ctx)
            print(f"[{t} thread(s)] context {ctx}: decode exact {1 / res['exact']:.2f} tok/s "
                  f"({res['exact'] * 1e3:.0f} ms), L-Mul attention {1 / res['lmul']:.2f} tok/s "
                  f"({res['lmul'] * 1e3:.0f} ms, {res['lmul'] / res['exact']:.2f}x exact's time) | "
                  f"roofline {roof:.1f} tok/s ({step_bytes(model, ctx) / 1e6:.0f} MB/step at "
                  f"{bw[t]:.1f} GB/s): exact at {100 / res['exact'] / roof:.0f} %")  # fmt: skip
            if "int4" in res:
                roof4 = bw[t] * 1e9 / step_bytes(m4, ctx)
                print(f"[{t} thread(s)] context {ctx}: int4 head decode {1 / res['int4']:.2f} tok/s "
                      f"({res['int4'] * 1e3:.0f} ms; roofline {roof4:.1f} tok/s at "
                      f"{step_bytes(m4, ctx) / 1e6:.0f} MB/step)")  # fmt: skip
        del dec, dec4
    del model, m4

    print(f"peak RSS of the packed engine (int8- and int4-head models, caches for context "
          f"{max(contexts)}): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # fmt: skip
    if args.hf_steps:
        from transformers import AutoModelForCausalLM, DynamicCache

        torch.set_num_threads(threads[-1])
        t0 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.bfloat16).eval()
        print(f"transformers BitNetForCausalLM (bf16) loaded in {time.perf_counter() - t0:.1f} s")
        with torch.no_grad():
            cache = DynamicCache(config=hf.config)
            ids = torch.randint(0, 128000, (1, 128), generator=g)
            t0 = time.perf_counter()
            out = hf(ids, cache=cache, use_cache=True)
            hf_pf = 128 / (time.perf_counter() - t0)
            times = []
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(args.hf_steps):
                t0 = time.perf_counter()
                out = hf(nxt, cache=out.cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - t0)
        print(f"[{threads[-1]} thread(s)] transformers BitNet: prefill 128 tokens {hf_pf:.2f} tok/s, "
              f"decode at context ~128: {1 / statistics.median(times):.3f} tok/s")  # fmt: skip
        del hf
    accuracy_tiny()
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB | {load()}"
    )


if __name__ == "__main__":
    main()
