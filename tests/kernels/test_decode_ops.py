"""The fused decode stages as torch custom ops (mulfree.kernels.decode): checked shapes, fake
implementations (opcheck), a cost formula per op, and a counted decode step that runs the same
compiled calls as an uncounted one (the per-call twin of the plan runner) with the same bits."""

from __future__ import annotations

import pytest
import torch

from mulfree import energy, kernels
from mulfree.engine import PackedHGRNBitForCausalLM
from mulfree.engine.decode import Decoder
from mulfree.errors import MulfreeError
from mulfree.kernels import ISA_LEVELS
from mulfree.kernels import decode as KD  # noqa: F401  (registers the ops)
from tests.engine.conftest import make_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")
ops = torch.ops.mulfree


def _t(*shape, seed=0, pos=False):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g)
    return v.abs() + 0.5 if pos else v


def _norm2_args(B=3, n=13, outs=3):
    x, add, w1 = _t(B, n), _t(B, n, seed=1), _t(n, seed=2, pos=True)
    ws = [_t(n, seed=3 + c, pos=True) for c in range(outs)] + [None] * (3 - outs)
    os_ = [torch.empty(B, n) for _ in range(outs)] + [None] * (3 - outs)
    return (x, add, w1, 1e-6, 1e-5, ws[0], os_[0], ws[1], os_[1], ws[2], os_[2])


def _mlgru_args(B=2, E=11, lb=True, fused=True):
    y = _t(B, 3 * E)  # rows [i | f | g], one row stride: the fused i/f/g call's output
    yi, yf, yg = (y[:, :E], y[:, E : 2 * E], y[:, 2 * E :]) if fused else (
        _t(B, E, seed=1), _t(B, E, seed=2), _t(B, E, seed=3))  # fmt: skip
    low = _t(E, seed=4, pos=True) / 4 if lb else None
    olb = 1 - low if lb else None
    return (yi, yf, yg, low, olb, _t(B, E, seed=5), _t(E, seed=6, pos=True), 1e-6,
            _t(E, seed=7, pos=True), 1e-5, torch.empty(B, E), ISA_LEVELS["scalar"])  # fmt: skip


def _glu_args(B=2, inter=9):
    return (_t(B, 2 * inter), _t(inter, seed=1, pos=True), 1e-6, torch.empty(B, inter),
            ISA_LEVELS["scalar"])  # fmt: skip


@pytest.mark.parametrize("outs", [1, 3])
def test_opcheck_dec_norm2(outs):
    torch.library.opcheck(ops.dec_norm2.default, _norm2_args(outs=outs))


@pytest.mark.parametrize("fused", [True, False], ids=["strided-ifg", "own-rows"])
@pytest.mark.parametrize("lb", [True, False], ids=["lower-bound", "layer0"])
def test_opcheck_dec_mlgru(lb, fused):
    torch.library.opcheck(ops.dec_mlgru.default, _mlgru_args(lb=lb, fused=fused))


def test_opcheck_dec_glu():
    torch.library.opcheck(ops.dec_glu.default, _glu_args())


def test_ops_equal_the_raw_c_calls():
    C = kernels.core()
    a = _norm2_args()
    x0 = a[0].clone()
    ops.dec_norm2(*a)
    x, add, w1 = x0, a[1], a[2]
    outs = [torch.empty(3, 13) for _ in range(3)]
    C.dec_norm2(x.data_ptr(), add.data_ptr(), 3, 13, w1.data_ptr(), 1e-6, 1e-5,
                a[5].data_ptr(), outs[0].data_ptr(), a[7].data_ptr(), outs[1].data_ptr(),
                a[9].data_ptr(), outs[2].data_ptr())  # fmt: skip
    torch.testing.assert_close(a[0], x, atol=0, rtol=0)
    for got, want in zip((a[6], a[8], a[10]), outs, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    g = _glu_args()
    ops.dec_glu(*g)
    out = torch.empty(2, 9)
    C.dec_glu(g[0].data_ptr(), 2, 9, g[1].data_ptr(), 1e-6, out.data_ptr(), g[4])
    torch.testing.assert_close(g[3], out, atol=0, rtol=0)


def test_bad_shapes_are_one_error():
    a = list(_norm2_args())
    a[6] = torch.empty(3, 12)
    with pytest.raises(MulfreeError, match="dec_norm2: out must be"):
        ops.dec_norm2(*a)
    a = list(_norm2_args())
    a[7] = None  # w2_b without out_b
    with pytest.raises(MulfreeError, match="come together"):
        ops.dec_norm2(*a)
    m = list(_mlgru_args())
    m[5] = m[5].double()
    with pytest.raises(MulfreeError, match="dec_mlgru: state must be"):
        ops.dec_mlgru(*m)
    m = list(_mlgru_args())
    m[4] = None  # lb without 1 - lb
    with pytest.raises(MulfreeError, match="lb and olb"):
        ops.dec_mlgru(*m)
    g = list(_glu_args())
    g[0] = _t(2, 17)
    with pytest.raises(MulfreeError, match="dec_glu: gu must be"):
        ops.dec_glu(*g)


def _rms(rows, n):
    """R(n) on `rows` rows, written out from csrc/mf_decode.c's inv_rms."""
    return {("fp_mul", 64): rows * n, ("fp_add", 64): rows * n, ("div", 64): rows,
            ("fp_add", 32): rows, ("sqrt", 32): rows, ("div", 32): rows}  # fmt: skip


def _plus(*ds):
    out: dict = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _counted(op, args):
    with energy.EnergyCounter() as c:
        op(*args)
    assert not c.unknown
    return {k: v for k, v in c.counts.items() if v}, c.bytes


def test_the_counter_prices_each_stage_by_its_formula():
    B, n = 3, 13
    counts, nbytes = _counted(ops.dec_norm2, _norm2_args(B, n, outs=3))
    # x += add; (x r1) w1; then (o r2) w2_c for three outputs
    assert counts == _plus(_rms(2 * B, n), {("fp_add", 32): B * n, ("fp_mul", 32): 2 * B * n * 4})
    assert nbytes["weight_read"] == 4 * 4 * n and nbytes["act_write"] == 4 * 4 * B * n
    one = _norm2_args(B, n, outs=1)
    counts, _ = _counted(ops.dec_norm2, one[:1] + (None,) + one[2:])  # no residual add
    assert counts == _plus(_rms(2 * B, n), {("fp_mul", 32): 2 * B * n * 2})
    B, E = 2, 11
    for lb in (True, False):
        counts, nbytes = _counted(ops.dec_mlgru, _mlgru_args(B, E, lb=lb))
        x = int(lb)  # the lower bound's multiply and add
        per = {("exp", 32): 3 * B * E, ("div", 32): 3 * B * E, ("fp_add", 32): (5 + x) * B * E,
               ("fp_mul", 32): (7 + x) * B * E}  # fmt: skip
        assert counts == _plus(per, _rms(2 * B, E))
        assert nbytes["weight_read"] == 4 * E * (2 + 2 * x)
    B, inter = 2, 9
    counts, _ = _counted(ops.dec_glu, _glu_args(B, inter))
    per = {("exp", 32): B * inter, ("div", 32): B * inter, ("fp_add", 32): B * inter,
           ("fp_mul", 32): 3 * B * inter}  # fmt: skip
    assert counts == _plus(per, _rms(B, inter))


def _packed(same_norms: bool):
    model = make_model(hidden=64, layers=2, vocab=300, seed=5)
    if same_norms:  # the fused i/f/g call (strided rows into dec_mlgru)
        with torch.no_grad():
            for layer in model.model.layers:
                a = layer.attn
                a.f_proj.norm.weight.copy_(a.i_proj.norm.weight)
                a.g_proj.norm.weight.copy_(a.i_proj.norm.weight)
    return PackedHGRNBitForCausalLM.from_model(model)


@pytest.mark.parametrize("same_norms", [False, True], ids=["own-norms", "fused-ifg"])
def test_a_counted_step_runs_the_same_calls_with_the_same_bits(same_norms):
    packed = _packed(same_norms)
    dec = Decoder(packed, threads=1, max_batch=4)
    assert dec.fused and dec.fused_ifg == same_norms
    slots = [dec.alloc() for _ in range(4)]
    for s, prompt in zip(slots, ([1, 2], [7], [3, 4, 5], [9, 9]), strict=True):
        dec.prefill_slot(s, prompt)
    step = [slots[3], slots[0], slots[1]]  # two runs of adjacent slots, out of order
    saved = dec.family.states.copy()
    want = dec.step([5, 6, 7], step).clone()
    want_states = dec.family.states.copy()
    dec.family.states[...] = saved
    with energy.EnergyCounter(packed) as c:
        got = dec.step([5, 6, 7], step).clone()
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (dec.family.states == want_states).all()
    assert not c.unknown
    # every compiled call was priced: the ternary adds of every projection, once per row
    nnz = sum(int((m.packed().unpack() != 0).sum()) for m in packed.modules()
              if type(m).__name__ == "PackedBitLinear")  # fmt: skip
    assert c.counts[("ternary_add", 32)] == 3 * nnz
    # the stages' exps: per layer and row 3 E in the MLGRU and I in the GLU
    cfg = packed.config
    E, inter = int(cfg.hidden_size * cfg.expand_ratio), cfg.mlp_intermediate_size
    assert c.counts[("exp", 32)] == 3 * cfg.num_hidden_layers * (3 * E + inter)
    # the plan runner runs again afterwards (the cached plan was kept)
    dec.family.states[...] = saved
    torch.testing.assert_close(dec.step([5, 6, 7], step), want, atol=0, rtol=0)


def test_a_counted_prefill_has_the_uncounted_bits():
    dec = Decoder(_packed(False), threads=1, max_batch=2)
    a, b = dec.alloc(), dec.alloc()
    want = dec.prefill_slot(a, [4, 8, 15, 16])
    with energy.EnergyCounter() as c:
        got = dec.prefill_slot(b, [4, 8, 15, 16])
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (dec.family.states[:, a] == dec.family.states[:, b]).all()
    assert c.counts[("ternary_add", 32)] > 0


def test_counted_energy_prices_the_stages_not_torch_ops(monkeypatch):
    # while counting, no torch elementwise op of the torch path runs: only the custom ops,
    # the embedding lookup and the data movement of the buffers
    dec = Decoder(_packed(False), threads=1)
    dec.prefill([[1, 2]])
    seen = set()
    real = energy.EnergyCounter.count_op

    def spy(self, func, args, kwargs, out):
        seen.add(str(func.overloadpacket))
        return real(self, func, args, kwargs, out)

    monkeypatch.setattr(energy.EnergyCounter, "count_op", spy)
    with energy.EnergyCounter():
        dec.step([3])
    stages = {"mulfree.tq2_linear", "mulfree.dec_norm2", "mulfree.dec_mlgru", "mulfree.dec_glu"}
    assert stages <= seen
    assert not {s for s in seen if s.startswith("aten.")} - {"aten.embedding", "aten.slice",
                                                             "aten.view", "aten.as_strided",
                                                             "aten.reshape", "aten._reshape_alias",
                                                             "aten.to", "aten.resolve_conj",
                                                             "aten.resolve_neg", "aten.alias",
                                                             "aten.detach", "aten.lift_fresh"}  # fmt: skip
