"""ServeConfig: everything `mulfree serve` takes, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

from mulfree.engine.sampler import DEFAULT_MAX_TOKENS
from mulfree.errors import MulfreeError

BACKENDS = ("auto", "mmfree", "bitnet", "generic")
KV_CACHES = ("bfloat16", "float16", "float32", "int8")
WEIGHTS = ("auto", "packed", "float")


@dataclass
class ServeConfig:
    """Settings of one server. `model` is a model directory (config.json + safetensors, with its
    tokenizer unless `tokenizer` names another directory)."""

    model: str | None = None
    tokenizer: str | None = None
    model_id: str | None = None  # the name clients pass as "model"; default: the folder name
    backend: str = "auto"
    weights: str = "auto"  # "packed" | "float" | "auto" (packed for hgrn_bit with compiled kernels)
    lmul: int | None = None  # L-Mul attention mantissa bits (HF attention models, packed BitNet)
    kv_cache: str = "bfloat16"  # a packed BitNet's KV cache: bfloat16 | float16 | float32 | int8
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer <api_key>"
    max_batch: int = 16  # requests decoding together
    max_queue: int = 64  # requests waiting for a batch place; beyond: HTTP 429
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = DEFAULT_MAX_TOKENS  # when a request gives none (= generate's)
    max_prompt_tokens: int | None = None  # default: the model's context length
    max_context: int | None = None  # default: config.max_position_embeddings
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 600.0
    threads: int | None = None  # torch intra-op threads
    energy_table: str | None = "horowitz_45nm"  # None: no energy estimate
    log_level: str = "info"
    # Besides localhost, IP literals and the bound address (see serve/guard.py); "*": any.
    allowed_hosts: tuple[str, ...] = ()
    # Web origins (scheme://host[:port]) other than the server's own that may call it from a
    # browser; they also get CORS headers. "*": any page (only sensible with an api_key).
    allowed_origins: tuple[str, ...] = ()
    body_timeout_s: float = 30.0  # a request body must arrive within this (else 408)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    # Measured energy (mulfree.serve.energy): a budget after which new requests get HTTP 503.
    energy_budget_wh: float | None = None
    grid_intensity: str | None = None  # gCO2e/kWh, a country code, or a series file
    meter: str = "auto"  # auto | rapl | nvml | tdp
    cpu_tdp_w: float | None = None
    powercap_root: str = "/sys/class/powercap"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise MulfreeError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.weights not in WEIGHTS:
            raise MulfreeError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if self.kv_cache not in KV_CACHES:
            raise MulfreeError(
                f"kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}"
            )
        if not 0 <= int(self.port) <= 65535:
            raise MulfreeError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch", "max_tokens_limit", "default_max_tokens", "max_body_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MulfreeError(f"{name} must be a positive integer, got {v!r}")
        if (
            isinstance(self.max_queue, bool)
            or not isinstance(self.max_queue, int)
            or self.max_queue < 0
        ):
            raise MulfreeError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        for name in ("max_prompt_tokens", "max_context", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise MulfreeError(f"{name} must be a positive integer, got {v!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise MulfreeError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit ({self.max_tokens_limit})"
            )
        if not self.request_timeout_s > 0:
            raise MulfreeError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        for name in ("body_timeout_s", "keep_alive_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise MulfreeError(f"{name} must be > 0, got {v!r}")
        self.allowed_hosts = tuple(self.allowed_hosts)
        self.allowed_origins = tuple(self.allowed_origins)
        for o in self.allowed_origins:
            if o != "*" and not (o.startswith(("http://", "https://")) and len(o) > 8):
                raise MulfreeError(
                    f"allowed origin {o!r} must be '*' or look like http://host[:port]"
                )
        for name in ("energy_budget_wh", "cpu_tdp_w"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and 0 < v < float("inf")):
                raise MulfreeError(f"{name} must be a positive number, got {v!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise MulfreeError("api_key must not be empty")
