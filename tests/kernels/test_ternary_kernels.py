"""Compiled ternary kernels: every ISA level against the scalar spec and the torch int reference.

Integer results (activation codes, int32 accumulators) are compared with atol=0; the float
outputs too, because every path applies the same fp32 ops (scale, one division) to equal ints.
"""

import pytest
import torch

from mulfree import kernels
from mulfree.kernels import ternary as KT
from mulfree.ternary.packed_linear import ternary_linear_torch
from mulfree.ternary.packing import PackedTernary
from mulfree.ternary.quant import act_quant_int8

pytestmark = pytest.mark.skipif(not kernels.available(), reason="compiled core not built")

COMPILED = ["scalar", "avx2", "avx512"]


def _need(isa):
    if isa not in kernels.available_isas():
        pytest.skip(f"this CPU lacks {isa}")


def _acts(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3
    if m > 1:
        x[1] = 0.0  # all-zero token: scale from the 1e-5 floor
    if m > 2:
        x[2, :] = 2.5  # every input ties at the absmax; +-127 everywhere
        x[2, ::2] = -2.5
    return x


def _int_reference(x, q_w):
    """acc[m, n] = sum_k q_x[m, k] q_w[n, k] in int64 (independent of every kernel)."""
    q_x, _ = act_quant_int8(x)
    return (q_x.long().unsqueeze(1) * q_w.long().unsqueeze(0)).sum(-1)  # [M, N]


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("m,k", [(1, 1), (3, 7), (4, 64), (5, 517), (2, 2048)], ids=str)
def test_act_quant_bitexact(isa, m, k):
    _need(isa)
    x = _acts(m, k, seed=k)
    x[0, 0] = 0.5 * (x[0].abs().max())  # a value landing on .5 after scaling is rounded to even
    q_ref, s_ref = act_quant_int8(x)
    q, s = KT.act_quant_i8(x, isa=isa)
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)


SHAPES = [  # (M, N, K): odd sizes, K not a multiple of 4/5/16/64, K past one int16 flush (1024)
    (1, 1, 1),
    (1, 33, 50),
    (1, 96, 1040),  # decode: row blocks in pairs (AVX2) plus an odd one, past one flush
    (1, 230, 2100),
    (1, 200, 1040),  # 7 row blocks: a group of 4 (AVX-512 VBMI) plus 3, or 3 pairs plus 1
    (2, 32, 16),
    (3, 70, 517),
    (5, 64, 1040),
    (8, 96, 2048),
    (3, 160, 1040),  # batch on a group of 4 row blocks (512-bit VBMI pairs) + 1, tiles 2 + 1 tokens
    (8, 256, 2100),  # two groups, four 2-token tiles, past one flush
    (9, 40, 4100),  # batch k-chunking kicks in (tables of 9 tokens > the L2 budget)
    (130, 33, 100),  # more tokens than one pass (16): nine passes over the weights
    (37, 64, 600),  # three passes, the last of 5 tokens (tiles of 4 + 1)
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=lambda v: str(v))
def test_tq2_linear_equals_int_reference(isa, threads, m, n, k):
    _need(isa)
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    q_w = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    packed = PackedTernary.from_int(q_w, torch.tensor(0.37))
    x = _acts(m, k, seed=n + k)
    y, acc = KT.tq2_linear(
        x, packed.data, n, float(packed.scale), threads=threads, isa=isa, return_acc=True
    )
    assert torch.equal(acc.long(), _int_reference(x, q_w))
    y_ref = ternary_linear_torch(x, packed)
    assert torch.equal(y, y_ref)


@pytest.mark.parametrize("isa", COMPILED)
@pytest.mark.parametrize("m", [1, 2])
def test_tq2_linear_extremes_do_not_overflow(isa, m):
    """All-+1 / all--1 rows with |q_x| = 127 everywhere: the largest sums the byte and int16
    partial sums ever see (K = 3 flushes of 1024 inputs + a tail)."""
    _need(isa)
    k, n = 3 * 1024 + 48, 64
    q_w = torch.zeros(n, k, dtype=torch.int8)
    q_w[0::4] = 1
    q_w[1::4] = -1
    q_w[2::4, 0::2] = 1
    q_w[2::4, 1::2] = -1
    x = torch.full((2, k), 1.0)
    x[1, 1::2] = -1.0
    x = x[:m] if m == 2 else x[1:]  # batch 1 takes the alternating row
    packed = PackedTernary.from_int(q_w, 1.0)
    _, acc = KT.tq2_linear(x, packed.data, n, 1.0, threads=2, isa=isa, return_acc=True)
    ref = _int_reference(x, q_w)
    assert ref.abs().max() == 127 * k
    assert torch.equal(acc.long(), ref)


def test_simd_equals_scalar_on_random_weights():
    """The best compiled level against the scalar spec on a realistic layer (float weights)."""
    best = kernels.isa_max()
    torch.manual_seed(0)
    w = torch.randn(300, 1000)
    packed = PackedTernary.from_float(w)
    x = torch.randn(6, 1000)
    outs = [
        KT.tq2_linear(x, packed.data, 300, float(packed.scale), threads=2, isa=i, return_acc=True)
        for i in ("scalar", best)
    ]
    assert torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][0], outs[1][0])
