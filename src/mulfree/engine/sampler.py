"""Next-token sampling: the one sampler, for `mulfree generate` (NumPy) and the server (torch).

Two twins of one rule set, in this module:
* NumPy (`SamplerConfig`, `sample`, `Sampler`): what `mulfree generate` runs; the torch-free
  engine's path imports no torch, so this half never does.
* torch (`SamplingParams`, `sample_torch`, `sample_batch`, `token_logprobs`): what the server
  runs on a whole decode step's logits, each request with its own torch.Generator, plus
  logit_bias and the log-probabilities the API reports; torch is imported inside these
  functions only. For equal logits and an equal uniform number both halves give the same token
  (tests/engine/test_lite.py, tests/engine/test_sampler.py).

Defaults are llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties),
as users of a local CLI expect; temperature 0 is greedy. `SamplerConfig()` is the one source of
these defaults: `mulfree generate`, the server (a request that gives none) and its web page all
read them from here. The order (llama.cpp's), in both halves: logit_bias (torch half only) ->
penalties (repeat, presence, frequency over the last `repeat_last_n` tokens, as llama.cpp) ->
temperature -> top-k -> top-p -> min-p -> one uniform draw inverting the CDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from mulfree.errors import MulfreeError

if TYPE_CHECKING:
    import torch

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

# ---------------------------------------------------------------------------------------------
# The torch half: the server's sampler. `sample_torch(logits, params, generator, history)` is the
# spec, one row at a time; `sample_batch` is what the scheduler runs on a whole decode step's
# logits and returns the same tokens (tested). A token is drawn by inverting the CDF with one
# uniform number from the request's generator, so a request's tokens depend only on its own
# logits, history and generator: the same seed gives the same text alone or in a batch. (One
# uniform per token, rather than torch.multinomial's internal draws, also makes the batched
# version a cumsum and a searchsorted over all rows.) The defaults a request gets when it names
# none are `SamplerConfig()`'s, via `SamplingParams.defaults()`; a bare `SamplingParams()` is
# plain sampling (every filter off). Reported log-probabilities are the model's own
# (log-softmax of the raw logits, before bias, penalties and temperature), as OpenAI and vLLM
# report them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax); top_k 0, top_p 1, min_p 0, repeat_penalty 1 and
    presence/frequency 0 disable those steps. logit_bias: (token id, bias added to its logit)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @classmethod
    def defaults(cls, **overrides) -> SamplingParams:
        """The shared defaults (`SamplerConfig()`), with overrides."""
        d = SamplerConfig()
        base = cls(d.temperature, d.top_p, d.top_k, d.min_p, d.repeat_penalty, d.repeat_last_n,
                   d.presence_penalty, d.frequency_penalty)  # fmt: skip
        return replace(base, **overrides)

    def sampler_config(self) -> SamplerConfig:
        """The NumPy twin's config (logit_bias has no counterpart there)."""
        return SamplerConfig(self.temperature, self.top_k, self.top_p, self.min_p,
                             self.repeat_penalty, self.repeat_last_n, self.presence_penalty,
                             self.frequency_penalty)  # fmt: skip

    @property
    def filters(self) -> bool:
        return bool(self.top_k) or self.top_p < 1.0 or self.min_p > 0

    @property
    def penalizes(self) -> bool:
        return bool(self.repeat_last_n) and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0
        )


def make_generator(seed: int) -> torch.Generator:
    import torch

    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def _adjust(logits: torch.Tensor, params: SamplingParams, history: Sequence[int]) -> torch.Tensor:
    """float32 logits [V] after logit_bias and the penalties (the twin of `penalize`)."""
    import torch

    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long)
        bias = torch.tensor([b for _, b in params.logit_bias], dtype=torch.float32)
        logits = logits.index_add(0, ids, bias)
    if not params.penalizes or not history:
        return logits
    recent, count = torch.unique(
        torch.tensor(list(history[-params.repeat_last_n :]), dtype=torch.long), return_counts=True
    )
    v = logits[recent]
    rp = torch.tensor(params.repeat_penalty, dtype=torch.float32)
    v = torch.where(v > 0, v / rp, v * rp)
    flat = torch.tensor(params.presence_penalty, dtype=torch.float32)
    v = v - (flat + count.float() * torch.tensor(params.frequency_penalty, dtype=torch.float32))
    return logits.index_copy(0, recent, v)


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits [V] with tokens outside top-k / top-p / min-p set to -inf (the
    twin of `filtered`)."""
    import torch

    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        # stable: tied tokens rank by id (as the NumPy twin's argsort), so which one of a tie
        # at the top-p boundary is dropped is defined
        sorted_logits, order = torch.sort(logits, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before
        # it already does. The first token is always kept.
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before >= params.top_p
        drop[0] = False
        logits = logits.scatter(0, order[drop], float("-inf"))
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def _filter_rows(x: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`_filter` of every row of x [R, V] under one params, in one set of calls: the same
    values, bit for bit (tests/engine/test_sampler.py). What `sample_batch` runs where its
    top-k shortcut (`_draw_top_k`) does not apply."""
    import torch

    neg = float("-inf")
    if params.top_k and params.top_k < x.shape[1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, neg)
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(x, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before >= params.top_p
        drop[:, 0] = False
        x = x.scatter(1, order, sorted_logits.masked_fill(drop, neg))
    if params.min_p > 0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < params.min_p * probs.max(dim=-1, keepdim=True).values, neg)
    return x


def _uniform(generator: torch.Generator) -> torch.Tensor:
    import torch

    return torch.rand((), generator=generator, dtype=torch.float64)


def sample_torch(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    history: Sequence[int] = (),
) -> int:
    """One token id from one row of logits [vocab] (the spec of `sample_batch`); `history` is
    the request's tokens so far (prompt + output), for the penalties."""
    import torch

    logits = _adjust(logits.float(), params, history)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scaled = _filter(logits / params.temperature, params)
    cdf = torch.cumsum(torch.softmax(scaled, dim=-1), dim=-1)  # [V]
    u = (_uniform(generator) * cdf[-1].double()).float()
    # The first token whose CDF exceeds u (zero-probability tokens have no width: never chosen).
    return min(int(torch.searchsorted(cdf, u.reshape(1), right=True)), logits.numel() - 1)


def sample_batch(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    histories: list[Sequence[int]] | None = None,
) -> list[int]:
    """Token ids for every row of logits [B, vocab]; row b uses params[b], generators[b] and
    histories[b] (default: no history). The same tokens as `sample_torch` row by row (tested):
    rows with the same filters are drawn together, by `_draw_top_k` where a top-k applies, else
    by `_draw_full`."""
    import torch

    logits = logits.float()
    if any(p.logit_bias or p.penalizes for p in params):
        hist = histories or [()] * len(params)
        logits = torch.stack([_adjust(logits[b], p, hist[b]) for b, p in enumerate(params)])
    B, V = logits.shape
    out = [0] * B
    greedy = [b for b, p in enumerate(params) if p.temperature == 0]
    if greedy:
        for b, t in zip(greedy, _rows(logits, greedy).argmax(dim=-1).tolist(), strict=True):
            out[b] = t
    drawn = [b for b, p in enumerate(params) if p.temperature != 0]
    # one uniform per drawn row, in row order (a generator shared by rows is drawn in that order)
    uniforms = {b: _uniform(generators[b]) for b in drawn}
    groups: dict[tuple, list[int]] = {}  # rows with the same filters, drawn together
    for b in drawn:
        p = params[b]
        groups.setdefault((p.top_k, p.top_p, p.min_p), []).append(b)
    for rows in groups.values():
        p = params[rows[0]]
        x = _rows(logits, rows)  # [R, V]
        temps = torch.tensor([params[b].temperature for b in rows], dtype=torch.float32)
        u = torch.stack([uniforms[b] for b in rows])  # [R] float64
        toks = None
        if p.top_k and p.top_k < V:
            toks = _draw_top_k(x, temps, p, u)
        if toks is None:
            toks = _draw_full(x, temps, p, u)
        for b, t in zip(rows, toks.tolist(), strict=True):
            out[b] = t
    return out


def _rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """x[rows] without the copy when rows are all of x's rows in order."""
    return x if len(rows) == x.shape[0] and rows == list(range(len(rows))) else x[rows]


def _draw_full(x: torch.Tensor, temps: torch.Tensor, p: SamplingParams, u: torch.Tensor):
    """Tokens [R] of raw logits x [R, V] under one filter set: `sample_torch`'s ops on every
    row at once (the temperature, `_filter_rows`, the CDF over the vocabulary)."""
    import torch

    scaled = x / temps.unsqueeze(1)  # [R, V]
    if p.filters:
        scaled = _filter_rows(scaled, p)
    cdf = torch.cumsum(torch.softmax(scaled, dim=-1), dim=-1)  # [R, V]
    target = (u * cdf[:, -1].double()).float().unsqueeze(1)  # [R, 1]
    return torch.searchsorted(cdf, target, right=True).clamp_max(x.shape[1] - 1)[:, 0]


def _draw_top_k(x: torch.Tensor, temps: torch.Tensor, p: SamplingParams, u: torch.Tensor):
    """`_draw_full` where a top-k applies, with the work after the top-k done on a window of
    candidates (the 2k + 8 largest logits), not the whole vocabulary; the same tokens, bit for
    bit (tests/engine/test_sampler.py), or None (then `_draw_full`) where the shortcut's
    premises fail: a NaN or infinite value among the k largest, or values tied with the k-th
    reaching past the window.

    Why the values are the spec's: dividing by a temperature > 0 keeps the order, so the
    window's scaled values are the spec's largest ones, and its k-th is the spec's threshold;
    the spec's survivors (>= the k-th: ties included, common in a packed model's quantized
    logits) all sit in the window, the rest of it is set to -inf as the spec does. Every
    softmax the spec takes over the vocabulary is still taken over a [R, V] row equal to the
    spec's, because its sum depends on where the values sit; torch's cumulative sum on the CPU
    accumulates in double, in order, so a prefix of it (top-p) and the candidates' own sum in
    id order (the final CDF) equal the spec's values at those places (a zero probability
    changes no partial sum). The token is then the first candidate whose CDF exceeds the
    target, which is where the spec's search over the vocabulary lands (its CDF only rises at
    candidates)."""
    import torch

    R, V = x.shape
    k = p.top_k
    w = min(V, 2 * k + 8)  # the window
    neg = float("-inf")
    top = torch.topk(x, w, dim=-1)  # raw logits: the same ranking as the scaled ones
    vals = top.values / temps.unsqueeze(1)  # [R, w]: the spec's scaled values, descending
    kth = vals[:, k - 1 : k]
    if not bool(torch.isfinite(vals[:, :k]).all()):
        return None  # NaN (ranked first by topk) or inf: the spec's ops decide
    if w < V and bool((vals[:, w - 1 : w] == kth).any()):
        return None  # the k-th value's ties may reach past the window
    cand, perm = top.indices.sort(dim=-1)  # [R, w]: the window in id order
    cv = vals.masked_fill(vals < kth, neg).gather(1, perm)  # the spec's top-k row, id order
    if p.top_p < 1.0:
        sv, o = torch.sort(cv, dim=-1, descending=True, stable=True)  # the spec's order
        probs = torch.softmax(torch.cat((sv, sv.new_full((R, V - w), neg)), dim=1), dim=-1)[:, :w]
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before >= p.top_p
        drop[:, 0] = False
        cv = cv.scatter(1, o, sv.masked_fill(drop, neg))
    row = x.new_full((R, V), neg)
    if p.min_p > 0:
        pc = torch.softmax(row.scatter_(1, cand, cv), dim=-1).gather(1, cand)  # [R, w]
        cv = cv.masked_fill(pc < p.min_p * pc.amax(dim=-1, keepdim=True), neg)
    probs = torch.softmax(row.scatter_(1, cand, cv), dim=-1).gather(1, cand)  # [R, w]
    cdf = torch.cumsum(probs, dim=-1)  # the spec's CDF at the candidates
    target = (u * cdf[:, -1].double()).float().unsqueeze(1)  # [R, 1]
    j = torch.searchsorted(cdf, target, right=True)  # [R, 1]
    # past the last candidate the spec's search ends at V (clamped to V - 1)
    return torch.where(j < w, cand.gather(1, j.clamp_max(w - 1)), V - 1)[:, 0]


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probabilities: the token there and the `top` most likely ones."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """Log-probabilities of tokens[i] under logits[i] [N, vocab], with the top_n alternatives.

    The chosen token's value and the alternatives' come from the same log-softmax row, so a
    greedy token's logprob equals the largest of its top values exactly (lm-eval's is_greedy)."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    idx = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)  # [N, 1]
    chosen = lp.gather(1, idx)[:, 0].tolist()
    if top_n:
        vals, ids = torch.topk(lp, min(top_n, lp.shape[1]), dim=-1)  # [N, top_n]
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]
    else:
        tops = [()] * len(chosen)
    return [TokenLogprob(int(t), c, top) for t, c, top in zip(tokens, chosen, tops, strict=True)]
