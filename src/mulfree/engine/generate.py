"""`generate`: stream text from a packed MatMul-free model on the add-only kernels.

    from mulfree.engine.generate import GenerateConfig, generate
    result = generate(GenerateConfig(prompt="Once upon a time", model="packed/"), on_text=print)
    result.decode_tok_s, result.peak_rss_mb

A packed file/directory (`mulfree convert`) of the exact model runs on the torch-free engine
(`mulfree.engine.lite`: memory-mapped weights, the `tokenizers` library, no torch or
transformers import), so the first token comes within about a second of launch. Anything else
— a regular hgrn_bit checkpoint directory (packed in memory on the fly: tq2 ternary, float32
embeddings, the same numbers as the PyTorch model's BitLinear forward), the L-Mul model, a
model or tokenizer object passed in — runs the torch Decoder (`Decoder.prefill`, then
`Decoder.step`). Both decode with the same compiled plan (`mulfree.engine.plan`) and sample
with `mulfree.engine.sampler` (llama.cpp's defaults; temperature 0 = greedy; a seed makes a
run reproducible).
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mulfree import tensorfile
from mulfree.engine import stops
from mulfree.engine.header import FORMAT_NAME, WEIGHTS_FILE
from mulfree.engine.sampler import DEFAULT_MAX_TOKENS, Sampler, SamplerConfig
from mulfree.errors import MulfreeError

if TYPE_CHECKING:
    from mulfree.engine.decode import StepEnergy

ENGINES = ("auto", "lite", "torch")
_DEFAULTS = SamplerConfig()


@dataclass
class GenerateConfig:
    prompt: str
    model: str | None = None  # packed file/dir or checkpoint dir; None = the bundled model
    tokenizer: str | None = None  # default: the model's directory
    max_tokens: int = DEFAULT_MAX_TOKENS  # mulfree.engine.sampler: shared with the server
    # Sampling: the shared defaults (SamplerConfig(), llama.cpp's), as the server's and page's.
    temperature: float = _DEFAULTS.temperature  # 0 = greedy
    top_k: int = _DEFAULTS.top_k  # 0 = off
    top_p: float = _DEFAULTS.top_p  # 1 = off
    min_p: float = _DEFAULTS.min_p  # 0 = off
    repeat_penalty: float = _DEFAULTS.repeat_penalty  # 1 = off
    repeat_last_n: int = _DEFAULTS.repeat_last_n
    presence_penalty: float = _DEFAULTS.presence_penalty  # 0 = off
    frequency_penalty: float = _DEFAULTS.frequency_penalty  # 0 = off
    seed: int | None = None  # None: a random seed (reported in the result, to rerun it)
    threads: int | None = None  # kernel + torch threads (default: one per core)
    stop_on_eos: bool = True
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one
    energy: bool = True  # estimate the energy of a decode step (Decoder.step_energy)
    energy_table: str | None = None  # an energy table name or JSON file (default: energy's)
    # "auto": the torch-free engine (mulfree.engine.lite) when it can run the model, else the
    # torch Decoder; "lite" insists (an error says why it cannot); "torch" always the Decoder.
    engine: str = "auto"
    # BitNet models (mulfree.engine.bitnet_decode): attention products, KV cache, context
    attention: str = "exact"  # "exact" | "lmul"
    mantissa_bits: int | None = 3  # L-Mul attention's mantissa bits
    kv_cache: str = "bfloat16"  # "bfloat16" | "float16" | "float32" | "int8"
    max_context: int | None = None  # tokens per sequence (default: the model's maximum)

    def __post_init__(self):
        if self.attention not in ("exact", "lmul"):
            raise MulfreeError(f"attention must be exact or lmul, got {self.attention!r}")
        if self.engine not in ENGINES:
            raise MulfreeError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise MulfreeError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        self.sampler  # validates the sampling fields  # noqa: B018
        self.stop = tuple(self.stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise MulfreeError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.threads is not None and self.threads < 1:
            raise MulfreeError(f"threads must be >= 1, got {self.threads!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise MulfreeError(f"seed must be an integer, got {self.seed!r}")

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.temperature, self.top_k, self.top_p, self.min_p,
                             self.repeat_penalty, self.repeat_last_n, self.presence_penalty,
                             self.frequency_penalty)  # fmt: skip


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_steps: int  # Decoder.step calls timed in decode_s
    decode_s: float
    peak_rss_mb: float
    stop_reason: str  # "eos" | "max_tokens" | "stop" (a stop string; text ends before it)
    fused_ifg: bool = field(default=False)
    energy: StepEnergy | None = None  # one decode step, estimated (GenerateConfig.energy)
    seed: int | None = None  # the seed the sampler used
    engine: str = "torch"  # "lite" (torch-free, mulfree.engine.lite) or "torch" (Decoder)
    first_token_s: float = 0.0  # from the call's start to the first token's text
    isas: dict = field(default_factory=dict)  # kernel family -> ISA level the decoder ran

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = "mmfree-shakespeare-tiny"


def bundled_model() -> Path | None:
    """The checkpoint shipped in mulfree/assets (a directory with model.safetensors), if any."""
    d = ASSETS / BUNDLED
    return d if (d / WEIGHTS_FILE).is_file() else None


def bundled_packed() -> Path | None:
    """Its packed copy (`mulfree convert --format tq1 --embeddings float32`), if shipped."""
    d = ASSETS / f"{BUNDLED}-packed"
    return d if (d / WEIGHTS_FILE).is_file() else None


def load_model(path: str | Path):
    """A packed model from a packed file/dir, or packed on the fly from a checkpoint (a model
    folder, a train run or one of its steps: `mulfree.engine.load`).

    Returns (model, directory to look for a tokenizer in).
    """
    from mulfree.engine.load import load

    p = Path(path)
    if not p.exists():
        raise MulfreeError(f"model not found: {p}")
    got = load(p, pack=True)
    return got.model, got.tokenizer_dir


def load_tokenizer(path: str | Path):
    from mulfree.models.loading import load_tokenizer as load

    return load(path, hint="; pass --tokenizer DIR")


class _Streamer:
    """Emits the new text of a growing token list through `mulfree.engine.detok.Detokenizer`
    (a short window per token: linear, not quadratic; an incomplete UTF-8 tail held back).
    Works with any tokenizer whose `decode(ids, skip_special_tokens=True)` gives text."""

    def __init__(self, tokenizer, on_text, stop: tuple[str, ...] = ()):
        from mulfree.engine.detok import Detokenizer

        self.tok, self.on_text, self.ids, self.parts = tokenizer, on_text, [], []
        self.detok = Detokenizer(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        # Stop strings: text that could still become one is held back (engine/stops.py).
        self.stop, self.held, self.stopped = stop, "", False

    def push(self, token: int) -> None:
        self.ids.append(token)
        piece = self.detok.add(token)
        if piece and self.stop:  # a stop string can only begin in the held-back tail or here
            pending = self.held + piece
            hit = stops.find_stop(pending, self.stop, 0)
            if hit is not None:
                piece, self.held, self.stopped = pending[:hit], "", True
            else:
                keep = len(pending) - stops.holdback(pending, self.stop)
                piece, self.held = pending[:keep], pending[keep:]
        self._send(piece)

    def _send(self, piece: str) -> None:
        if piece:
            self.parts.append(piece)
            if self.on_text is not None:
                self.on_text(piece)

    def flush(self) -> None:
        """The end: send what was held back for a stop string that did not come."""
        self._send(self.held)
        self.held = ""

    def text(self) -> str:
        if self.stop:
            return "".join(self.parts) + self.held
        return self.tok.decode(self.ids, skip_special_tokens=True)


def _lite_model_path(config: GenerateConfig) -> tuple[Path | None, str]:
    """(the packed file, "") when the torch-free engine can run what `config` asks for, else
    (None, why not)."""
    if os.environ.get("MULFREE_DISABLE_C") == "1" or os.environ.get("MULFREE_ISA") == "torch":
        return None, "the compiled core is disabled (MULFREE_DISABLE_C / MULFREE_ISA=torch)"
    model = config.model or bundled_packed()
    if model is None:
        return None, "no model given and no bundled packed model"
    p = Path(model)
    file = p / WEIGHTS_FILE if p.is_dir() else p
    if not file.is_file():
        return None, f"{file} is not a file"
    tok_dir = Path(config.tokenizer) if config.tokenizer else file.parent
    if not (tok_dir / "tokenizer.json").is_file():
        return None, f"no tokenizer.json in {tok_dir}"
    try:
        meta = tensorfile.read_metadata(file)
    except MulfreeError as e:
        return None, str(e)
    if meta.get("mulfree_format") != FORMAT_NAME:
        return None, f"{file} is not a packed model (pack it with `mulfree convert`)"
    if meta.get("model_family", "hgrn_bit") != "hgrn_bit":
        return None, f"the torch-free engine runs hgrn_bit models, not {meta['model_family']}"
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except ValueError:
        return None, f"{file}: unreadable config metadata"
    if cfg.get("elementwise_mul", "exact") != "exact":
        return None, "the multiplication-free (L-Mul elementwise) model runs on the torch path"
    try:
        from mulfree import _C  # noqa: F401
    except ImportError as e:
        return None, f"the compiled core is not available ({e})"
    return file, ""


def _seed(config: GenerateConfig) -> int:
    return config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)


def _run(prefill, step, ids: list[int], config: GenerateConfig, eos: set[int], tok, on_text,
         t_start: float):  # fmt: skip
    """The generation loop shared by both engines: prefill, then sample / stream / step."""
    seed = _seed(config)
    sampler = Sampler(config.sampler, seed)
    streamer = _Streamer(tok, on_text, config.stop)
    t0 = time.perf_counter()
    logits = prefill(ids)
    prefill_s = time.perf_counter() - t0
    out: list[int] = []
    stop, steps, first = "max_tokens", 0, 0.0
    t1 = time.perf_counter()
    while True:
        token = sampler(logits, ids + out)
        if token in eos:
            stop = "eos"
            break
        out.append(token)
        streamer.push(token)
        if len(out) == 1:
            first = time.perf_counter() - t_start
        if streamer.stopped:
            stop = "stop"
            break
        if len(out) >= config.max_tokens:
            break
        logits = step(token)
        steps += 1
    decode_s = time.perf_counter() - t1
    streamer.flush()
    return dict(text=streamer.text(), token_ids=out, prompt_tokens=len(ids), prefill_s=prefill_s,
                decode_steps=steps, decode_s=decode_s, stop_reason=stop, seed=seed,
                first_token_s=first)  # fmt: skip


def _prompt_ids(ids: list[int], bos, vocab: int) -> list[int]:
    if not ids:
        if bos is None:
            raise MulfreeError("empty prompt and the model has no BOS token to start from")
        ids = [int(bos)]
    if max(ids) >= vocab:
        raise MulfreeError(
            f"the tokenizer produced id {max(ids)} >= the model's vocabulary {vocab}"
        )
    return ids


def generate(config: GenerateConfig, on_text=None, *, model=None, tokenizer=None) -> GenerateResult:
    """Generate from `config.prompt`; `on_text(str)` receives the text as it is produced.

    `model`/`tokenizer` may be passed already loaded (then config.model/tokenizer are unused,
    and the torch Decoder runs).
    """
    t_start = time.perf_counter()
    if config.energy:  # an unknown table fails now, not after the generation
        from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable

        EnergyTable.load(config.energy_table or DEFAULT_TABLE)
    if config.engine != "torch":
        if model is not None or tokenizer is not None:
            why = "a model or tokenizer object was passed in"
            file = None
        else:
            file, why = _lite_model_path(config)
        if file is not None:
            return _generate_lite(config, file, on_text, t_start)
        if config.engine == "lite":
            raise MulfreeError(f"the torch-free engine cannot run this: {why}")
    return _generate_torch(config, on_text, model, tokenizer, t_start)


def _generate_lite(config: GenerateConfig, file: Path, on_text, t_start: float) -> GenerateResult:
    from mulfree.data.tokenizer import load_tokenizer as load_tokenizers_json
    from mulfree.engine import lite

    lm = lite.LiteModel.load(file)
    dec = lite.LiteDecoder(lm, threads=config.threads)
    tok = load_tokenizers_json(Path(config.tokenizer) if config.tokenizer else file.parent)
    ids = _prompt_ids(tok.encode(config.prompt).ids if config.prompt else [],
                      lm.config.get("bos_token_id"), lm.vocab)  # fmt: skip
    eos = lite.eos_ids(lm, tok, file.parent) if config.stop_on_eos else set()
    r = _run(dec.prefill, dec.step, ids, config, eos, tok, on_text, t_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    energy = None
    if config.energy:  # after the text: a cached estimate, or one counted step on the torch path
        energy = lite.step_energy(file, config.energy_table)
    return GenerateResult(peak_rss_mb=peak, fused_ifg=dec.fused_ifg, energy=energy, engine="lite",
                          isas=dict(dec.isas), **r)  # fmt: skip


def _generate_torch(config, on_text, model, tokenizer, t_start: float) -> GenerateResult:
    import torch

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if model is None:
        path = config.model or bundled_model()
        if path is None:
            raise MulfreeError("no --model given and no bundled model in this install")
        model, model_dir = load_model(path)
    else:
        model_dir = None
    if tokenizer is None:
        tok_dir = config.tokenizer or model_dir
        if tok_dir is None:
            raise MulfreeError("no tokenizer: pass --tokenizer DIR")
        tokenizer = load_tokenizer(tok_dir)
    bos = model.config.bos_token_id
    ids = _prompt_ids(list(tokenizer(config.prompt).input_ids) if config.prompt else [],
                      bos if bos is not None else tokenizer.bos_token_id, model.config.vocab_size)  # fmt: skip
    from mulfree.models.loading import eos_token_ids

    eos = set(eos_token_ids(model, tokenizer)) if config.stop_on_eos else set()
    if getattr(model, "layout", None) is not None:  # a PackedBitNetForCausalLM
        dec = model.fused_decoder(threads=config.threads, attention=config.attention,
                            mantissa_bits=config.mantissa_bits, kv_dtype=config.kv_cache,
                            max_context=config.max_context)  # fmt: skip
    else:
        dec = model.fused_decoder(threads=config.threads)
    with torch.inference_mode():
        r = _run(lambda ids: dec.prefill([ids])[0].numpy(), lambda t: dec.step([t])[0].numpy(),
                 ids, config, eos, tokenizer, on_text, t_start)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    # after the timing and the peak memory: counting runs the (slower) torch path once
    last = (r["token_ids"] or ids)[-1]
    step_energy = dec.step_energy([last], config.energy_table) if config.energy else None
    return GenerateResult(peak_rss_mb=peak, fused_ifg=dec.fused_ifg, energy=step_energy,
                          engine="torch", isas=dict(getattr(dec, "isas", {})), **r)  # fmt: skip
