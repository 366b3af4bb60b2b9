"""transformers' `generate` on a packed BitNet runs its cached single-token steps on the compiled
step (engine.bitnet_decode.HFCacheStep), on tiny random official-layout checkpoints.

What is compared and why: the compiled step differs from transformers' modules (the fallback,
the spec) only by float rounding before int8 activation quantizers (its exp polynomial, RMS sum
order, sequential attention sums), so logits are compared through int8 (tests/_tolerances.py:
relative RMSE, argmax where decidable), teacher-forced on the tokens generate picked: one full
forward of the generated sequence through transformers' code gives the reference logits of
every generated position. The transformers cache the fast steps extend is compared the same
way, and the spy on the one predicate (`_cached_step_rows`) shows which path each step took.
"""

import os

import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import mulfree  # noqa: E402, F401
from mulfree import kernels  # noqa: E402
from mulfree.engine import bitnet_decode  # noqa: E402
from mulfree.engine.bitnet_model import PackedBitNetForCausalLM, from_checkpoint  # noqa: E402
from mulfree.models.bitnet.synthetic import write_random_checkpoint  # noqa: E402
from mulfree.models.hf_compat import cache_kwargs, output_cache  # noqa: E402
from tests._tolerances import assert_argmax_agrees, assert_close_through_int8  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

A, B = [1, 5, 7], [9, 33, 100, 7, 8, 250]  # two prompts of different lengths
PAD = 0


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bng")
    return {v: write_random_checkpoint(root / v, variant=v, seed=7) for v in ("packed", "llama")}


@pytest.fixture(scope="module")
def model(ckpts):
    return from_checkpoint(ckpts["packed"])


@pytest.fixture
def spy(monkeypatch):
    """Records the predicate's answer for every forward call (None: transformers' code)."""
    seen = []
    orig = PackedBitNetForCausalLM._cached_step_rows

    def rows(self, *args):
        r = orig(self, *args)
        seen.append(r)
        return r

    monkeypatch.setattr(PackedBitNetForCausalLM, "_cached_step_rows", rows)
    return seen


def left_padded(a=A, b=B):
    n = max(len(a), len(b))
    ids = torch.tensor([[PAD] * (n - len(r)) + r for r in (a, b)])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in (a, b)])
    return ids, mask


def reference_logits(model, out, mask, new):
    """transformers' modules on the whole generated batch: the logits that chose each new token."""
    full = torch.cat([mask, torch.ones(out.shape[0], new, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        return model(out, attention_mask=full).logits[:, -new - 1 : -1]  # [B, new, V]


def check_generated(model, gen, ids, mask, new):
    """gen: generate's output with raw logits: each step's logits agree through int8 with the
    teacher-forced reference, and the picked greedy tokens wherever decidable."""
    out = gen.sequences
    assert out.shape == (ids.shape[0], ids.shape[1] + new) and torch.equal(out[:, : ids.shape[1]], ids)
    got = torch.stack(gen.logits, dim=1)  # [B, new, V]
    want = reference_logits(model, out, mask, new)
    for row in range(out.shape[0]):
        assert_close_through_int8(got[row], want[row], what=f"row {row}: ")
        assert_argmax_agrees(got[row], want[row])
    return got, want


@pytest.mark.parametrize("variant", ["packed", "llama"])
def test_greedy_batched_left_padded_runs_the_compiled_step(ckpts, spy, variant):
    m = from_checkpoint(ckpts[variant])
    ids, mask = left_padded()
    new = 6
    gen = m.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                     pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True,
                     output_logits=True)  # fmt: skip
    spied = list(spy)
    # the prompt and every later step ran the compiled step, at the rows' own positions (the
    # padded row's real tokens at 0, 1, ...); the reference below is transformers' code
    assert len(spied) == new and spied[0] == [len(A), len(B)]
    assert spied[1:] == [[len(A) + t, len(B) + t] for t in range(new - 1)]
    got, want = check_generated(m, gen, ids, mask, new)
    picks = gen.sequences[:, ids.shape[1] :]
    top2 = want.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * (got - want).abs().max()
    assert decided.sum() >= new  # most steps of both rows are decidable at this size
    assert torch.equal(picks[decided], want.argmax(-1)[decided])


def test_sampling_runs_the_compiled_step(model, spy):
    ids, mask = left_padded()
    new = 6
    torch.manual_seed(0)
    gen = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=True, top_k=20,
                         temperature=1.5, pad_token_id=PAD, eos_token_id=None,
                         return_dict_in_generate=True, output_logits=True)  # fmt: skip
    assert all(r is not None for r in spy) and len(spy) == new
    check_generated(model, gen, ids, mask, new)


def test_unpadded_batch_without_mask(model, spy):
    ids = torch.tensor([B[:4], B[2:]])
    new = 4
    gen = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=PAD,
                         eos_token_id=None, return_dict_in_generate=True, output_logits=True)  # fmt: skip
    assert spy == [[4, 4]] + [[4 + t, 4 + t] for t in range(new - 1)]  # prompt, then steps
    check_generated(model, gen, ids, torch.ones_like(ids), new)


def test_decoder_grows_with_the_sequence(model, spy, monkeypatch):
    """A sequence longer than the decoder's context: the decoder is rebuilt larger and reloads
    the rows from transformers' cache (kept whole by every fast step)."""
    monkeypatch.setattr(bitnet_decode, "MIN_HF_CONTEXT", 8)
    model._hf_step = None
    ids, mask = left_padded()
    new = 12  # past 8 and 16 positions
    gen = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                         pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True,
                         output_logits=True)  # fmt: skip
    assert all(r is not None for r in spy)
    assert model._hf_step.dec.max_context == 32
    check_generated(model, gen, ids, mask, new)
    model._hf_step = None  # the other tests' decoder size


def test_prompt_fills_the_cache_as_transformers_does(model, spy):
    """The prompt on the compiled step (only its last logits asked for, as generate asks):
    transformers' cache holds the rows' keys and values at their real tokens' places (through
    int8 of transformers' own prefill), zeros at the padded places (masked: never read)."""
    from transformers import DynamicCache

    ids, mask = left_padded()
    pad = mask == 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)  # generate's position ids: real tokens at 0, 1, ...
    with torch.no_grad():
        mine = model(ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                     **cache_kwargs(DynamicCache(config=model.config)))  # fmt: skip
        assert spy[-1] == mask.sum(1).tolist()
        # all logits asked for: transformers' code
        ref = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
        assert spy[-1] is None
    got, want = mine.logits[:, -1], ref.logits[:, -1]
    assert_close_through_int8(got, want)
    assert_argmax_agrees(got, want)
    for a, b in zip(output_cache(mine).layers, output_cache(ref).layers, strict=True):
        assert a.keys.shape == b.keys.shape
        for x, y in ((a.keys, b.keys), (a.values, b.values)):  # [B, Hkv, T, hd]
            real = ~pad[:, None, :, None].expand_as(x)
            assert_close_through_int8(x[real], y[real])
            assert not x[~real].any()


def test_prompts_that_fall_back(model, spy):
    """Right padding (a row's last token a pad: its logits are a pad's), all positions' logits,
    position ids that disagree with the mask: transformers' code."""
    from transformers import DynamicCache

    ids, mask = left_padded()
    fresh = lambda: cache_kwargs(DynamicCache(config=model.config))  # noqa: E731
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    cases = {
        "right padded": dict(attention_mask=mask.flip(1), position_ids=pos.flip(1), logits_to_keep=1),
        "all logits": dict(attention_mask=mask, position_ids=pos, logits_to_keep=0),
        "position ids": dict(attention_mask=mask, logits_to_keep=1,
                             position_ids=torch.arange(ids.shape[1]).expand_as(ids)),
        "no position ids": dict(attention_mask=mask, logits_to_keep=1),  # pads would count
    }
    for what, kw in cases.items():
        with torch.no_grad():
            model(ids, use_cache=True, **fresh(), **kw)
        assert spy[-1] is None, what


def _step(model, cache, tok, **kw):
    with torch.no_grad():
        out = model(torch.tensor([[tok]]), use_cache=True, **cache_kwargs(cache), **kw)
    return out.logits[0, -1], output_cache(out)


def test_fallback_steps_in_between_and_the_cache(model, spy):
    """Steps that fall back (hidden states asked for) between compiled ones: each reads the
    cache the other path extended. The cache the compiled steps extend equals transformers'
    own (through int8), and so do the logits."""
    prompt, toks = B, [3, 61, 17, 2, 44]
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        ref = model(torch.tensor([prompt]), use_cache=True)
    cache, ref_cache = output_cache(out), output_cache(ref)
    got, want, paths = [], [], []
    for i, t in enumerate(toks):
        kw = {"output_hidden_states": True} if i in (1, 2) else {}
        n = len(spy)
        g, cache = _step(model, cache, t, **kw)
        paths.append(spy[n] is not None)
        w, ref_cache = _step(model, ref_cache, t, output_hidden_states=True)  # always fallback
        got.append(g)
        want.append(w)
    assert paths == [True, False, False, True, True]
    got, want = torch.stack(got), torch.stack(want)
    assert_close_through_int8(got, want)
    assert_argmax_agrees(got, want)
    assert cache.get_seq_length() == ref_cache.get_seq_length() == len(prompt) + len(toks)
    for a, b in zip(cache.layers, ref_cache.layers, strict=True):
        assert_close_through_int8(a.keys, b.keys, what="keys: ")
        assert_close_through_int8(a.values, b.values, what="values: ")


def test_what_falls_back(model, spy):
    """The predicate declines what the compiled step does not run: attentions asked for, no
    cache, a masked new token, position ids that disagree with the row's real positions."""
    with torch.no_grad():
        cache = output_cache(model(torch.tensor([B]), use_cache=True))
    past = cache.get_seq_length()
    one = torch.tensor([[5]])
    ok_mask = torch.ones(1, past + 1, dtype=torch.long)
    cases = {
        "attentions": dict(output_attentions=True),
        "no cache": dict(use_cache=False),
        "masked token": dict(attention_mask=torch.cat([ok_mask[:, :-1], ok_mask[:, :1] * 0], 1)),
        "position ids": dict(position_ids=torch.tensor([[past + 3]])),
        "4D mask": dict(attention_mask=torch.ones(1, 1, 1, past + 1)),
    }
    for what, kw in cases.items():
        rows = model._cached_step_rows(one, kw.get("attention_mask"), kw.get("position_ids"),
                                       None if what == "no cache" else cache, None, None,
                                       kw.get("use_cache"), 0, kw)  # fmt: skip
        assert rows is None, what
    assert model._cached_step_rows(one, ok_mask, None, cache, None, None, True, 0, {}) == [past]
    # a gapped mask whose position ids count only the real positions: compacted, accepted
    gap = ok_mask.clone()
    gap[0, 2] = 0
    assert model._cached_step_rows(one, gap, torch.tensor([[past - 1]]), cache, None, None,
                                   True, 0, {}) == [past - 1]  # fmt: skip


def test_lmul_attention_falls_back(model, spy):
    from mulfree.attention import apply_lmul_, remove_lmul_

    apply_lmul_(model)
    try:
        model.generate(torch.tensor([A]), max_new_tokens=3, do_sample=False, pad_token_id=PAD,
                       eos_token_id=None)  # fmt: skip
    finally:
        remove_lmul_(model)
    assert spy and all(r is None for r in spy)


def test_reordered_cache_is_loaded_again(model, spy):
    """A beam search reorders transformers' cache in place of its tensors between steps (same
    object, same length, here the same row lengths too): the compiled step notices (the bound
    tensors changed) and reloads the rows, so its logits follow the reordered rows."""
    ids, mask = left_padded(B[:3], A)  # two different rows of one length
    with torch.no_grad():
        cache = output_cache(model(ids, attention_mask=mask, use_cache=True))
        ref = output_cache(model(ids, attention_mask=mask, use_cache=True))
    pos = mask.sum(1, keepdim=True)  # each row's next position
    m1 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    step = dict(attention_mask=m1, position_ids=pos, use_cache=True)
    with torch.no_grad():
        model(torch.tensor([[3], [4]]), **cache_kwargs(cache), **step)  # a compiled step
        model(torch.tensor([[3], [4]]), **cache_kwargs(ref), **step, output_hidden_states=True)
        assert spy[-2] is not None and spy[-1] is None
        swap = torch.tensor([1, 0])
        cache.reorder_cache(swap)
        ref.reorder_cache(swap)
        m2 = torch.cat([m1[swap], torch.ones(2, 1, dtype=mask.dtype)], 1)
        step = dict(attention_mask=m2, position_ids=pos[swap] + 1, use_cache=True)
        got = model(torch.tensor([[5], [6]]), **cache_kwargs(cache), **step).logits[:, -1]
        assert spy[-1] is not None  # compiled
        want = model(torch.tensor([[5], [6]]), **cache_kwargs(ref), **step,
                     output_hidden_states=True).logits[:, -1]  # fmt: skip
    assert_close_through_int8(got, want)
    assert_argmax_agrees(got, want)
