"""Next-token sampling for `mulfree generate`, in NumPy (the packed engine's path imports no torch).

Defaults are llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties),
as users of a local CLI expect; temperature 0 is greedy. `SamplerConfig()` is the one source of
these defaults: `mulfree generate`, the server (a request that gives none) and its web page all
read them from here. The order is that of `mulfree.serve.sampling.sample` (the server's, in
torch), whose twin this is: penalties (repeat, presence, frequency over the last
`repeat_last_n` tokens, as llama.cpp) -> temperature -> top-k -> top-p -> min-p -> one uniform
draw inverting the CDF. For equal logits
and an equal uniform number both give the same token (tests/engine/test_sampler.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mulfree.errors import MulfreeError

# Tokens to generate when a request or command gives no limit: `mulfree generate`, the server
# and its page share it (with SamplerConfig's sampling defaults).
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1 = off
    min_p: float = 0.05  # 0 = off: drop tokens below min_p x the most likely one's probability
    repeat_penalty: float = 1.0  # 1 = off; > 1 discourages the last `repeat_last_n` tokens
    repeat_last_n: int = 64
    # OpenAI's: subtract presence_penalty once from a token seen in the window, frequency_penalty
    # once per time it was seen (0 = off; llama.cpp applies them over the same window).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise MulfreeError(f"temperature must be >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise MulfreeError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise MulfreeError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.min_p < 1:
            raise MulfreeError(f"min_p must be in [0, 1), got {self.min_p!r}")
        if not self.repeat_penalty > 0:
            raise MulfreeError(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty!r}")
        if not isinstance(self.repeat_last_n, int) or self.repeat_last_n < 0:
            raise MulfreeError(f"repeat_last_n must be >= 0, got {self.repeat_last_n!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise MulfreeError(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")

    @property
    def penalizes(self) -> bool:
        return bool(self.repeat_last_n) and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0
        )


def penalize(logits: np.ndarray, history: Sequence[int], cfg: SamplerConfig) -> np.ndarray:
    """llama.cpp's penalties over the last `repeat_last_n` tokens: a recent token's logit is
    divided by repeat_penalty when positive, multiplied when negative (each distinct token
    once), then lowered by presence_penalty + count x frequency_penalty."""
    if not cfg.penalizes or not history:
        return logits
    recent, count = np.unique(
        np.asarray(history[-cfg.repeat_last_n :], dtype=np.int64), return_counts=True
    )
    out = logits.copy()
    v = out[recent]
    v = np.where(v > 0, v / np.float32(cfg.repeat_penalty), v * np.float32(cfg.repeat_penalty))
    flat = np.float32(cfg.presence_penalty)
    v = v - (flat + count.astype(np.float32) * np.float32(cfg.frequency_penalty))
    out[recent] = v
    return out


def filtered(logits: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """Temperature-scaled float32 logits [V] with tokens outside top-k / top-p / min-p at -inf."""
    x = logits.astype(np.float32) / np.float32(cfg.temperature)
    if cfg.top_k and cfg.top_k < x.size:
        kth = np.partition(x, x.size - cfg.top_k)[x.size - cfg.top_k]
        x = np.where(x < kth, np.float32(-np.inf), x)
    if cfg.top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        probs = _softmax(x[order])
        before = np.cumsum(probs, dtype=np.float32) - probs  # mass of the tokens ranked above
        drop = before >= np.float32(cfg.top_p)
        drop[0] = False  # the most likely token always stays
        x = x.copy()
        x[order[drop]] = -np.inf
    if cfg.min_p > 0:
        p = _softmax(x)
        x = np.where(p < np.float32(cfg.min_p) * p.max(), np.float32(-np.inf), x)
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float32)
    return e / e.sum(dtype=np.float32)


def sample(logits: np.ndarray, cfg: SamplerConfig, u: float, history: Sequence[int] = ()) -> int:
    """One token id from logits [V]; `u` a uniform number in [0, 1) (unused when greedy)."""
    logits = penalize(np.asarray(logits, dtype=np.float32), history, cfg)
    if cfg.temperature == 0:
        return int(np.argmax(logits))
    cdf = np.cumsum(_softmax(filtered(logits, cfg)), dtype=np.float32)
    target = np.float32(u * float(cdf[-1]))
    # the first token whose CDF exceeds u (zero-probability tokens have no width)
    return min(int(np.searchsorted(cdf, target, side="right")), logits.size - 1)


class Sampler:
    """A SamplerConfig with its own seeded stream of uniform numbers (NumPy PCG64)."""

    def __init__(self, cfg: SamplerConfig, seed: int):
        self.cfg, self.rng = cfg, np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        u = self.rng.random() if self.cfg.temperature else 0.0
        return sample(logits, self.cfg, u, history)
