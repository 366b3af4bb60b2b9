"""The plan runner (csrc/mf_plan.c): a decode step encoded once (engine.plan.encode_plan) and run
in one C call gives the same bits as the per-call loop over the same plan, and a malformed plan
is refused before anything runs."""

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import PackedHGRNBitForCausalLM
from mulfree.engine.decode import Decoder
from mulfree.engine.plan import encode_plan
from tests.engine.conftest import make_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")


def _decoders(same_norms: bool, batch: int, threads: int):
    model = make_model(hidden=64, layers=3, vocab=300, seed=3)
    if same_norms:  # i/f/g share their BitLinear norm: the fused ifg kernel call
        with torch.no_grad():
            for layer in model.model.layers:
                a = layer.attn
                a.f_proj.norm.weight.copy_(a.i_proj.norm.weight)
                a.g_proj.norm.weight.copy_(a.i_proj.norm.weight)
    packed = PackedHGRNBitForCausalLM.from_model(model)
    loop, one = Decoder(packed, threads=threads), Decoder(packed, threads=threads)
    assert loop.fused and one.fused and loop.fused_ifg == same_norms
    loop.reset(batch)
    one.reset(batch)
    return loop, one


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("same_norms", [False, True], ids=["own-norms", "fused-ifg"])
def test_plan_run_equals_the_per_call_loop(same_norms, batch, threads):
    C = kernels.core()
    loop, one = _decoders(same_norms, batch, threads)
    plan = one._build_plan()  # the plan of the decoder whose buffers it addresses
    words = encode_plan(C, plan)
    g = torch.Generator().manual_seed(batch)
    for _ in range(6):
        tok = torch.randint(0, 300, (batch,), generator=g)
        want = loop.step(tok).clone()  # Decoder.step: `for fn, args in plan: fn(*args)`
        one.x.copy_(one.embed(tok))
        assert C.plan_run(words.ctypes.data, words.size) == len(plan)
        assert torch.equal(one.logits, want)
        for a, b in zip(one.states, loop.states, strict=True):
            assert torch.equal(a, b)


def test_plan_run_refuses_a_malformed_plan_before_running_anything():
    C = kernels.core()
    _, one = _decoders(False, 1, 1)
    plan = one._build_plan()
    words = encode_plan(C, plan)
    one.x.copy_(one.embed(torch.tensor([5])))
    before = one.logits.clone()
    for bad in (words[:-1], np.concatenate([words, [99, 0]]), np.concatenate([[0, 3], words])):
        bad = np.ascontiguousarray(bad, dtype=np.int64)
        with pytest.raises(ValueError, match="malformed"):
            C.plan_run(bad.ctypes.data, bad.size)
    assert torch.equal(one.logits, before)  # no op ran
    with pytest.raises(ValueError, match="not an op of plan_run"):
        encode_plan(C, [(C.isa_max, ())])
    with pytest.raises(ValueError, match="takes 7 arguments"):
        encode_plan(C, [(C.dec_glu, (0, 1))])


def test_plan_op_reports_bad_arguments():
    """An op that refuses its arguments stops the plan with a ValueError naming it."""
    C = kernels.core()
    words = encode_plan(C, [(C.dec_norm2, (0, 0, 1, 4, 0, 1e-6, 1e-6, 0, 0, 0, 0, 0, 0))])
    with pytest.raises(ValueError, match="op 0 \\(dec_norm2\\) got invalid arguments"):
        C.plan_run(words.ctypes.data, words.size)
