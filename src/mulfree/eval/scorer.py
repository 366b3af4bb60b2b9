"""Log-likelihoods of continuations under a causal LM, computing logits only where needed.

The output layer of a large-vocabulary model (Gemma 3: 262,144 tokens) costs more than the rest of
a small model, so the scorer asks the model for logits at the continuation positions only
(`logits_to_keep` with an index tensor, which transformers' causal LMs and mulfree's models accept;
a model without it gets a full forward). Requests are sorted by length and run in right-padded
batches: with right padding every real position sees exactly the tokens it would see alone
(padding comes after it and is masked), so batching does not change what is computed.

Tokenization follows lm-evaluation-harness: trailing spaces of the context move to the
continuation; the context is `tok(context)` and the continuation is `tok(context + continuation)`
minus the context's length in tokens, both with the tokenizer's default special tokens (Gemma adds
BOS); a sequence longer than `max_length` + 1 is cut from the left.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from mulfree.errors import MulfreeError
from mulfree.eval.tasks import Request

# Upper bound on (rows x kept logit positions) per forward: the [rows, positions, vocab] float32
# logits of a 262k vocabulary take 1 MiB per position.
_MAX_LOGIT_ROWS = 256


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's encoding of one request -> (context ids, continuation ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        prefix = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        if prefix is None:
            raise MulfreeError("empty context and the tokenizer has neither BOS nor EOS")
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return [prefix], cont
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def default_max_length(model) -> int:
    """Context length used for scoring: the model's own limit, at most 2048 (lm-eval's default)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(int(n), 2048) if n else 2048


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _batches(lengths: Sequence[int], n_scored: Sequence[int], batch_tokens: int):
    """Indices sorted longest first, grouped so rows x longest <= batch_tokens (>= 1 row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batch: list[int] = []
    scored = 0
    for i in order:
        rows = len(batch) + 1
        if batch and (
            rows * lengths[batch[0]] > batch_tokens or scored + n_scored[i] > _MAX_LOGIT_ROWS
        ):
            yield batch
            batch, scored = [], 0
        batch.append(i)
        scored += n_scored[i]
    if batch:
        yield batch


@torch.inference_mode()
def score_token_pairs(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int | None = None,
    batch_tokens: int = 2048,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(log P(continuation | context), continuation is the greedy one) for each token-id pair.

    `progress(n)` is called after each batch with the number of pairs done in it.
    """
    max_length = max_length or default_max_length(model)
    inputs, n_cont = [], []
    for ctx, cont in pairs:
        if len(cont) == 0:
            raise MulfreeError("a continuation encoded to zero tokens; nothing to score")
        if len(cont) > max_length:
            raise MulfreeError(
                f"a continuation of {len(cont)} tokens exceeds max_length {max_length}"
            )
        if len(ctx) == 0:
            raise MulfreeError("a context encoded to zero tokens; give the model a prefix token")
        ids = (list(ctx) + list(cont))[-(max_length + 1) :]
        inputs.append(ids[:-1])  # the last token is only a target
        n_cont.append(len(cont))
    use_keep = _accepts_logits_to_keep(model)
    device = next(model.parameters()).device
    results: list[tuple[float, bool] | None] = [None] * len(inputs)
    lengths = [len(x) for x in inputs]
    for batch in _batches(lengths, n_cont, batch_tokens):
        width = lengths[batch[0]]
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        spans = []
        for r, i in enumerate(batch):
            ids[r, : lengths[i]] = torch.tensor(inputs[i])
            mask[r, : lengths[i]] = 1
            spans.append((lengths[i] - n_cont[i], lengths[i]))  # positions predicting cont
        kwargs = {"attention_mask": mask.to(device)} if not bool(mask.all()) else {}
        keep = sorted({p for lo, hi in spans for p in range(lo, hi)})
        if use_keep:
            kwargs["logits_to_keep"] = torch.tensor(keep, device=device)
        logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits
        where = {p: j for j, p in enumerate(keep)} if use_keep else None
        for r, i in enumerate(batch):
            lo, hi = spans[r]
            cols = [where[p] for p in range(lo, hi)] if use_keep else list(range(lo, hi))
            row = logits[r, cols].float().log_softmax(dim=-1)  # [n_cont, vocab]
            target = torch.tensor((list(pairs[i][0]) + list(pairs[i][1]))[-n_cont[i] :])
            ll = row.gather(-1, target.to(row.device)[:, None]).sum().item()
            greedy = bool((row.argmax(dim=-1).cpu() == target).all())
            results[i] = (ll, greedy)
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


def loglikelihoods(
    model,
    tokenizer,
    requests: Sequence[Request],
    *,
    max_length: int | None = None,
    batch_tokens: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each request's continuation given its context."""
    pairs = [encode_pair(tokenizer, r.context, r.continuation) for r in requests]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return score_token_pairs(
        model, pairs, max_length=max_length, batch_tokens=batch_tokens, pad_id=pad,
        progress=progress,
    )  # fmt: skip


def text_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(context start, target start, target end) blocks covering tokens 1..n-1 of a text.

    Each block predicts tokens [a, b) from tokens [lo, b - 1] with b - lo - 1 <= window: with
    stride = window these are lm-eval's disjoint rolling windows (one token of carried context);
    a smaller stride gives every predicted token at least window - stride tokens of context.
    """
    if not 1 <= stride <= window:
        raise MulfreeError(f"stride must be in 1..window ({window}); got {stride}")
    out = []
    a = 1
    while a < n_tokens:
        b = min(n_tokens, a + stride)
        out.append((max(0, b - window - 1), a, b))
        a = b
    return out


def text_perplexity(
    model,
    tokenizer,
    text: str,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_tokens: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Token perplexity, word perplexity and bits per byte of `text` (every token after the first).

    The text is tokenized once with the tokenizer's default special tokens (a BOS, if it adds one,
    is the first token and is not predicted) and scored in windows (`text_windows`).
    """
    window = window or default_max_length(model)
    stride = stride or window
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise MulfreeError("the text has fewer than two tokens; nothing to score")
    blocks = text_windows(len(ids), window, stride)
    pairs = [(ids[lo:a], ids[a:b]) for lo, a, b in blocks]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    res = score_token_pairs(
        model, pairs, max_length=window, batch_tokens=batch_tokens, pad_id=pad, progress=progress
    )
    total = sum(ll for ll, _ in res)
    n_tok = len(ids) - 1
    n_bytes = len(text.encode("utf-8"))
    n_words = len(text.split())
    return {
        "tokens": n_tok,
        "ppl": math.exp(-total / n_tok),
        "word_perplexity": math.exp(-total / max(1, n_words)),
        "bits_per_byte": -total / math.log(2) / max(1, n_bytes),
        "window": window,
        "stride": stride,
    }
