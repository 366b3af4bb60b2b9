"""`mulfree serve MODEL_DIR`: thin over mulfree.serve.serve(ServeConfig(...))."""

from __future__ import annotations

import os

from mulfree._argparse import MANTISSA_BITS, hidden_alias
from mulfree.engine.sampler import DEFAULT_MAX_TOKENS
from mulfree.errors import MulfreeError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (with a web page at /)",
        description="Serve a model directory (config.json + safetensors + tokenizer) over HTTP: "
        "/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics and a page at /.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="model directory: a checkpoint (config.json + safetensors) or a packed model from "
        "`mulfree convert`, with tokenizer files (default: the bundled model)",
    )
    p.add_argument(
        "-m",
        "--model",
        dest="model_opt",
        default=None,
        metavar="DIR",
        help="the model directory, as an option (as `mulfree generate -m`)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument(
        "--model-id", default=None, help="name clients pass as 'model' (default: folder name)"
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "mmfree", "bitnet", "generic"],
        help="auto: batched MatMul-free decoding for hgrn_bit models, the compiled transformer "
        "step for packed BitNet models, generic otherwise",
    )
    p.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "packed", "float"],
        help="hgrn_bit weights: packed 2-bit ternary on the add-only kernels, or the float QAT "
        "weights (auto: packed when the compiled kernels are available)",
    )
    p.add_argument(
        "--mantissa-bits",
        dest="lmul",
        type=int,
        default=None,
        metavar="K",
        help="apply L-Mul attention with K mantissa bits (HF attention models, packed BitNet)",
    )
    hidden_alias(p, "--lmul", dest="lmul", type=int, deprecated=MANTISSA_BITS)
    p.add_argument(
        "--kv-cache",
        choices=["bfloat16", "float16", "float32", "int8"],
        default="bfloat16",
        help="packed BitNet models: KV cache storage, per request x --max-context tokens "
        "(default: %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $MULFREE_API_KEY)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoding together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting; beyond: HTTP 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096)
    p.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="prompt + generated tokens per request (default: the model config's)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host is NAME (repeatable; '*' any). Default: localhost, "
        "IP addresses and the --host address only (a guard against DNS rebinding)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let the web page at ORIGIN (http://host[:port]) call the API, with CORS headers "
        "(repeatable; '*' any page). Default: only the server's own page",
    )
    p.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds a request body may take to arrive"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="per-request time limit, seconds")
    p.add_argument("-t", "--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--energy-table",
        default="horowitz_45nm",
        help="energy table for the per-token estimate ('none' to skip it)",
    )
    p.add_argument(
        "--energy-budget",
        type=float,
        metavar="WH",
        help="measured energy after which new requests get HTTP 503",
    )
    p.add_argument(
        "--grid-intensity",
        metavar="G_PER_KWH|COUNTRY|FILE",
        help="carbon intensity for the gCO2e metrics",
    )
    p.add_argument(
        "--meter",
        choices=["auto", "rapl", "nvml", "tdp"],
        default="auto",
        help="energy meter (auto: RAPL/NVML counters, else a TDP estimate)",
    )
    p.add_argument("--cpu-tdp", type=float, metavar="W", help="CPU TDP for the estimate")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from mulfree.serve import ServeConfig, serve

    if args.model and args.model_opt:
        raise MulfreeError("give the model once: as MODEL_DIR or -m DIR")
    config = ServeConfig(
        model=args.model or args.model_opt,
        tokenizer=args.tokenizer,
        model_id=args.model_id,
        backend=args.backend,
        weights=args.weights,
        lmul=args.lmul,
        kv_cache=args.kv_cache,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("MULFREE_API_KEY") or None,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        max_context=args.max_context,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.timeout,
        threads=args.threads,
        energy_table=None if args.energy_table == "none" else args.energy_table,
        log_level=args.log_level,
        allowed_hosts=tuple(args.allowed_host),
        allowed_origins=tuple(args.allowed_origin),
        body_timeout_s=args.body_timeout,
        energy_budget_wh=args.energy_budget,
        grid_intensity=args.grid_intensity,
        meter=args.meter,
        cpu_tdp_w=args.cpu_tdp,
    )
    serve(config)
    return 0
