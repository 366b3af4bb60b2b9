"""The decode core's slots (mulfree.engine.core): state in slots the decoder owns, a step on any
subset of them, prefill as batched kernel rows — each equal bit for bit to single-slot steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import PackedHGRNBitForCausalLM
from mulfree.engine import core as core_mod
from mulfree.engine.decode import Decoder, fused_step_applies
from mulfree.engine.plan import runs_of
from mulfree.errors import MulfreeError

# the fused path: the compiled core, and an ISA level other than "torch" (MULFREE_ISA=torch runs
# the spec path, whose prefill is the model's forward: equal to stepping up to float rounding)
needs_core = pytest.mark.skipif(
    not kernels.available() or kernels.resolve_isa() == kernels.TORCH,
    reason="needs the fused path (compiled core, ISA != torch)",
)

PROMPTS = [[3, 17, 5], [42, 9], [11, 0, 7, 2], [8], [1, 2, 3, 4, 5]]


def test_runs_of_groups_adjacent_slots():
    assert runs_of([0, 1, 2]) == ((0, 0, 3),)
    assert runs_of([4, 0, 1, 7]) == ((0, 4, 1), (1, 0, 2), (3, 7, 1))
    assert runs_of([5]) == ((0, 5, 1),)
    assert runs_of([]) == ()


@pytest.fixture(scope="module")
def packed(trained):
    return PackedHGRNBitForCausalLM.from_model(trained[0])


def _single(packed, prompt, tokens):
    """Reference: a fresh decoder, one slot, the prompt stepped token by token, then `tokens`."""
    dec = Decoder(packed)
    dec.reset(1)
    for t in prompt:
        dec.step([t])
    return [dec.step([t])[0].clone() for t in tokens]


@needs_core
def test_steps_on_any_slots_equal_single_sequence_steps(packed):
    """Slots in any order, with holes, joining and leaving: every row is bit-equal to the same
    sequence decoded alone (the kernels' rows are independent and exact; the stages per row)."""
    dec = Decoder(packed, max_batch=8)
    slots = [dec.alloc() for _ in PROMPTS]
    assert slots == [0, 1, 2, 3, 4]  # lowest free first
    firsts = [dec.prefill_slot(s, p) for s, p in zip(slots, PROMPTS, strict=True)]
    arena = [s.data_ptr() for s in dec._arena()]
    nxt = [[5, 6, 7], [10, 11, 12], [13, 14, 15], [16, 17, 18], [19, 20, 21]]
    want = [_single(packed, p, n) for p, n in zip(PROMPTS, nxt, strict=True)]
    # prefill = stepping the prompt (the last prompt token's logits)
    for p, got in zip(PROMPTS, firsts, strict=True):
        ref = Decoder(packed)
        ref.reset(1)
        for t in p:
            last = ref.step([t])[0]
        torch.testing.assert_close(got, last, atol=0, rtol=0)
    order = [3, 0, 4, 2, 1]  # not the slots' order: rows follow the slots given
    out = dec.step([nxt[i][0] for i in order], [slots[i] for i in order]).clone()
    for row, i in enumerate(order):
        torch.testing.assert_close(out[row], want[i][0], atol=0, rtol=0)
    dec.free(slots[1])  # a hole: slots 0, 2, 3, 4 step as runs (0), (2..4)
    keep = [0, 2, 3, 4]
    out = dec.step([nxt[i][1] for i in keep], [slots[i] for i in keep]).clone()
    for row, i in enumerate(keep):
        torch.testing.assert_close(out[row], want[i][1], atol=0, rtol=0)
    late = dec.alloc()  # the freed slot comes back, zeroed, without touching the others
    assert late == 1
    first_late = dec.prefill_slot(late, PROMPTS[1])
    torch.testing.assert_close(first_late, firsts[1], atol=0, rtol=0)
    out = dec.step([nxt[i][2] for i in keep], [slots[i] for i in keep]).clone()
    for row, i in enumerate(keep):
        torch.testing.assert_close(out[row], want[i][2], atol=0, rtol=0)
    assert [s.data_ptr() for s in dec._arena()] == arena  # no state moved or reallocated


@needs_core
def test_prefill_chunks_equal_stepping(packed, monkeypatch):
    monkeypatch.setattr(core_mod, "PREFILL_CHUNK", 3)  # a prompt of 8 runs as 3 + 3 + 2 rows
    prompt = [3, 17, 5, 0, 42, 9, 11, 2]
    dec = Decoder(packed)
    s = dec.alloc()
    got = dec.prefill_slot(s, prompt)
    ref = Decoder(packed)
    ref.reset(1)
    for t in prompt:
        want = ref.step([t])[0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for a, b in zip(dec._arena(), ref.states, strict=True):
        torch.testing.assert_close(a[s : s + 1], b, atol=0, rtol=0)


@needs_core
def test_torch_path_on_scattered_slots_follows_the_fused_one(packed):
    """The spec (fused=False) on non-adjacent slots gathers and scatters their states."""
    fast, ref = Decoder(packed, max_batch=4), Decoder(packed, fused=False, max_batch=4)
    for dec in (fast, ref):
        for _ in range(4):
            dec.alloc()
        dec.free(1)
    for step in range(3):
        toks = [5 + step, 9 + step, 2 + step]
        a = fast.step(toks, [3, 0, 2]).clone()
        b = ref.step(toks, [3, 0, 2]).clone()
        assert (a - b).abs().max() <= 0.02 * (b.max() - b.min())  # as test_fused_step_equals_torch_step
        assert a.argmax(-1).tolist() == b.argmax(-1).tolist()
    for sa, sb in zip(fast._arena(), ref._arena(), strict=True):
        torch.testing.assert_close(sa, sb, rtol=0.02, atol=0.02)
        assert not sa[1].any() and not sb[1].any()  # the free slot was never stepped


def test_slot_errors(packed):
    dec = Decoder(packed, max_batch=2)
    s = dec.alloc()
    with pytest.raises(MulfreeError, match="not in use"):
        dec.step([1], [1])
    with pytest.raises(MulfreeError, match="twice"):
        dec.step([1, 2], [s, s])
    with pytest.raises(MulfreeError, match="tokens for"):
        dec.step([1, 2], [s])
    dec.free(s)
    with pytest.raises(MulfreeError, match="not in use"):
        dec.free(s)


def test_arena_grows_keeping_states(packed):
    dec = Decoder(packed, max_batch=1)
    a = dec.alloc()
    dec.step([4], [a])
    before = [s[a].clone() for s in dec._arena()]
    b = dec.alloc()  # the arena doubles; slot a's state is carried over
    assert dec.max_batch == 2 and b == 1
    for s, want in zip(dec._arena(), before, strict=True):
        torch.testing.assert_close(s[a], want, atol=0, rtol=0)
        assert not s[b].any()


def test_one_predicate(packed, trained):
    assert fused_step_applies(packed) == (
        kernels.available() and kernels.resolve_isa() != kernels.TORCH
    )
    assert not fused_step_applies(trained[0])  # float BitLinear weights
    assert not fused_step_applies(packed, isa="torch")


@needs_core
def test_lite_core_has_no_torch_types(packed_dir):
    from mulfree.engine import lite

    dec = lite.LiteDecoder(lite.LiteModel.load(packed_dir))
    logits = dec.prefill([3, 4, 5])
    assert isinstance(logits, np.ndarray) and isinstance(dec.states[0], np.ndarray)


@needs_core
def test_the_plan_runner_equals_the_per_call_loop(packed):
    """A step as one C call (csrc/mf_plan.c) and as the Python loop over the same plan."""
    one, loop = Decoder(packed, max_batch=4), Decoder(packed, max_batch=4)
    loop.family.use_plan_run = False
    for dec in (one, loop):
        for _ in range(4):
            dec.alloc()
        dec.free(1)  # runs (0), (2, 3): two MLGRU calls per layer
    for t in range(4):
        a = one.step([3 + t, 7, 9 + t], [0, 2, 3]).clone()
        b = loop.step([3 + t, 7, 9 + t], [0, 2, 3]).clone()
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for sa, sb in zip(one._arena(), loop._arena(), strict=True):
        torch.testing.assert_close(sa, sb, atol=0, rtol=0)


@pytest.mark.parametrize("embedding_format", ["float32", "int8", "int4"])
def test_fused_step_embedding_lookup_equals_the_module(trained, embedding_format):
    """The fused step looks embeddings up in NumPy (engine.lite's lookup, no torch op in the
    step): the rows equal the model's embedding module's, bit for bit, in every file format."""
    packed = PackedHGRNBitForCausalLM.from_model(trained[0], embedding_format=embedding_format)
    dec = Decoder(packed)
    ids = np.array([0, 5, 299, 5, 17], dtype=np.int64)
    got = np.asarray(dec._embed_rows(ids))
    assert dec._np_embed is not None  # the NumPy lookup is the one that ran
    want = packed.model.embeddings(torch.from_numpy(ids)).float().numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", [-1, 300, 10**6])
def test_step_and_prefill_refuse_out_of_range_ids(packed, bad):
    """An id outside the vocabulary is one clear error (a NumPy lookup would wrap -1 around)."""
    dec = Decoder(packed)
    slot = dec.alloc()
    with pytest.raises(MulfreeError, match="out of range"):
        dec.prefill_slot(slot, [3, bad])
    with pytest.raises(MulfreeError, match="out of range"):
        dec.step([bad], slots=[slot])
