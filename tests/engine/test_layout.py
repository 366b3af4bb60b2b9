"""The t81 weight layout in the engine: weights re-coded in place where the dispatcher measured
t81 faster (mulfree.kernels.dispatch.weight_layout), the same logits bit for bit as tq2 on every
level that runs it, and tq2 wherever a layout cannot hold (i/f/g with E not a multiple of 64,
a level without the VBMI kernel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import convert, lite, load_packed
from mulfree.engine.convert import ConvertConfig
from mulfree.engine.decode import Decoder
from mulfree.engine.modules import PackedBitLinear
from mulfree.errors import MulfreeError
from mulfree.kernels import dispatch

from .conftest import load_both_layouts, make_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")
IDS = [3, 17, 5, 0, 42, 9, 11, 2, 250, 7]


@pytest.fixture(scope="module", params=[(64, False), (64, True), (96, True)],
                ids=["E64-random-norms", "E64-fused-ifg", "E96-fused-ifg"])  # fmt: skip
def packed(request, tmp_path_factory):
    hidden, ones = request.param
    src, out = tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("packed")
    make_model(hidden=hidden, ones_norms=ones, vocab=300).save_pretrained(str(src))
    convert(ConvertConfig(str(src), str(out), "tq2", "int8", no_tokenizer=True))
    return out, hidden, ones


def _run(dec: lite.LiteDecoder) -> list[np.ndarray]:
    out = [dec.prefill(IDS[:6]).copy()]  # batched kernels (a 6-token prompt)
    out += [dec.step(t).copy() for t in IDS[6:]]  # one-token kernels
    return out


@pytest.mark.parametrize("isa", kernels.available_isas()[1:])  # every compiled level
def test_t81_weights_give_the_tq2_logits_bit_for_bit(packed, isa):
    path, hidden, ones = packed
    want = _run(lite.LiteDecoder(lite.LiteModel.load(path, layout="tq2"), threads=2, isa=isa))
    lm = lite.LiteModel.load(path, layout="t81", isa=isa)
    ifg = [p for name, p in lm.proj.items() if name.endswith(("i_proj", "f_proj", "g_proj"))]
    assert {p.layout for p in ifg} == {"t81" if hidden % 64 == 0 else "tq2"}
    assert lm.head.layout == lm.layers[0].o_proj.layout == "t81"
    dec = lite.LiteDecoder(lm, threads=2, isa=isa)
    # a level without the t81 kernel reads tq2 copies (t81_to_tq2), the scalar level the t81 spec
    copies = isa != "scalar" and not dispatch.t81_runs_simd(isa)
    assert (dec._tq2_copies is not None) == copies and ("t81" in dec.isas) == (not copies)
    assert dec.fused_ifg == ones  # equal i/f/g norms: one call on the three (t81 or tq2)
    for got, ref in zip(_run(dec), want, strict=True):
        np.testing.assert_array_equal(got, ref)


def test_auto_layout_follows_the_dispatcher(packed, monkeypatch):
    path = packed[0]
    monkeypatch.setenv("MULFREE_LAYOUT", "t81")  # the override weight_layout honours
    lm = lite.LiteModel.load(path)
    assert lm.head.layout == "t81"
    monkeypatch.setenv("MULFREE_LAYOUT", "tq2")
    assert not lite.LiteModel.load(path).has_t81
    monkeypatch.setenv("MULFREE_LAYOUT", "fast")
    with pytest.raises(MulfreeError, match="MULFREE_LAYOUT"):
        lite.LiteModel.load(path)
    with pytest.raises(MulfreeError, match="layout must be"):
        lite.LiteModel.load(path, layout="t82")


def test_no_t81_where_its_kernel_does_not_run(monkeypatch):
    monkeypatch.delenv("MULFREE_LAYOUT", raising=False)
    assert dispatch.layout(2048, "avx2", "avx2", "avx2") == "tq2"
    assert dispatch.layout(2048, "scalar", "scalar", "scalar") == "tq2"


def test_choose_layout_rule():
    fast, slow = [1.0] * 5, [1.2] * 5
    assert dispatch.choose_layout({"tq2": slow, "t81": fast}, {"tq2": slow, "t81": fast}) == "t81"
    # clearly faster on one, not slower on the other; slower on either vetoes
    assert dispatch.choose_layout({"tq2": fast, "t81": slow}, {"tq2": slow, "t81": fast}) == "tq2"
    assert dispatch.choose_layout({"tq2": slow, "t81": fast}, {"tq2": fast, "t81": slow}) == "tq2"
    near = [0.97] * 5  # 3 % faster is within the margin: alone it does not decide
    assert dispatch.choose_layout({"tq2": fast, "t81": near}, {"tq2": slow, "t81": fast}) == "t81"
    assert dispatch.choose_layout({"tq2": fast, "t81": near}, {"tq2": fast, "t81": near}) == "tq2"
    assert dispatch.layout_rule(0.97, 0.78) == "t81" and dispatch.layout_rule(1.07, 0.78) == "tq2"
    assert dispatch.layout_rule(0.91, 0.99) == "t81" and dispatch.layout_rule(0.91, 1.01) == "tq2"


@pytest.mark.skipif(not dispatch.t81_runs_simd("avx512"), reason="needs AVX-512 VBMI")
def test_layout_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("MULFREE_LAYOUT", raising=False)
    monkeypatch.setenv("MULFREE_CACHE", str(tmp_path))
    monkeypatch.setattr(dispatch, "LAYOUT_PROBE_BYTES", 1 << 20)  # a quick probe
    monkeypatch.setattr(dispatch, "load_average", lambda: 0.0)
    dispatch.reset()
    try:
        lv = dispatch.layout(256, "avx512", "avx512", "avx2")
        e = dispatch._entries["layout_k256"]
        assert lv == e["level"] in dispatch.LAYOUTS and e["isas"]["t81"] == "avx512"
        assert set(e["median_us"]) == {"tq2 b1", "t81 b1", "tq2 b8", "t81 b8"}
        if e["source"] == "measured":  # a noisy probe stays in this process only
            dispatch.reset()
            monkeypatch.setattr(dispatch, "measure_layout", lambda *a: pytest.fail("measured again"))
            assert dispatch.layout(256, "avx512", "avx512", "avx2") == lv
            assert dispatch._entries["layout_k256"]["source"] == "cache"
            # the level is the rule applied to the stored ratios (a file from an older rule)
            r = dispatch._entries["layout_k256"]["ratio_t81_to_tq2"]
            assert lv == dispatch.layout_rule(r["b1"], r["b8"])
            path = dispatch.cache_path(dispatch.cache_key())
            doc = json.loads(path.read_text())
            doc["families"]["layout_k256"].update(level="tq2", ratio_t81_to_tq2={"b1": 0.97, "b8": 0.7})
            path.write_text(json.dumps(doc))
            dispatch.reset()
            assert dispatch.layout(256, "avx512", "avx512", "avx2") == "t81"
    finally:
        dispatch.reset()


# --- the torch side: load_packed's modules, the Decoder, HF generate, state dicts ------------
def _torch_run(dec) -> list[torch.Tensor]:
    dec.reset(1)
    out = [dec.prefill([IDS[:6]])[0].clone()]
    out += [dec.step([t])[0].clone() for t in IDS[6:]]
    return out


@pytest.mark.parametrize("isa", kernels.available_isas()[1:])
def test_torch_decoder_on_t81_modules_gives_the_tq2_logits(packed, isa):
    path, hidden, ones = packed
    ref = load_packed(path, layout="tq2")
    t81 = load_packed(path, layout="t81")
    mods = {n: m for n, m in t81.named_modules() if isinstance(m, PackedBitLinear)}
    assert mods["lm_head"].layout == "t81"
    assert mods["model.layers.0.attn.i_proj"].layout == ("t81" if hidden % 64 == 0 else "tq2")
    for fused in (True, False):  # the compiled plan and its torch-path spec
        want = _torch_run(Decoder(ref, threads=2, isa=isa, fused=fused))
        dec = Decoder(t81, threads=2, isa=isa, fused=fused)
        assert dec.fused_ifg == ones
        assert (dec._tq2_copies is not None) == (isa != "scalar" and not dispatch.t81_runs_simd(isa))
        for got, w in zip(_torch_run(dec), want, strict=True):
            torch.testing.assert_close(got, w, atol=0, rtol=0)


def test_t81_modules_keep_tq2_state_dicts_forward_and_energy(packed, tmp_path):
    path = packed[0]
    ref, t81 = load_both_layouts(path, IDS)  # state dicts, forward, generate
    sa, x = ref.state_dict(), torch.tensor([IDS])
    # energy: the t81 op prices the same non-zero weights (its own nnz table)
    ea = ref.fused_decoder().step_energy([IDS[0]])
    eb = t81.fused_decoder().step_energy([IDS[0]])
    assert ea.total_pj == eb.total_pj and ea.dense_fp32_pj == eb.dense_fp32_pj
    # loading tq2 bytes into t81 layers re-codes them; saving writes tq2 again
    other = load_packed(path, layout="t81")
    other.load_state_dict(sa)
    with torch.no_grad():
        torch.testing.assert_close(other(x).logits, ref(x).logits, atol=0, rtol=0)
    t81.save_pretrained(tmp_path / "re", ternary_format="tq2")
    back = load_packed(tmp_path / "re", layout="tq2").state_dict()
    for k in sa:
        torch.testing.assert_close(back[k], sa[k], atol=0, rtol=0)


def test_module_layout_round_trip():
    from mulfree.ternary.packed_linear import PackedTernaryLinear

    torch.manual_seed(0)
    m = PackedTernaryLinear.from_float(torch.randn(128, 96), bias=None)
    before = m.weight_packed.clone()
    x = torch.randn(3, 96)
    y = m(x)
    m.to_layout_("t81")
    assert m.layout == "t81" and "format=t81" in repr(m)
    assert not torch.equal(m.weight_packed, before)  # re-coded in place
    torch.testing.assert_close(m(x), y, atol=0, rtol=0)
    torch.testing.assert_close(m.state_dict()["weight_packed"], before, atol=0, rtol=0)
    m.to_layout_("tq2")
    torch.testing.assert_close(m.weight_packed, before, atol=0, rtol=0)
    with pytest.raises(MulfreeError, match="layout must be"):
        m.to_layout_("tq1")
