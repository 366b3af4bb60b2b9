"""Next-token sampling: temperature, top-k, top-p, min-p, each request with its own torch.Generator.

`mulfree.engine.sampler.sample` (NumPy, what `mulfree generate` runs) is its twin: the same
filters in the same order give the same token for the same uniform number (tested).

`sample(logits, params, generator)` is the spec, one row at a time; `sample_batch` is what the
scheduler runs on a whole decode step's logits and returns the same tokens (tested). A token is
drawn by inverting the CDF with one uniform number from the request's generator, so a
request's tokens depend only on its own logits and its own generator: the same seed gives the
same text alone or in a batch. (One uniform per token, rather than torch.multinomial's
internal draws, also makes the batched version a cumsum and a searchsorted over all rows.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax); top_k 0 and top_p 1 disable those filters."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)

    @property
    def filters(self) -> bool:
        return bool(self.top_k) or self.top_p < 1.0 or self.min_p > 0


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits [V] with tokens outside top-k / top-p set to -inf."""
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
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


def _uniform(generator: torch.Generator) -> torch.Tensor:
    return torch.rand((), generator=generator, dtype=torch.float64)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from one row of logits [vocab] (the spec of `sample_batch`)."""
    logits = logits.float()
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scaled = _filter(logits / params.temperature, params)
    cdf = torch.cumsum(torch.softmax(scaled, dim=-1), dim=-1)  # [V]
    u = (_uniform(generator) * cdf[-1].double()).float()
    # The first token whose CDF exceeds u (zero-probability tokens have no width: never chosen).
    return min(int(torch.searchsorted(cdf, u.reshape(1), right=True)), logits.numel() - 1)


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[int]:
    """Token ids for every row of logits [B, vocab]; row b uses params[b] and generators[b]."""
    logits = logits.float()
    out = [0] * len(params)
    drawn = []
    for b, p in enumerate(params):
        if p.temperature == 0:
            out[b] = int(torch.argmax(logits[b]))
        else:
            drawn.append(b)
    if not drawn:
        return out
    temps = torch.tensor([params[b].temperature for b in drawn], dtype=torch.float32)
    scaled = logits[drawn] / temps.unsqueeze(1)  # [R, V]
    for j, b in enumerate(drawn):
        if params[b].filters:
            scaled[j] = _filter(scaled[j], params[b])
    cdf = torch.cumsum(torch.softmax(scaled, dim=-1), dim=-1)  # [R, V]
    u = torch.stack([_uniform(generators[b]) for b in drawn])  # [R] float64
    u = (u * cdf[:, -1].double()).float().unsqueeze(1)  # [R, 1]
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(logits.shape[1] - 1)  # [R, 1]
    for j, b in enumerate(drawn):
        out[b] = int(idx[j, 0])
    return out
