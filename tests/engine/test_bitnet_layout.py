"""The t81 weight layout on BitNet b1.58 models: load_packed re-codes the projections in place
where the dispatcher picks t81 (q|k|v and gate|up only as whole groups of 64-row multiples, the
one weight their call reads), and the compiled step, its torch spec, the HF forward and the
energy count give what the tq2 model gives, bit for bit, on every compiled level (a level
without the t81 kernel reads tq2 copies)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from mulfree import kernels  # noqa: E402
from mulfree.engine import convert, load_packed  # noqa: E402
from mulfree.engine.bitnet_decode import BitNetDecoder  # noqa: E402
from mulfree.engine.convert import ConvertConfig  # noqa: E402
from mulfree.engine.modules import PackedBitLinear, adjacent_weights  # noqa: E402
from mulfree.engine.plan import choose_layouts  # noqa: E402
from mulfree.errors import MulfreeError  # noqa: E402
from mulfree.kernels import dispatch  # noqa: E402
from mulfree.models.bitnet.synthetic import TINY, write_random_checkpoint  # noqa: E402
from mulfree.ternary import packing  # noqa: E402

from .conftest import load_both_layouts  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

IDS = [1, 5, 7, 9, 33, 100, 7, 8, 250, 3]
PROMPT = 6
TFM = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# TINY: k/v 32 rows and gate/up 96 rows, so q|k|v and gate|up stay tq2 (o, down: t81);
# WIDE: every projection a multiple of 64 rows, all t81
WIDE = dict(TINY, hidden_size=128, intermediate_size=192, num_attention_heads=2,
            num_key_value_heads=1)  # fmt: skip


@pytest.fixture(scope="module", params=["tiny", "wide"])
def packed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("bnl")
    src = write_random_checkpoint(root / "ck", TINY if request.param == "tiny" else WIDE, seed=3)
    convert(ConvertConfig(str(src), str(root / "p"), no_tokenizer=True))
    return root / "p", request.param


def _run(dec: BitNetDecoder) -> list[torch.Tensor]:
    out = [dec.prefill(torch.tensor([IDS[:PROMPT]])).clone()]  # batched kernels
    out += [dec.step([t]).clone() for t in IDS[PROMPT:]]  # one-token kernels
    return out


def _layouts(model) -> dict[str, str]:
    return {n.rsplit(".", 1)[-1]: m.layout for n, m in model.named_modules()
            if isinstance(m, PackedBitLinear) and ".layers.0." in n}  # fmt: skip


@pytest.mark.parametrize("isa", kernels.available_isas()[1:])  # every compiled level
def test_t81_bitnet_gives_the_tq2_logits_bit_for_bit(packed, isa):
    path, shape = packed
    ref, t81 = load_packed(path, layout="tq2"), load_packed(path, layout="t81", isa=isa)
    lay = _layouts(t81)
    fused = "tq2" if shape == "tiny" else "t81"
    assert lay == {"q_proj": fused, "k_proj": fused, "v_proj": fused, "o_proj": "t81",
                   "gate_proj": fused, "up_proj": fused, "down_proj": "t81"}  # fmt: skip
    a = t81.model.layers[0].self_attn
    assert adjacent_weights([a.q_proj, a.k_proj, a.v_proj]) is not None  # re-coded in place
    copies = isa != "scalar" and not dispatch.t81_runs_simd(isa)
    for fused_step in (True, False):  # the compiled plan and its torch-path spec
        want = _run(BitNetDecoder(ref, isa=isa, threads=2, fused=fused_step))
        dec = BitNetDecoder(t81, isa=isa, threads=2, fused=fused_step)
        assert dec.layers[0].o.layout == "t81" and dec.layers[0].qkv.layout == fused
        if fused_step:
            assert (dec._tq2_copies is not None) == copies
            assert ("t81" in dec.isas) == (not copies)
        for got, w in zip(_run(dec), want, strict=True):
            torch.testing.assert_close(got, w, atol=0, rtol=0)


def test_t81_bitnet_forward_state_dict_and_energy(packed):
    ref, t81 = load_both_layouts(packed[0], IDS)  # state dicts, forward, generate
    ea = BitNetDecoder(ref).step_energy([IDS[0]])
    eb = BitNetDecoder(t81).step_energy([IDS[0]])  # the t81 op prices the same non-zeros
    assert ea.total_pj == eb.total_pj and ea.dense_fp32_pj == eb.dense_fp32_pj


def test_fused_groups_take_t81_only_whole():
    shapes = [("l.q_proj", 2560, 2560), ("l.k_proj", 640, 2560), ("l.v_proj", 640, 2560),
              ("l.o_proj", 2560, 2560), ("l.gate_proj", 6912, 2560), ("l.up_proj", 6912, 2560),
              ("l.down_proj", 2560, 6912)]  # fmt: skip
    assert choose_layouts(shapes, "t81", None, TFM) == ["t81"] * 7
    shapes[1] = ("l.k_proj", 608, 2560)  # one 32-row remainder: the whole q|k|v stays tq2
    assert choose_layouts(shapes, "t81", None, TFM) == ["tq2"] * 3 + ["t81"] * 4
    # another family's groups leave these names alone
    assert choose_layouts(shapes, "t81", None) == ["t81"] * 7


def test_fuse_rows_stacks_t81_pairs():
    torch.manual_seed(0)
    ws = [torch.randint(-1, 2, (n, 96)).float() for n in (128, 64)]
    tq2 = [packing.PackedTernary(packing.pack(w, "tq2"), torch.tensor(1.0), w.shape[0], 96)
           for w in ws]  # fmt: skip
    t81 = [packing.PackedTernary(packing.pack(w, "t81"), torch.tensor(1.0), w.shape[0], 96, "t81")
           for w in ws]  # fmt: skip
    got, _ = packing.fuse_rows(t81)
    want = packing.pack(torch.cat(ws), "t81")
    assert torch.equal(got, want)
    assert torch.equal(packing.fuse_rows(tq2)[0], packing.pack(torch.cat(ws), "tq2"))
    odd = packing.PackedTernary(packing.pack(ws[0][:96], "t81"), torch.tensor(1.0), 96, 96, "t81")
    with pytest.raises(MulfreeError, match="multiple of 64"):
        packing.fuse_rows([t81[0], odd])
    with pytest.raises(MulfreeError, match="one layout"):
        packing.fuse_rows([t81[0], tq2[1]])
