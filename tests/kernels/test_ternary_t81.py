"""The t81 layout (csrc/mf_ternary.c section 5): byte re-coding against its pure-torch spec, and
t81_linear bit-exact (int32 accumulators and outputs, atol=0) against tq2's scalar spec and the
torch int reference, natively where the CPU has AVX-512 VBMI and under SIMDe everywhere else."""

from pathlib import Path

import pytest
import torch

from mulfree import kernels
from mulfree.kernels import ternary as KT
from mulfree.ternary import packing
from mulfree.ternary.packing import PackedTernary
from tests.kernels.test_avx512_emulated import build_on_simde, needs_simde
from tests.kernels.test_ternary_kernels import _acts, _int_reference

pytestmark = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")


def _weights(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)


def test_recode_matches_spec_and_round_trips():
    """Byte re-coding on one row block (32 rows: nothing to pair, bytes keep their place)."""
    every_byte = torch.arange(256, dtype=torch.int64).to(torch.uint8)  # a [32, 32] weight
    t81 = KT.tq2_to_t81(every_byte, 32, 32)
    assert torch.equal(t81, packing.tq2_to_t81_ref(every_byte, 32, 32))
    assert int(t81.max()) == 80
    # each valid tq2 byte (no code 3) maps to a distinct t81 byte, and back; padded with 0x55
    # (four zero weights) to the 128 bytes of a [32, 16] weight
    valid = [b for b in range(256) if all((b >> (2 * i)) & 3 != 3 for i in range(4))]
    valid = torch.tensor(valid + [0x55] * (128 - len(valid)), dtype=torch.uint8)
    assert sorted(KT.tq2_to_t81(valid, 32, 16)[:81].tolist()) == list(range(81))
    back, bad = KT.t81_to_tq2(KT.tq2_to_t81(valid, 32, 16), 32, 16)
    assert bad == 0 and torch.equal(back, valid)
    assert torch.equal(back, packing.t81_to_tq2_ref(KT.tq2_to_t81(valid, 32, 16), 32, 16))
    # invalid t81 bytes (never written) are counted and read as four zero weights (tq2 0x55)
    junk = torch.full((128,), 40, dtype=torch.uint8)
    junk[:3] = torch.tensor([81, 200, 255], dtype=torch.uint8)
    out, bad = KT.t81_to_tq2(junk, 32, 16)
    assert bad == 3 and out.tolist() == [0x55] * 128
    assert torch.equal(packing.t81_to_tq2_ref(junk, 32, 16), out)


@pytest.mark.parametrize("n,k", [(64, 16), (70, 50), (96, 200), (256, 1040), (33, 16)], ids=str)
def test_pairs_layout(n, k):
    """Row blocks 2j, 2j + 1 interleaved into 64-row blocks (mf_t81_pair), an odd last block in
    tq2 order: the C conversion equals the torch spec, a position written out from the layout's
    definition agrees with both, and the round trip is exact."""
    q_w = _weights(n, k, n + k)
    tq2 = PackedTernary.from_int(q_w, 1.0).data
    t81 = KT.tq2_to_t81(tq2, n, k)
    assert torch.equal(t81, packing.tq2_to_t81_ref(tq2, n, k))
    NB, KB = -(-n // 32), -(-k // 16)
    code = packing._tq2_to_t81_map()
    for nb, kb, u, r in ((0, 0, 0, 0), (1, KB - 1, 3, 31), (NB - 1, KB - 1, 2, 5), (NB - 1, 0, 1, 17)):
        b2 = int(tq2[(nb * KB + kb) * 128 + u * 32 + r])
        if nb // 2 * 2 + 1 < NB:  # paired: pair j = nb // 2 starts at row block 2j's first byte
            o81 = (nb // 2 * 2 * KB) * 128 + kb * 256 + u * 64 + (nb % 2) * 32 + r
        else:  # the odd last row block: tq2 order
            o81 = (nb * KB + kb) * 128 + u * 32 + r
        assert int(t81[o81]) == int(code[b2])
    back, bad = KT.t81_to_tq2(t81, n, k)
    assert bad == 0 and torch.equal(back, tq2)
    assert torch.equal(packing.t81_to_tq2_ref(t81, n, k), tq2)


def test_recode_in_place():
    packed = PackedTernary.from_int(_weights(70, 50, 1), 1.0)
    data = packed.data.clone()
    KT.tq2_to_t81(data, 70, 50, out=data)
    assert torch.equal(data, packing.tq2_to_t81_ref(packed.data, 70, 50))


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "m,n,k",
    [(1, 32, 16), (1, 256, 1040), (3, 33, 50), (2, 290, 2100), (8, 512, 2048), (9, 100, 4100),
     (17, 70, 200), (16, 256, 96)],
    ids=str,
)  # fmt: skip
def test_t81_linear_equals_tq2_spec(isa, threads, m, n, k):
    """Native run at every level (the VBMI kernel where the CPU has it, else the scalar spec of
    t81): acc equal to the tq2 scalar spec and to the int reference, outputs equal too."""
    if isa not in kernels.available_isas():
        pytest.skip(f"this CPU lacks {isa}")
    q_w = _weights(n, k, m * 1000 + n)
    x = _acts(m, k, seed=k)
    w = PackedTernary.from_int(q_w, 0.75).data
    y_ref, acc_ref = KT.tq2_linear(x, w, n, 0.75, threads=1, isa="scalar", return_acc=True)
    y, acc = KT.t81_linear(x, KT.tq2_to_t81(w, n, k), n, 0.75, threads=threads, isa=isa, return_acc=True)
    assert torch.equal(acc, acc_ref)
    assert torch.equal(acc.long(), _int_reference(x, q_w))
    assert torch.equal(y, y_ref)
    y_op = KT.t81_linear(x, KT.tq2_to_t81(w, n, k), n, 0.75, threads=threads, isa=isa)  # the op
    assert torch.equal(y_op, y_ref)


@pytest.mark.parametrize("m", [1, 2, 8])
def test_t81_extremes_do_not_overflow(m):
    """All-+1 / all--1 rows with |q_x| = 127: the largest byte and int16 partial sums (K = 3
    flushes of 1024 inputs + a tail), on the best level."""
    k, n = 3 * 1024 + 48, 256
    q_w = torch.zeros(n, k, dtype=torch.int8)
    q_w[0::4] = 1
    q_w[1::4] = -1
    q_w[2::4, 0::2] = 1
    q_w[2::4, 1::2] = -1
    x = torch.full((m, k), 1.0)
    x[1::2, 1::2] = -1.0
    w = KT.tq2_to_t81(PackedTernary.from_int(q_w, 1.0).data, n, k)
    _, acc = KT.t81_linear(x, w, n, 1.0, threads=2, isa=kernels.isa_max(), return_acc=True)
    ref = _int_reference(x, q_w)
    assert ref.abs().max() == 127 * k
    assert torch.equal(acc.long(), ref)


def test_row_scales_and_fused_rows():
    """fuse_rows' per-row scales apply to t81 weights as to tq2 (same row layout)."""
    parts = [PackedTernary.from_int(_weights(n, 200, n), s) for n, s in ((64, 0.5), (96, 2.0))]
    data, row_scales = packing.fuse_rows(parts)
    x = _acts(3, 200, seed=3)
    want = KT.tq2_linear(x, data, 160, 1.0, threads=1, isa="scalar", row_scales=row_scales)
    got = KT.t81_linear(x, KT.tq2_to_t81(data, 160, 200), 160, 1.0, threads=2, isa=kernels.isa_max(),
                        row_scales=row_scales)  # fmt: skip
    assert torch.equal(got, want)


@needs_simde
def test_t81_vbmi_kernel_equals_scalar_under_simde(tmp_path, capfd):
    lib = build_on_simde(Path(__file__).with_name("t81_emulated_harness.c"), tmp_path)
    fails = lib.mf_t81_emulated_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 15 * 2, report  # shapes x thread counts


@pytest.mark.parametrize("isa", ["torch", "scalar", "avx2", "avx512"])
def test_packed_ternary_t81_through_ternary_linear(isa):
    """PackedTernary in format t81 (pack, unpack, to_format both ways) and ternary_linear on it:
    the same outputs as on tq2 at every level (the t81 kernel where it runs, else a conversion)."""
    if isa not in kernels.available_isas():
        pytest.skip(f"this CPU lacks {isa}")
    from mulfree.ternary.packed_linear import ternary_linear

    q_w = _weights(100, 300, 7)
    p2 = PackedTernary.from_int(q_w, 0.5)
    p81 = PackedTernary.from_int(q_w, 0.5, "t81")
    assert p81.nbytes == p2.nbytes and torch.equal(p81.data, packing.tq2_to_t81_ref(p2.data, 100, 300))
    assert torch.equal(p81.unpack(), q_w)
    assert torch.equal(p2.to_format("t81").data, p81.data)
    assert torch.equal(p81.to_format("tq2").data, p2.data)
    x = _acts(5, 300, seed=9)
    assert torch.equal(ternary_linear(x, p81, threads=2, isa=isa), ternary_linear(x, p2, threads=2, isa=isa))


def test_energy_counter_prices_t81_like_tq2():
    """The t81 op has its own cost entry (its own non-zero count per byte): the same adds as tq2."""
    from mulfree.energy.counter import EnergyCounter
    from mulfree.ternary.packed_linear import ternary_linear

    q_w = _weights(64, 128, 5)
    x = _acts(3, 128, seed=5)
    adds = []
    for fmt in ("tq2", "t81"):
        with EnergyCounter() as c:
            ternary_linear(x, PackedTernary.from_int(q_w, 1.0, fmt), isa=kernels.isa_max())
        adds.append(c.total("ternary_add"))
    assert adds == [3 * int((q_w != 0).sum())] * 2
