"""`mulfree convert SRC DST` and `mulfree generate [--model PATH] PROMPT`: thin over mulfree.engine."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="pack a MatMul-free (hgrn_bit) or BitNet b1.58 checkpoint into one packed ternary file",
        description="Pack an hgrn_bit checkpoint directory (ours or official), a BitNet b1.58 "
        "checkpoint in the official layout (model_type bitnet, or llama with a bitnet "
        "quantization_config; packed or bf16 master weights), or a packed model to re-pack, "
        "into DST/model.safetensors, copying tokenizer files alongside.",
    )
    p.add_argument(
        "src",
        help="checkpoint directory (config.json + *.safetensors), `mulfree train` run directory "
        "or one of its checkpoints/step_* directories, or a packed model",
    )
    p.add_argument("dst", help="output directory")
    p.add_argument(
        "--format",
        dest="ternary_format",
        default="tq1",
        choices=["tq1", "tq2"],
        help="ternary packing: tq1 1.6 bits/weight (default, smallest) or tq2 2 bits/weight",
    )
    p.add_argument(
        "--embeddings",
        default="int8",
        choices=["int8", "int4", "float32", "bfloat16", "float16"],
        help="token embedding storage (default int8 rows + a float32 step per row; int4: 4-bit "
        "codes + a step per 32 entries, half the bytes; float32 keeps the source values exactly)",
    )
    p.add_argument(
        "--head",
        default="int8",
        choices=["int8", "int4", "bfloat16", "float16", "float32"],
        help="BitNet models: output head storage (default int8 rows + a step per row; int4: a "
        "step per 32 entries; a tied model's embedding is looked up in the same table)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DST as a whole (default: refuse it; DST is never left half-written)",
    )
    p.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="pack a source that has no tokenizer files (default: refuse; generate/serve then "
        "need --tokenizer DIR)",
    )
    p.set_defaults(func=cmd_convert)

    g = sub.add_parser(
        "generate",
        help="generate text with a packed MatMul-free model on the add-only kernels",
        description="Stream a continuation of PROMPT from a packed model (or a checkpoint "
        "directory, packed on the fly); prints prefill and decode tokens/s, peak memory and "
        "the estimated energy of a decode step next to the same step with dense fp32 weights.",
    )
    g.add_argument("prompt", help="prompt text")
    g.add_argument(
        "--model", default=None, help="packed model or checkpoint dir (default: bundled)"
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    g.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most")
    # Sampling, with llama.cpp's defaults (as users of a local CLI expect; 0 = greedy).
    g.add_argument(
        "--temperature",
        "--temp",
        type=float,
        default=0.8,
        help="sampling temperature; 0 = greedy (default: %(default)s)",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=40,
        help="keep the k most likely tokens, 0 = off (default: %(default)s)",
    )
    g.add_argument(
        "--top-p", type=float, default=0.95, help="nucleus mass, 1 = off (default: %(default)s)"
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=0.05,
        help="drop tokens below this fraction of the top token's probability, 0 = off "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--repeat-penalty",
        type=float,
        default=1.0,
        help="penalize the last --repeat-last-n tokens, 1 = off (default: %(default)s)",
    )
    g.add_argument(
        "--repeat-last-n",
        type=int,
        default=64,
        help="tokens the repeat penalty looks back on (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="sampling seed, for a reproducible run (default: random, printed)",
    )
    g.add_argument("--threads", type=int, default=None, help="kernel threads (default: torch's)")
    g.add_argument(
        "--engine",
        choices=["auto", "lite", "torch"],
        default="auto",
        help="auto: the torch-free engine for packed models (fast start), else the "
        "torch one; lite: insist; torch: always torch (default: %(default)s)",
    )
    g.add_argument(
        "--attention",
        choices=["exact", "lmul"],
        default="exact",
        help="BitNet models: attention products QKᵀ and P·V exact or L-Mul (default: %(default)s)",
    )
    g.add_argument(
        "--mantissa-bits",
        type=int,
        default=3,
        help="BitNet models: mantissa bits of L-Mul attention (default: %(default)s)",
    )
    g.add_argument(
        "--kv-cache",
        choices=["bfloat16", "float16", "float32", "int8"],
        default="bfloat16",
        help="BitNet models: KV cache storage (default: %(default)s)",
    )
    g.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="BitNet models: tokens per sequence the KV cache holds (default: the model's maximum)",
    )
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text")
    g.add_argument("--quiet", action="store_true", help="print only the text, no statistics")
    g.add_argument("--no-energy", action="store_true", help="skip the energy estimate")
    g.add_argument(
        "--energy-table",
        default=None,
        help="energy table name or JSON file for the estimate (default: horowitz_45nm)",
    )
    g.set_defaults(func=cmd_generate)


def cmd_convert(args) -> int:
    from mulfree.engine.convert import ConvertConfig, convert

    r = convert(ConvertConfig(args.src, args.dst, args.ternary_format, args.embeddings,
                              force=args.force, no_tokenizer=args.no_tokenizer, head=args.head))  # fmt: skip
    extra = f"; copied {', '.join(r.tokenizer_files)}" if r.tokenizer_files else ""
    print(
        f"wrote {r.path} ({r.nbytes / 1e6:.1f} MB, {args.ternary_format}, {args.embeddings} embeddings){extra}"
    )
    return 0


def cmd_generate(args) -> int:
    from mulfree.engine.generate import GenerateConfig, generate

    config = GenerateConfig(
        prompt=args.prompt,
        model=args.model,
        tokenizer=args.tokenizer,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
        threads=args.threads,
        stop_on_eos=not args.ignore_eos,
        energy=not (args.quiet or args.no_energy),
        energy_table=args.energy_table,
        engine=args.engine,
        attention=args.attention,
        mantissa_bits=args.mantissa_bits,
        kv_cache=args.kv_cache,
        max_context=args.max_context,
    )

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    r = generate(config, on_text=emit)
    sys.stdout.write("\n")
    if not args.quiet:
        sys.stderr.write(
            f"prefill: {r.prompt_tokens} tokens, {r.prefill_tok_s:.1f} tok/s | "
            f"decode: {len(r.token_ids)} tokens, {r.decode_tok_s:.1f} tok/s | "
            f"first token {r.first_token_s:.2f} s | peak RSS {r.peak_rss_mb:.0f} MiB | "
            f"seed {r.seed} | stop: {r.stop_reason} | {r.engine} engine"
            + (f", isa {'/'.join(dict.fromkeys(r.isas.values()))}" if r.isas else "")
            + "\n"
        )
        e = r.energy
        if e is not None:
            line = (
                f"energy per token (estimated, {e.table} table): {e.total_pj / 1e6:.2f} uJ, "
                f"{e.memory_pj / 1e6:.2f} uJ of it memory"
            )
            if e.dense_fp32_pj:
                line += (
                    f" | with dense fp32 weights {e.dense_fp32_pj / 1e6:.2f} uJ: "
                    f"{e.saving:.1f}x less"
                )
            sys.stderr.write(line + "\n")
    return 0
