"""BitNet b1.58 on the packed engine at the 2B4T shape, against transformers' own BitNet on the CPU.

Random weights written in the official layout of microsoft/bitnet-b1.58-2B-4T (hidden 2560,
30 layers, 20 heads / 5 KV heads, MLP 6912, vocab 128,256, tied embeddings; packed uint8
4-per-byte + weight_scale, bfloat16 tables: `mulfree.models.bitnet.synthetic`), then
1. `mulfree convert` with an int8 and an int4 head (tq1 on disk): file sizes;
2. the machine's streaming bandwidth in this run (torch sum over a 1 GiB float32 tensor, the
   read pattern of a decode step), per thread count, giving the weight-bytes roofline of a
   step (packed tq2 weights + head + the KV cache read at that context);
3. load time, time to first token (prefill of a `--prompt`-token prompt + head), prefill tok/s
   (`--prefill`-token prompt, chunks of 64) and decode tok/s at 1 and 2 threads, exact vs L-Mul
   attention (`--mantissa-bits`, default 3), contexts 128 and 2048, for the compiled step
   (engine.bitnet_plan: every layer in one plan_run, BitNetDecoder's default) and the torch step
   (`fused=False`, its spec): the cache is filled with random keys/values up to the context (a
   decode step's cost does not depend on their values), bfloat16 KV cache. `load_packed` lays
   the weights out as the dispatcher picks (t81 or tq2 per input width); where it picked t81
   somewhere, a model on the same weights all in tq2 ("tq2 layout") is timed interleaved with
   it and a "weight layout" line gives the ratios;
4. transformers' BitNetForCausalLM on the same checkpoint (bfloat16, its BitLinear unpacks
   the 2-bit weights at every call; TORCHDYNAMO_DISABLE=1 as torch.compile on CPU takes
   minutes), decode tok/s at 128 context, a few steps;
5. accuracy effects on a tiny official-layout model: int8 / int4 / bf16 head against the float32
   head, and bf16 / fp16 / int8 KV caches against float32 (logit SQNR, top-1 agreement).
Peak RSS is printed. Timings: median of `--steps` steps after 2 warm-up rounds, the variants
(compiled / torch, exact / L-Mul, int4 head) interleaved round by round; the load average is
printed (the machine is shared: absolute numbers move with the load, ratios less). A progress
bar (stderr) follows the full run (~15-25 min here, most of it writing and converting the
checkpoint on the first run; --workdir keeps them for the next).

    flock /tmp/mulfree-bench.lock python benchmarks/bench_bitnet.py
    python benchmarks/bench_bitnet.py --quick   # ~1 min: compiled vs torch step at a small shape
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

# --quick: the 2B4T layer structure (head_dim 128, 4 query heads per kv head, ReLU^2) scaled down
SMALL = dict(B1_58_2B_4T, vocab_size=16384, hidden_size=1024, intermediate_size=2752,
             num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)  # fmt: skip


_BAR = None  # the full run's progress bar: lines go above it


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    if _BAR is None:
        print(line, flush=True)
    else:
        _BAR.write(line)


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


def set_length(dec: BitNetDecoder, n: int) -> None:
    """Slot 0 holds n positions (its cache contents as they are)."""
    dec.lengths[0] = n
    if dec.fused:
        dec.plan.lengths[0] = n


def fill_cache(dec: BitNetDecoder, ctx: int) -> None:
    """Random keys/values in slot 0, its length ctx - 1 (the next step is token ctx)."""
    g = torch.Generator().manual_seed(0)
    if dec.fused:  # the compiled cache: bf16 bit patterns in uint16 arrays (engine.bitnet_plan)
        p = dec.plan
        for a in (p.k, p.v):
            r = torch.randn(a[:, 0].shape, generator=g).to(torch.bfloat16)
            a[:, 0] = r.view(torch.int16).numpy().view(a.dtype)
    else:
        for t in dec.cache.k + dec.cache.v:
            t[0].copy_(torch.randn(t[0].shape, generator=g).to(t.dtype))
    set_length(dec, ctx - 1)


def time_interleaved(runs: dict[str, BitNetDecoder], ctx: int, steps: int) -> dict[str, float]:
    """Median seconds of one decode step (embedding, every layer, head, argmax) at context ctx
    for each named decoder, their steps interleaved round by round so all see the same load;
    2 warm-up rounds."""
    for dec in runs.values():
        fill_cache(dec, ctx)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps + 2):
        for name, dec in runs.items():
            set_length(dec, ctx - 1)
            t0 = time.perf_counter()
            int(dec.step([17])[0].argmax())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v[2:]) for k, v in times.items()}


def decoders(model, threads: int, ctx: int, mbits: int, torch_path: bool = True) -> dict:
    """The timed variants: compiled exact / L-Mul (and the torch step's, when torch_path)."""
    kw = dict(threads=threads, kv_dtype="bfloat16", max_context=ctx, mantissa_bits=mbits)
    out = {f"compiled {a}": BitNetDecoder(model, attention=a, **kw) for a in ("exact", "lmul")}
    if torch_path:
        out.update({f"torch {a}": BitNetDecoder(model, attention=a, fused=False, **kw)
                    for a in ("exact", "lmul")})  # fmt: skip
    return out


def report(t: int, ctx: int, res: dict[str, float], roof: float | None = None, nbytes: int = 0,
           bw: float = 0.0) -> None:  # fmt: skip
    line = " | ".join(f"{k} {1 / v:.2f} tok/s ({v * 1e3:.1f} ms)" for k, v in res.items())
    say(f"[{t} thread(s)] context {ctx}: {line}")
    ce, cl = res["compiled exact"], res["compiled lmul"]
    extra = f"  L-Mul attention / exact time (compiled): {cl / ce:.2f}x"
    if "torch exact" in res:
        extra += (f"; compiled speed-up over torch: exact {res['torch exact'] / ce:.2f}x, "
                  f"L-Mul {res['torch lmul'] / cl:.2f}x")  # fmt: skip
    if roof:
        extra += (f"; roofline {roof:.1f} tok/s ({nbytes / 1e6:.0f} MB/step at {bw:.1f} GB/s): "
                  f"compiled exact at {100 / ce / roof:.0f} %")  # fmt: skip
    say(extra)


def layouts(model) -> dict[str, int]:
    """Layout -> number of ternary projections of `model` in it."""
    from mulfree.engine.modules import PackedBitLinear

    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, PackedBitLinear):
            out[m.layout] = out.get(m.layout, 0) + 1
    return out


def time_prefills(decs: dict[str, BitNetDecoder], prompt: list[int], rounds: int = 3) -> dict:
    """Prefill tok/s of `prompt` per named decoder: the median of `rounds` prompts, interleaved
    round by round, after one short warm-up prompt each."""
    for dec in decs.values():
        dec.prefill(prompt[:8])
    times: dict[str, list[float]] = {k: [] for k in decs}
    for _ in range(rounds):
        for name, dec in decs.items():
            t0 = time.perf_counter()
            dec.prefill(prompt)
            times[name].append(time.perf_counter() - t0)
    return {k: len(prompt) / statistics.median(v) for k, v in times.items()}


def layout_line(t: int, model, dec_s: tuple[float, float], pf: tuple[float, float]) -> None:
    """The "weight layout" line: the dispatcher's layout against all-tq2 (seconds per step,
    prefill tok/s: (auto, tq2))."""
    lay = ", ".join(f"{n} {k}" for k, n in sorted(layouts(model).items()))
    say(f"[{t} thread(s)] weight layout: {lay} projections; decode {1 / dec_s[0]:.2f} vs all-tq2 "
        f"{1 / dec_s[1]:.2f} tok/s = {dec_s[1] / dec_s[0]:.2f}x, prefill {pf[0]:.1f} vs "
        f"{pf[1]:.1f} tok/s = {pf[0] / pf[1]:.2f}x (interleaved)")


def quick(args, threads: list[int]) -> None:
    """Compiled vs torch step at the SMALL shape (no convert, no transformers baseline)."""
    from mulfree.engine.bitnet_model import from_checkpoint
    from mulfree.engine.modules import lay_out_

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        ck = write_random_checkpoint(Path(d) / "small", SMALL, seed=0)
        model = from_checkpoint(ck, head_format="int8")
        lay_out_(model)  # as load_packed does (from_checkpoint keeps tq2)
        ref = from_checkpoint(ck, head_format="int8") if "t81" in layouts(model) else None
    say(f"small model (hidden 1024, 4 layers, 8 / 2 heads, head_dim 128, MLP 2752, vocab "
          f"16384, int8 head) built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    for t in threads:
        torch.set_num_threads(t)
        for ctx in (128, 1024):
            runs = decoders(model, t, ctx, args.mantissa_bits)
            if ref is not None:
                runs["compiled exact, tq2 layout"] = BitNetDecoder(ref, threads=t, kv_dtype="bfloat16",
                                                                   max_context=ctx)  # fmt: skip
            res = time_interleaved(runs, ctx, args.steps)
            report(t, ctx, res)
            del runs
        prompt = torch.randint(
            0, 16000, (128,), generator=torch.Generator().manual_seed(2)
        ).tolist()
        decs = {name: BitNetDecoder(m, threads=t, kv_dtype="bfloat16", max_context=256, fused=fused)
                for name, m, fused in (("compiled", model, None), ("torch", model, False),
                                       ("tq2 layout", ref, None)) if m is not None}  # fmt: skip
        pf = time_prefills(decs, prompt)
        say(f"[{t} thread(s)] prefill 128 tokens: compiled {pf['compiled']:.0f} tok/s, "
              f"torch {pf['torch']:.0f} tok/s")  # fmt: skip
        if ref is not None:
            layout_line(t, model, (res["compiled exact"], res["compiled exact, tq2 layout"]),
                        (pf["compiled"], pf["tq2 layout"]))  # fmt: skip
    say(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB | {load()}")


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
    say("tiny model (hidden 64, 2 layers, vocab 300), 48 positions:")
    bf16 = QuantizedHead.from_float(w, "bfloat16")(h)  # the head as 2B4T ships it
    for fmt in ("bfloat16", "int8", "int4"):
        got = QuantizedHead.from_float(w, fmt)(h)
        top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        vs_bf16 = float((got.argmax(-1) == bf16.argmax(-1)).float().mean())
        say(f"  head {fmt:8s} vs float32: logit SQNR {sqnr(ref, got):5.1f} dB, top-1 agreement "
              f"{top1:.3f} | vs the bf16 head: SQNR {sqnr(bf16, got):5.1f} dB, top-1 {vs_bf16:.3f}")  # fmt: skip

    # the compiled step's int8 head (tfm_head_i8) also quantizes its input to int8 (absmax)
    from mulfree.engine.bitnet_ref import head_i8

    q8 = QuantizedHead.from_float(w, "int8")
    got = torch.from_numpy(head_i8(h.numpy(), q8.weight_int8.numpy(), q8.weight_step.numpy()))
    top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    vs_bf16 = float((got.argmax(-1) == bf16.argmax(-1)).float().mean())
    say(f"  head int8 + int8 activations (compiled) vs float32: logit SQNR {sqnr(ref, got):5.1f} dB, "
        f"top-1 {top1:.3f} | vs the bf16 head: SQNR {sqnr(bf16, got):5.1f} dB, top-1 {vs_bf16:.3f}")  # fmt: skip

    def run(kv):
        dec = BitNetDecoder(model, kv_dtype=kv)
        out = [dec.prefill(ids[:, :8]).clone()]
        out += [dec.step([int(t)]).clone() for t in ids[0, 8:]]
        return torch.cat(out)

    base = run("float32")
    for kv in ("bfloat16", "float16", "int8"):
        got = run(kv)
        top1 = float((got.argmax(-1) == base.argmax(-1)).float().mean())
        say(
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
    ap.add_argument("--quick", action="store_true", help="compiled vs torch at a small shape")
    ap.add_argument("--shape", choices=("2b4t", "small"), default="2b4t",
                    help="the full run's model shape (small: a quick check of the full run)")  # fmt: skip
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    say(load())
    if args.quick:
        if "--steps" not in os.sys.argv:
            args.steps = 5
        quick(args, threads)
        return
    from tqdm import tqdm

    # stages: checkpoint, 2 converts, bandwidth, load, per thread count (prefill + contexts),
    # transformers, accuracy
    global _BAR
    bar = _BAR = tqdm(total=6 + len(threads) * (1 + len(contexts)) + (1 if args.hf_steps else 0),
               desc="bench_bitnet", unit="stage", file=os.sys.stderr)  # fmt: skip
    work = Path(args.workdir) / args.shape
    work.mkdir(parents=True, exist_ok=True)
    ck = work / "ckpt"
    shape = B1_58_2B_4T if args.shape == "2b4t" else SMALL
    if not (ck / "model.safetensors").is_file():
        bar.set_postfix_str(f"writing the {args.shape}-shape checkpoint")
        t0 = time.perf_counter()
        write_random_checkpoint(ck, shape, seed=0)
        say(f"wrote the random {args.shape}-shape checkpoint in {time.perf_counter() - t0:.0f} s")
    bar.update()
    say(f"official-layout checkpoint: {(ck / 'model.safetensors').stat().st_size / 1e6:.0f} MB "
          "(packed 2-bit ternary + bf16 tied embedding)")  # fmt: skip
    packed = {}
    for head in ("int8", "int4"):
        dst = work / f"packed-{head}"
        if not (dst / "model.safetensors").is_file():
            bar.set_postfix_str(f"convert --head {head}")
            t0 = time.perf_counter()
            convert(ConvertConfig(str(ck), str(dst), head=head, no_tokenizer=True, force=True))
            say(f"convert --head {head}: {time.perf_counter() - t0:.0f} s")
        bar.update()
        packed[head] = dst
        say(f"packed file, tq1 + {head} head (tied): "
              f"{(dst / 'model.safetensors').stat().st_size / 1e6:.0f} MB")  # fmt: skip

    bar.set_postfix_str("bandwidth")
    bw = {t: bandwidth_gbs(t) for t in threads}
    for t, v in bw.items():
        say(f"streaming read bandwidth, {t} thread(s): {v:.1f} GB/s")
    bar.update()

    bar.set_postfix_str("load")
    t0 = time.perf_counter()
    model = load_packed(packed["int8"])
    say(f"load_packed (int8 head): {time.perf_counter() - t0:.1f} s; weight layout: "
        + ", ".join(f"{n} {k}" for k, n in sorted(layouts(model).items())) + " projections")
    m4 = load_packed(packed["int4"])
    ref = load_packed(packed["int8"], layout="tq2") if "t81" in layouts(model) else None
    bar.update()
    g = torch.Generator().manual_seed(1)
    for t in threads:
        torch.set_num_threads(t)
        bar.set_postfix_str(f"{t} thread(s): time to first token, prefill")
        dec = BitNetDecoder(model, threads=t, kv_dtype="bfloat16",
                            max_context=max(contexts + [args.prefill]))  # fmt: skip
        prompt = torch.randint(
            0, min(128000, shape["vocab_size"]), (args.prompt,), generator=g
        ).tolist()
        t0 = time.perf_counter()
        int(dec.prefill(prompt)[0].argmax())
        ttft = time.perf_counter() - t0
        long = torch.randint(
            0, min(128000, shape["vocab_size"]), (args.prefill,), generator=g
        ).tolist()
        decs = {"auto": dec}
        if ref is not None:
            decs["tq2 layout"] = BitNetDecoder(ref, threads=t, kv_dtype="bfloat16",
                                               max_context=max(contexts + [args.prefill]))  # fmt: skip
        pfs = time_prefills(decs, long)
        pf = pfs["auto"]
        say(f"[{t} thread(s)] compiled step: time to first token ({args.prompt}-token prompt, "
              f"model loaded): {ttft:.2f} s | prefill {args.prefill} tokens: {pf:.1f} tok/s "
              "(median of 3)")  # fmt: skip
        del dec, decs
        bar.update()
        for ctx in contexts:
            bar.set_postfix_str(f"{t} thread(s): decode at context {ctx}")
            # the torch step at the shortest context only: its L-Mul attention at 2048 costs
            # seconds per token
            runs = decoders(model, t, ctx, args.mantissa_bits, torch_path=ctx == min(contexts))
            if ctx == min(contexts):
                runs["compiled exact, int4 head"] = BitNetDecoder(m4, threads=t, kv_dtype="bfloat16",
                                                                  max_context=ctx)  # fmt: skip
                if ref is not None:
                    runs["compiled exact, tq2 layout"] = BitNetDecoder(
                        ref, threads=t, kv_dtype="bfloat16", max_context=ctx)  # fmt: skip
            res = time_interleaved(runs, ctx, args.steps)
            nbytes = step_bytes(model, ctx)
            report(t, ctx, res, bw[t] * 1e9 / nbytes, nbytes, bw[t])
            if "compiled exact, int4 head" in res:
                n4 = step_bytes(m4, ctx)
                say(f"  int4 head: roofline {bw[t] * 1e9 / n4:.1f} tok/s ({n4 / 1e6:.0f} MB/step)")
            if "compiled exact, tq2 layout" in res:
                layout_line(t, model, (res["compiled exact"], res["compiled exact, tq2 layout"]),
                            (pf, pfs["tq2 layout"]))  # fmt: skip
            del runs
            bar.update()
    del model, m4, ref

    say(f"peak RSS of the packed engine (int8- and int4-head models, caches for context "
          f"{max(contexts)}): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # fmt: skip
    if args.hf_steps:
        from transformers import AutoModelForCausalLM, DynamicCache

        bar.set_postfix_str("transformers BitNetForCausalLM")
        torch.set_num_threads(threads[-1])
        t0 = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.bfloat16).eval()
        say(f"transformers BitNetForCausalLM (bf16) loaded in {time.perf_counter() - t0:.1f} s")
        with torch.no_grad():
            cache = DynamicCache(config=hf.config)
            ids = torch.randint(0, min(128000, shape["vocab_size"]), (1, 128), generator=g)
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
        say(f"[{threads[-1]} thread(s)] transformers BitNet: prefill 128 tokens {hf_pf:.2f} tok/s, "
              f"decode at context ~128: {1 / statistics.median(times):.3f} tok/s")  # fmt: skip
        del hf
        bar.update()
    bar.set_postfix_str("accuracy (tiny model)")
    accuracy_tiny()
    bar.update()
    bar.close()
    _BAR = None
    say(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB | {load()}")


if __name__ == "__main__":
    main()
