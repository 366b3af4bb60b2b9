"""`generate`: stream text from a packed MatMul-free model on the add-only kernels.

    from mulfree.engine.generate import GenerateConfig, generate
    result = generate(GenerateConfig(prompt="Once upon a time", model="packed/"), on_text=print)
    result.decode_tok_s, result.peak_rss_mb

The model is a packed file/directory (`mulfree convert`) or a regular hgrn_bit checkpoint
directory, packed in memory on the fly (tq2 ternary, float32 embeddings: the same numbers as the
PyTorch model's BitLinear forward). The prompt is prefilled with the batched kernels, then each
token runs the fused `Decoder.step` (constant-size recurrent state). Sampling is
`mulfree.serve.sampling.sample` (temperature 0 = greedy; top-k, top-p; a seeded generator).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mulfree.engine import format as fmt
from mulfree.engine.decode import StepEnergy
from mulfree.errors import MulfreeError


@dataclass
class GenerateConfig:
    prompt: str
    model: str | None = None  # packed file/dir or checkpoint dir; None = the bundled model
    tokenizer: str | None = None  # default: the model's directory
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    threads: int | None = None  # kernel + torch threads (default torch.get_num_threads())
    stop_on_eos: bool = True
    energy: bool = True  # estimate the energy of a decode step (Decoder.step_energy)
    energy_table: str | None = None  # an energy table name or JSON file (default: energy's)

    def __post_init__(self):
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise MulfreeError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise MulfreeError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise MulfreeError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise MulfreeError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.threads is not None and self.threads < 1:
            raise MulfreeError(f"threads must be >= 1, got {self.threads!r}")


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_steps: int  # Decoder.step calls timed in decode_s
    decode_s: float
    peak_rss_mb: float
    stop_reason: str  # "eos" | "max_tokens"
    fused_ifg: bool = field(default=False)
    energy: StepEnergy | None = None  # one decode step, estimated (GenerateConfig.energy)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def bundled_model() -> Path | None:
    """The model shipped in mulfree/assets (a directory with model.safetensors), if any."""
    assets = Path(__file__).resolve().parent.parent / "assets"
    if not assets.is_dir():
        return None
    for d in sorted([assets, *[p for p in assets.iterdir() if p.is_dir()]]):
        if (d / fmt.WEIGHTS_FILE).is_file():
            return d
    return None


def load_model(path: str | Path):
    """A packed model from a packed file/dir, or packed on the fly from a checkpoint dir.

    Returns (model, directory to look for a tokenizer in).
    """
    from mulfree.engine.convert import _from_checkpoint_dir
    from mulfree.engine.model import _build, load_packed

    p = Path(path)
    if not p.exists():
        raise MulfreeError(f"model not found: {p}")
    if fmt.looks_packed(p):  # a damaged packed file is reported as such
        return load_packed(p), fmt.weights_file(p).parent
    if p.is_dir():
        config, tensors, tok_dir = _from_checkpoint_dir(p, "tq2", "float32")
        return _build(config, tensors, "tq2", "float32"), tok_dir
    fmt.read_packed(p)  # raises the precise one-line reason (bad header, other format, ...)
    raise MulfreeError(f"{p} is not a model")  # unreachable: read_packed accepted a non-packed file


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MulfreeError(
            f"cannot load a tokenizer from {path} ({first}); pass --tokenizer DIR"
        ) from None


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for v in (model.config.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
              getattr(tokenizer, "eos_token_id", None)):  # fmt: skip
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list | tuple):
            ids.update(int(x) for x in v)
    return ids


class _Streamer:
    """Emits the new text of a growing token list (holds back an incomplete UTF-8 tail)."""

    def __init__(self, tokenizer, on_text):
        self.tok, self.on_text, self.ids, self.sent = tokenizer, on_text, [], 0

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if self.on_text is not None and len(text) > self.sent:
            self.on_text(text[self.sent :])
        self.sent = max(self.sent, len(text))

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=True)


def generate(config: GenerateConfig, on_text=None, *, model=None, tokenizer=None) -> GenerateResult:
    """Generate from `config.prompt`; `on_text(str)` receives the text as it is produced.

    `model`/`tokenizer` may be passed already loaded (then config.model/tokenizer are unused).
    """
    from mulfree.serve.sampling import SamplingParams, make_generator, sample

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.energy:  # an unknown table fails now, not after the generation
        from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable

        EnergyTable.load(config.energy_table or DEFAULT_TABLE)
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
    ids = list(tokenizer(config.prompt).input_ids) if config.prompt else []
    if not ids:
        bos = (
            model.config.bos_token_id
            if model.config.bos_token_id is not None
            else tokenizer.bos_token_id
        )
        if bos is None:
            raise MulfreeError("empty prompt and the model has no BOS token to start from")
        ids = [int(bos)]
    vocab = model.config.vocab_size
    if max(ids) >= vocab:
        raise MulfreeError(
            f"the tokenizer produced id {max(ids)} >= the model's vocabulary {vocab}"
        )
    eos = _eos_ids(model, tokenizer) if config.stop_on_eos else set()
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    gen = make_generator(config.seed)
    dec = model.decoder(threads=config.threads)
    streamer = _Streamer(tokenizer, on_text)

    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = dec.prefill([ids])
        prefill_s = time.perf_counter() - t0
        out: list[int] = []
        stop = "max_tokens"
        steps = 0
        t1 = time.perf_counter()
        while True:
            token = sample(logits[0], params, gen)
            if token in eos:
                stop = "eos"
                break
            out.append(token)
            streamer.push(token)
            if len(out) >= config.max_tokens:
                break
            logits = dec.step([token])
            steps += 1
        decode_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    # after the timing and the peak memory: counting runs the (slower) torch path once
    step_energy = (
        dec.step_energy([(out or ids)[-1]], config.energy_table) if config.energy else None
    )
    return GenerateResult(streamer.text(), out, len(ids), prefill_s, steps, decode_s, peak, stop,
                          dec.fused_ifg, step_energy)  # fmt: skip
