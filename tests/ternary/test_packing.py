"""Packed ternary formats: the pure-torch spec round-trips (atol=0) at odd sizes, the compiled
packers produce the same bytes, and the byte layout is the documented one."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.ternary import packing as P
from mulfree.ternary.quant import weight_fake_quant, weight_quant_ternary

# in-features not multiples of 4 / 5 / 16 / 64 (and some that are), rows around 32
SIZES = [
    (1, 1),
    (1, 3),
    (2, 4),
    (3, 5),
    (31, 7),
    (32, 16),
    (33, 17),
    (7, 63),
    (5, 64),
    (40, 65),
    (70, 517),
]
needs_c = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")


def _codes(n, k, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + n * 31 + k)
    return torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)


@pytest.mark.parametrize("fmt", P.FORMATS)
@pytest.mark.parametrize("n,k", SIZES, ids=lambda v: str(v))
def test_reference_round_trip(fmt, n, k):
    q = _codes(n, k)
    pack = P.pack_tq2_ref if fmt == "tq2" else P.pack_tq1_ref
    unpack = P.unpack_tq2_ref if fmt == "tq2" else P.unpack_tq1_ref
    data = pack(q)
    assert data.dtype == torch.uint8 and data.numel() == P.packed_nbytes(fmt, n, k)
    assert torch.equal(unpack(data, n, k), q)


@needs_c
@pytest.mark.parametrize("fmt", P.FORMATS)
@pytest.mark.parametrize("n,k", SIZES, ids=lambda v: str(v))
def test_compiled_packers_equal_reference(fmt, n, k):
    q = _codes(n, k, seed=1)
    ref = P.pack_tq2_ref(q) if fmt == "tq2" else P.pack_tq1_ref(q)
    assert torch.equal(P.pack(q, fmt), ref)
    assert torch.equal(P.unpack(ref, fmt, n, k), q)
    if fmt == "tq1":
        assert torch.equal(P.tq1_to_tq2(ref, n, k), P.pack_tq2_ref(q))


@pytest.mark.parametrize("n,k", SIZES, ids=lambda v: str(v))
def test_torch_path_equals_reference(n, k):
    q = _codes(n, k, seed=2)
    with kernels.use_isa("torch"):
        assert torch.equal(P.pack(q, "tq2"), P.pack_tq2_ref(q))
        assert torch.equal(P.tq1_to_tq2(P.pack_tq1_ref(q), n, k), P.pack_tq2_ref(q))
        assert torch.equal(P.unpack(P.pack_tq1_ref(q), "tq1", n, k), q)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), k=st.integers(1, 140), seed=st.integers(0, 10**6))
def test_round_trip_property(n, k, seed):
    q = _codes(n, k, seed)
    for fmt in P.FORMATS:
        assert torch.equal(P.unpack(P.pack(q, fmt), fmt, n, k), q)


def test_tq2_layout_is_the_documented_one():
    """Row n, input k -> block (n // 32, k // 16), unit (k % 16) // 4, byte n % 32,
    bits 2 * (k % 4); code = q + 1; padding is code 1 (0x55 = four zero weights)."""
    n, k = 40, 37  # 2 row blocks x 3 k blocks
    q = torch.zeros(n, k, dtype=torch.int8)
    q[33, 22] = 1
    q[5, 3] = -1
    data = P.pack_tq2_ref(q).view(2, 3, 4, 32)  # [nb, kb, u, r]
    assert data[1, 1, 1, 1] == 0x55 ^ (0b11 << 4)  # k % 4 = 2: code 2 (0b10) in bits 4-5
    assert data[0, 0, 0, 5] == 0x55 ^ (0b01 << 6)  # k % 4 = 3: code 0 in bits 6-7
    others = data.clone()
    others[1, 1, 1, 1] = 0x55
    others[0, 0, 0, 5] = 0x55
    assert bool((others == 0x55).all())


def test_tq1_layout_is_the_documented_one():
    q = torch.tensor([[1, 0, -1, 1, 1, -1]], dtype=torch.int8)
    data = P.pack_tq1_ref(q)
    assert data.tolist() == [2 + 1 * 3 + 0 * 9 + 2 * 27 + 2 * 81, 0 + 1 * 3 + 9 + 27 + 81]


def test_bits_per_weight():
    q = _codes(64, 640)
    assert P.PackedTernary.from_int(q, 1.0, "tq2").bits_per_weight == 2.0
    assert P.PackedTernary.from_int(q, 1.0, "tq1").bits_per_weight == 1.6


@pytest.mark.parametrize("path", ["torch", "auto"])
def test_corrupt_or_wrong_size_data_is_one_clear_error(path):
    q = _codes(3, 10)
    bad = P.pack_tq1_ref(q).clone()
    bad[1] = 250
    with kernels.use_isa(path):
        with pytest.raises(MulfreeError, match="corrupt tq1 data"):
            P.unpack(bad, "tq1", 3, 10)
        with pytest.raises(MulfreeError, match="corrupt tq1 data"):
            P.tq1_to_tq2(bad, 3, 10)
        with pytest.raises(MulfreeError, match="must be 6 uint8 bytes"):
            P.unpack(bad[:5], "tq1", 3, 10)
    with pytest.raises(MulfreeError, match="must be in"):
        P.pack(torch.full((2, 2), 2, dtype=torch.int8))
    with pytest.raises(MulfreeError, match="unknown packed format"):
        P.packed_nbytes("tq3", 2, 2)


def test_from_float_uses_bitlinear_quantizer():
    torch.manual_seed(0)
    w = torch.randn(33, 77)
    q, scale = weight_quant_ternary(w)
    for fmt in P.FORMATS:
        p = P.PackedTernary.from_float(w, fmt)
        assert torch.equal(p.unpack(), q)
        assert torch.equal(p.scale, scale)
        assert torch.equal(p.dequantize(), weight_fake_quant(w))
    p1 = P.PackedTernary.from_float(w, "tq1")
    assert torch.equal(p1.to_format("tq2").data, P.PackedTernary.from_float(w, "tq2").data)
