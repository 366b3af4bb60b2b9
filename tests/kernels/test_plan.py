"""The plan runner (csrc/mf_plan.c): a decode step encoded once (engine.plan.encode_plan) and run
in one C call gives the same bits as the per-call loop over the same plan, and a malformed plan
is refused before anything runs."""

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import PackedHGRNBitForCausalLM, lite
from mulfree.engine.decode import Decoder
from mulfree.engine.plan import embed_call, encode_plan
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


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("m", [1, 8])
def test_plan_run_t81_linear_equals_the_direct_call(m, isa):
    """The t81_linear op (tq2_linear's slots on t81 bytes) run by plan_run gives the bits of the
    direct call and of tq2_linear on the same weight (both layouts are exact)."""
    from mulfree.kernels import ternary as K_

    if isa not in kernels.available_isas():
        pytest.skip(f"{isa} not on this CPU")
    C = kernels.core()
    n, k = 128, 320
    g = torch.Generator().manual_seed(m)
    q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
    tq2 = K_.tq2_pack(q, -(-n // 32) * 32 * -(-k // 16) * 16 // 4)
    t81 = K_.tq2_to_t81(tq2, n, k)
    x = torch.randn(m, k, generator=g)
    lv = kernels.ISA_LEVELS[isa]
    y_plan, y_t81, y_tq2 = (torch.empty(m, n) for _ in range(3))

    def call(fn, w, y):
        return (fn, (x.data_ptr(), m, k, w.data_ptr(), n, 0.5, 0, y.data_ptr(), 0, 1, lv))

    words = encode_plan(C, [call(C.t81_linear, t81, y_plan)])
    assert C.plan_run(words.ctypes.data, words.size) == 1
    for fn, args in (call(C.t81_linear, t81, y_t81), call(C.tq2_linear, tq2, y_tq2)):
        fn(*args)
    assert torch.equal(y_plan, y_t81) and torch.equal(y_plan, y_tq2)


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


# --- the compiled embedding lookup (dec_embed): the first op of a step from token ids -------
def _tables(fmt: str, V: int, d: int, seed: int = 0) -> dict:
    """Random tensors of one embedding file format (engine/format.py's layouts)."""
    rng = np.random.default_rng(seed)
    if fmt == "int8":
        return {"model.embeddings.weight_int8": rng.integers(-127, 128, (V, d), dtype=np.int8),
                "model.embeddings.weight_step": rng.random(V, dtype=np.float32)}  # fmt: skip
    if fmt == "int4":
        g = -(-d // lite.INT4_GROUP)
        return {"model.embeddings.weight_int4": rng.integers(0, 256, (V, 16 * g), dtype=np.uint8),
                "model.embeddings.weight_step": rng.random((V, g), dtype=np.float32)}  # fmt: skip
    return {"model.embeddings.weight": rng.standard_normal((V, d), dtype=np.float32)}


@pytest.mark.parametrize("d", [64, 500], ids=["d64", "d500-partial-group"])
@pytest.mark.parametrize("fmt", ["float32", "int8", "int4"])
def test_dec_embed_equals_the_numpy_lookup(fmt, d):
    """The compiled lookup gives the NumPy lookup's rows (its spec) bit for bit, in every
    format it reads, including an int4 row whose last group is partly padding (d = 500)."""
    C, V = kernels.core(), 301
    tensors = _tables(fmt, V, d)
    table = lite.embedding_table(tensors, fmt, V, d)
    assert table is not None
    ids = np.array([0, 5, V - 1, 5, 17], dtype=np.int64)
    x = np.full((len(ids), d), np.nan, dtype=np.float32)
    fn, args = embed_call(C, table, ids, x, len(ids), lambda a: 0 if a is None else a.ctypes.data)
    fn(*args)
    want = lite.embedding_lookup(tensors, fmt, V, d, "test")(ids)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("bad", [-1, 301])
def test_dec_embed_refuses_an_id_out_of_range_before_writing(bad):
    C, V, d = kernels.core(), 301, 64
    table = lite.embedding_table(_tables("int4", V, d), "int4", V, d)
    ids = np.array([3, bad], dtype=np.int64)
    x = np.zeros((2, d), dtype=np.float32)
    fn, args = embed_call(C, table, ids, x, 2, lambda a: 0 if a is None else a.ctypes.data)
    with pytest.raises(ValueError, match="out of range"):
        fn(*args)
    assert not x.any()  # no row written, not even the valid first one


def test_embedding_table_is_none_where_the_compiled_lookup_does_not_read_it():
    V, d = 301, 64
    f16 = {"model.embeddings.weight": np.zeros((V, d), dtype=np.float16)}
    assert lite.embedding_table(f16, "float16", V, d) is None  # looked up in NumPy instead
    t = _tables("float32", V, d)
    t["model.embeddings.weight"] = np.asfortranarray(t["model.embeddings.weight"])
    assert lite.embedding_table(t, "float32", V, d) is None


@pytest.mark.parametrize("fmt", ["float32", "int8", "int4"])
@pytest.mark.parametrize("batch", [1, 3])
def test_step_from_token_ids_equals_the_per_call_loop(fmt, batch):
    """A step as one plan_run from token ids (the compiled lookup first, csrc/mf_decode.c)
    equals the per-call loop with the NumPy lookup: logits and states, bit for bit."""
    model = make_model(hidden=64, layers=3, vocab=300, seed=4)
    packed = PackedHGRNBitForCausalLM.from_model(model, embedding_format=fmt)
    one, loop = Decoder(packed, threads=2), Decoder(packed, threads=2)
    loop.family.use_plan_run = False
    one.reset(batch)
    loop.reset(batch)
    _, _, step = one.family._entry(batch, ((0, 0, batch),))
    assert step is not None  # the compiled lookup runs in `one`
    g = torch.Generator().manual_seed(batch)
    for _ in range(4):
        tok = torch.randint(0, 300, (batch,), generator=g).tolist()
        a, b = one.step(tok).clone(), loop.step(tok).clone()
        assert torch.equal(a, b)
        for sa, sb in zip(one.states, loop.states, strict=True):
            assert torch.equal(sa, sb)


def test_plan_run_checks_its_ids():
    """plan_run's ids go into the plan's id buffer: a list or tuple of ints, at most its size."""
    C = kernels.core()
    ids = np.zeros(2, dtype=np.int64)
    words = encode_plan(C, [])
    assert C.plan_run(words.ctypes.data, words.size, ids.ctypes.data, 2, [7, 9]) == 0
    assert ids.tolist() == [7, 9]
    with pytest.raises(ValueError, match="3 ids for a buffer of 2"):
        C.plan_run(words.ctypes.data, words.size, ids.ctypes.data, 2, [1, 2, 3])
    with pytest.raises(TypeError, match="list or tuple"):
        C.plan_run(words.ctypes.data, words.size, ids.ctypes.data, 2, np.array([1]))
