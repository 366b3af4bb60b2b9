"""Results never depend on the thread count (issue #14): a decode plan run on a team of threads
(csrc/mf_plan.c: one OpenMP region for the whole step, every op split in work items) gives the
same bits as the same plan call by call (`C.plan_team(0, -1)`, each kernel call its own region)
and as one thread, for 1, 2 and 3 threads (3: more threads than this machine's 2 cores), on steps,
batched steps over several slots and chunked prefill, for hgrn_bit and BitNet. Every kernel call
is made multi-threaded (min_weights_per_thread=1), else the tiny test models would run each call
on one thread and no team would form. Tolerance: EXACT (each output is computed by the same code
in the same order whatever thread runs it)."""

import contextlib

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import PackedHGRNBitForCausalLM
from mulfree.engine.decode import Decoder
from mulfree.engine.plan import encode_plan
from tests.engine.conftest import make_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")

THREADS = [1, 2, 3]


@contextlib.contextmanager
def team(on: bool):
    """plan_run on a team (the default) or call by call, restored afterwards."""
    C = kernels.core()
    was = C.plan_team(int(on), -1)[0]
    try:
        yield
    finally:
        C.plan_team(was, -1)


@pytest.fixture(scope="module")
def packed():
    # hidden 96: 3 row blocks of 32 per 96-row projection, i.e. items that do not split evenly
    # between 2 threads; prompts longer than a kernel pass (16 tokens) run several passes
    return PackedHGRNBitForCausalLM.from_model(make_model(hidden=96, layers=3, vocab=300, seed=7))


def _run_hgrn(packed, threads: int, on: bool, batch: int) -> list[torch.Tensor]:
    """Prefill of one prompt per slot, then 5 batched steps: every logits row and state."""
    dec = Decoder(packed, threads=threads, min_weights_per_thread=1)
    g = torch.Generator().manual_seed(11)
    out = []
    with team(on):
        slots = [dec.slots.alloc() for _ in range(batch)]
        for j, s in enumerate(slots):  # prompts of 40 (3 kernel passes), 21 and 1 tokens
            prompt = torch.randint(0, 300, ((40, 21, 1)[j % 3],), generator=g).tolist()
            out.append(torch.as_tensor(dec.slots.prefill(s, prompt)).clone())
        for _ in range(5):
            tok = torch.randint(0, 300, (batch,), generator=g).tolist()
            out.append(torch.as_tensor(dec.slots.step(slots, tok)).clone())
        out += [torch.from_numpy(s.copy()) for s in dec.family.states]
    return out


@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
def test_hgrn_is_bit_identical_for_any_thread_count(packed, batch):
    C = kernels.core()
    want = _run_hgrn(packed, 1, False, batch)
    for threads in THREADS:
        for on in (False, True):
            _, _, runs, backoff = C.plan_team(-1, -1)
            got = _run_hgrn(packed, threads, on, batch)
            # a prefill (one chunk) per slot and 5 steps on a team, unless a back-off ran them
            # call by call (cores found busy)
            if backoff <= 0 and C.plan_team(-1, -1)[3] <= 0:
                assert C.plan_team(-1, -1)[2] - runs == (batch + 5 if threads > 1 and on else 0)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b), (threads, on)


def test_team_plan_is_the_per_call_plan(packed):
    """The very same encoded step, run with and without the team, on 2 threads."""
    C = kernels.core()
    one = Decoder(packed, threads=2, min_weights_per_thread=1)
    other = Decoder(packed, threads=2, min_weights_per_thread=1)
    words = [encode_plan(C, d._build_plan()) for d in (one, other)]
    assert any(args[-2] == 2 for fn, args in one._build_plan() if fn.__name__ == "tq2_linear")
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        tok = torch.randint(0, 300, (1,), generator=g)
        for d, w, on in ((one, words[0], True), (other, words[1], False)):
            d.x.copy_(d.embed(tok))
            with team(on):
                assert C.plan_run(w.ctypes.data, w.size) == len(d._build_plan())
        assert torch.equal(one.logits, other.logits)
        for a, b in zip(one.states, other.states, strict=True):
            assert torch.equal(a, b)


def test_team_plan_names_the_failing_op(packed):
    """An id out of range stops a team step at its first op (the lookup) with a ValueError, as
    the per-call walk does."""
    C = kernels.core()
    dec = Decoder(packed, threads=2, min_weights_per_thread=1)
    _, _, step = dec.family._entry(1, ((0, 0, 1),))
    for on in (True, False):
        with team(on), pytest.raises(ValueError, match="op 0 \\(dec_embed\\)"):
            C.plan_run(*step[1], [300])


@pytest.mark.parametrize("layout", ["tq2", "t81"])
@pytest.mark.parametrize("M", [1, 2, 3, 17, 40])
def test_kernel_call_is_bit_identical_for_any_thread_count(M, layout):
    """The per-call driver (its own team): int32 sums and outputs equal for 1-3 threads, with
    fewer tokens than threads (private tables), as many, and several passes (M > 16), for both
    weight layouts."""
    from mulfree.kernels import ternary as K_
    from mulfree.ternary import packing
    from mulfree.ternary.quant import act_quant_int8

    g = torch.Generator().manual_seed(M)
    K, N = 200, 300  # awkward: pads to 208 inputs and 320 rows
    q = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
    data = packing.pack(q, layout)
    x = torch.randn(M, K, generator=g)
    fn = K_.t81_linear if layout == "t81" else K_.tq2_linear
    for isa in kernels.available_isas():
        if isa == "torch":
            continue
        outs = [fn(x, data, N, 0.5, threads=t, isa=isa, return_acc=True) for t in THREADS]
        # the int32 sums are exact: the quantized inputs times the ternary weights
        qx, _ = act_quant_int8(x)
        assert torch.equal(outs[0][1].long(), qx.long() @ q.long().T), isa
        for y, acc in outs[1:]:
            assert torch.equal(y, outs[0][0]), isa
            assert torch.equal(acc, outs[0][1]), isa


def test_bitnet_is_bit_identical_for_any_thread_count(tmp_path):
    """BitNet's plan (its attention and head stages have no team version: it runs call by call)
    gives the same bits on 1, 2 and 3 threads."""
    from mulfree.engine.bitnet_decode import BitNetDecoder
    from mulfree.engine.bitnet_model import from_checkpoint
    from mulfree.models.bitnet.synthetic import write_random_checkpoint

    m = from_checkpoint(write_random_checkpoint(tmp_path / "b", variant="packed", seed=5))
    ids = [1, 5, 7, 9, 33, 100, 7, 8, 250, 3]
    runs = []
    for threads in THREADS:
        dec = BitNetDecoder(m, threads=threads, min_weights_per_thread=1)
        out = [dec.prefill(torch.tensor([ids[:4]])).clone()]
        out += [dec.step([t]).clone() for t in ids[4:]]
        runs.append(torch.cat(out))
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
    assert np.isfinite(runs[0].numpy()).all()
