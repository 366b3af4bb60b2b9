"""The packed linear as a torch custom op: checked shapes, a fake implementation, a cost formula."""

from __future__ import annotations

import pytest
import torch

from mulfree import energy, kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import ternary as KT
from mulfree.ternary import packing

needs_core = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")


def _case(m=3, k=48, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
    return torch.randn(m, k, generator=g), packing.pack(q, "tq2"), q


@needs_core
def test_opcheck_schema_fake_and_real():
    x, w, _ = _case()
    out = torch.empty(3, 64)
    level = kernels.ISA_LEVELS["scalar"]  # every level gives the same bits (tests/kernels)
    torch.library.opcheck(torch.ops.mulfree.tq2_linear.default, (x, w, 64, 0.5, 1, level, None, out))


@needs_core
def test_bad_shapes_are_one_error():
    x, w, _ = _case()
    level = kernels.ISA_LEVELS["scalar"]
    with pytest.raises(MulfreeError, match="w must be"):
        torch.ops.mulfree.tq2_linear(x, w[:-1].clone(), 64, 1.0, 1, level, None, torch.empty(3, 64))
    with pytest.raises(MulfreeError, match="out must be"):
        torch.ops.mulfree.tq2_linear(x, w, 64, 1.0, 1, level, None, torch.empty(3, 63))
    with pytest.raises(MulfreeError, match="x must be"):
        torch.ops.mulfree.tq2_linear(x.double(), w, 64, 1.0, 1, level, None, torch.empty(3, 64))


@needs_core
def test_the_counter_prices_the_op_from_its_formula():
    x, w, q = _case()
    nnz = int((q != 0).sum())
    with energy.EnergyCounter() as c:
        KT.tq2_linear(x, w, 64, 1.0, threads=1, isa="scalar")
    t, k, n = 3, 48, 64
    assert c.counts[("ternary_add", 32)] == t * nnz
    assert c.counts[("div", 32)] == t * (n + 1)
    assert c.counts[("cmp", 32)] == 3 * t * k
    assert c.bytes["weight_read"] == w.numel()
    assert not c.unknown
    with energy.EnergyCounter() as d, KT.priced_as_dense():
        KT.tq2_linear(x, w, 64, 1.0, threads=1, isa="scalar")
    assert d.counts[("fp_mul", 32)] == t * n * k and d.counts[("fp_add", 32)] == t * n * (k - 1)
    assert d.bytes["weight_read"] == 4 * n * k and ("ternary_add", 32) not in d.counts
