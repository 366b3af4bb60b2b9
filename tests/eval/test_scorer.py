"""The scorer against log-likelihoods computed by hand from a full forward of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from mulfree.errors import MulfreeError
from mulfree.eval.scorer import (
    encode_pair,
    loglikelihoods,
    score_token_pairs,
    text_perplexity,
    text_windows,
)
from mulfree.eval.tasks import Request
from tests._tolerances import LOGLIK

# Batched, right-padded, continuation-only logits vs one full forward per request: the same
# values up to float32 round-off of BLAS on other shapes.
LL_ATOL = LOGLIK.atol

REQUESTS = [
    Request("Question: How do I open a jar?\nAnswer:", " Twist the lid."),
    Request("Question: How do I open a jar?\nAnswer:", " Eat the lid."),
    Request("The cat sat on the", " mat"),
    Request("She walked to the store to buy some bread and milk. The dog", " sat on the log."),
    Request("A man is sitting on a roof. ", "He starts pulling up roofing."),  # trailing space
]


def by_hand(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0].log_softmax(-1)  # [T, V], every position
    rows = logp[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
    target = torch.tensor(cont)
    ll = rows.gather(-1, target[:, None]).sum().item()
    return ll, bool((rows.argmax(-1) == target).all())


def test_encode_pair_follows_lm_eval(tok):
    ctx, cont = encode_pair(tok, "Answer: ", "yes")  # the trailing space moves
    assert ctx == tok.encode("Answer:")
    assert ctx[0] == tok.bos_token_id
    assert cont == tok.encode("Answer: yes")[len(ctx) :]
    ctx, cont = encode_pair(tok, "", "hello")  # empty context: BOS as the prefix
    assert ctx == [tok.bos_token_id] and cont == tok.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize("batch_tokens", [1, 64, 4096], ids=lambda b: f"batch_tokens={b}")
def test_loglikelihoods_equal_hand_computation(model, tok, batch_tokens):
    got = loglikelihoods(model, tok, REQUESTS, batch_tokens=batch_tokens)
    for req, (ll, greedy) in zip(REQUESTS, got, strict=True):
        want_ll, want_greedy = by_hand(model, *encode_pair(tok, req.context, req.continuation))
        assert ll == pytest.approx(want_ll, abs=LL_ATOL)
        assert greedy == want_greedy


def test_greedy_flag_on_a_model_that_knows_the_answer(model, tok):
    ctx, _ = encode_pair(tok, "The cat sat on the", " mat")
    with torch.no_grad():
        logits = model(torch.tensor([ctx])).logits[0, -1]
    top, other = int(logits.argmax()), int(logits.argmin())
    assert score_token_pairs(model, [(ctx, [top])])[0][1] is True
    assert score_token_pairs(model, [(ctx, [other])])[0][1] is False


def test_logits_only_at_continuation_positions(model, tok):
    shapes = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    try:
        pairs = [encode_pair(tok, "The cat sat on the", " mat")]
        score_token_pairs(model, pairs)
    finally:
        hook.remove()
    ctx, cont = pairs[0]
    assert shapes == [(1, len(cont), model.config.hidden_size)]  # not len(ctx) + len(cont) - 1


def test_model_without_logits_to_keep_gets_full_forward(model, tok):
    class Plain(torch.nn.Module):  # forward(input_ids, attention_mask, use_cache) only
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    a = loglikelihoods(Plain(model), tok, REQUESTS, batch_tokens=64)
    b = loglikelihoods(model, tok, REQUESTS, batch_tokens=64)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, abs=LL_ATOL) and ga == gb


def test_max_length_cuts_from_the_left(model):
    ctx, cont = list(range(3, 40)), [7, 8, 9]
    got = score_token_pairs(model, [(ctx, cont)], max_length=10)[0]
    ids = (ctx + cont)[-11:]
    want = by_hand(model, ids[:-3], ids[-3:])
    assert got[0] == pytest.approx(want[0], abs=LL_ATOL) and got[1] == want[1]


@pytest.mark.parametrize("n, window, stride", [(2, 4, 4), (23, 8, 8), (23, 8, 3), (9, 8, 1)])
def test_text_windows_cover_every_token_once(n, window, stride):
    blocks = text_windows(n, window, stride)
    covered = [t for _, a, b in blocks for t in range(a, b)]
    assert covered == list(range(1, n))
    for lo, a, b in blocks:
        assert 0 <= lo < a < b and b - lo - 1 <= window  # input length fits the window
        assert b - a <= stride


def test_text_perplexity_equals_hand_computation(model, tok):
    text = "The cat sat on the mat and the dog sat on the log."
    ids = tok.encode(text)
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    total = sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)))
    got = text_perplexity(model, tok, text, window=64)
    assert got["tokens"] == len(ids) - 1
    assert got["ppl"] == pytest.approx(math.exp(-total / (len(ids) - 1)), rel=1e-4)
    assert got["bits_per_byte"] == pytest.approx(-total / math.log(2) / len(text), rel=1e-4)
    # Windows smaller than the text: every token still scored once, with less context.
    small = text_perplexity(model, tok, text, window=4, stride=2)
    assert small["tokens"] == got["tokens"] and small["ppl"] != got["ppl"]


def test_scorer_errors(model, tok):
    with pytest.raises(MulfreeError, match="zero tokens"):
        score_token_pairs(model, [([1, 2], [])])
    with pytest.raises(MulfreeError, match="exceeds max_length"):
        score_token_pairs(model, [([1], [5] * 20)], max_length=8)
    with pytest.raises(MulfreeError, match="fewer than two tokens"):
        text_perplexity(model, tok, "")
    with pytest.raises(MulfreeError, match="stride must be"):
        text_windows(10, 4, 5)
