"""L-Matmul's fast routes at attention shapes, bit for bit against the spec
(mulfree.lmul.ops.lmatmul_reference): the direct route (M <= 8 rows: B read in place, encoded on
the fly; decode-time q kᵀ and p v) at every row count 1..8 and column tails (N % 8, N % 16), and
the packed route just above it (M = 9), with and without the per-lane validity mask, one and
two threads."""

import pytest
import torch

from mulfree.kernels import ISA_LEVELS, available_isas
from mulfree.kernels._core import core
from mulfree.lmul.formats import get_format
from mulfree.lmul.ops import lmatmul_reference, to_bits

SIMD = [isa for isa in available_isas() if isa in ("avx2", "avx512")]
pytestmark = pytest.mark.skipif(not SIMD, reason="no SIMD level of the compiled core on this CPU")
F32 = get_format("float32")


def _operands(kind, bsz, m, k, n, gen):
    a = torch.randn(bsz, m, k, generator=gen)
    b = torch.randn(bsz, k, n, generator=gen)
    if kind == "zeros":  # exact zeros (masked attention probabilities), whole rows too
        a[a.abs() < 0.4] = 0.0
        a[:, :, : k // 4] = 0.0
        b[:, : k // 5] = -0.0
    elif kind == "mixed_scale":  # some products underflow, others do not
        a = a * torch.pow(10.0, torch.randint(-30, 3, a.shape, generator=gen).float())
    elif kind == "large":  # big magnitudes on both sides, no product overflows
        a, b = a * 1e15, b * 1e15
    return a, b


def _run(a, b, k, isa, threads):
    bsz, m, kk = a.shape
    n = b.shape[2]
    out = torch.empty(bsz, m, n)
    code = core().lmatmul_f32(a.data_ptr(), b.data_ptr(), out.data_ptr(), bsz, m, kk, n, k, 0,
                              ISA_LEVELS[isa], threads, -1)  # fmt: skip
    return out, code


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize("kind", ["normal", "zeros", "mixed_scale", "large"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9])
def test_fast_routes_equal_reference(isa, kind, m):
    gen = torch.Generator().manual_seed(m * 10 + len(kind))
    for k_dim, n in ((64, 77), (37, 16), (300, 8), (5, 3)):  # q kᵀ, p v (2 k-chunks), tails
        a, b = _operands(kind, 2, m, k_dim, n, gen)
        for k in (23, 3):
            want = lmatmul_reference(a, b, mantissa_bits=k, mode="int")
            for threads in (1, 2):
                got, code = _run(a, b, k, isa, threads)
                assert code >= 1, (kind, k)  # a fast route ran
                same = torch.equal(to_bits(got, F32), to_bits(want, F32))
                assert same, (kind, k_dim, n, k, threads)


@pytest.mark.parametrize("isa", SIMD)
def test_direct_route_splits_columns_over_threads(isa):
    """Large enough to fork (M K N >= 2^18): each thread's column range, and the scalar tail."""
    gen = torch.Generator().manual_seed(7)
    a, b = _operands("zeros", 1, 3, 128, 1029, gen)
    want = lmatmul_reference(a, b, mantissa_bits=4, mode="int")
    got, code = _run(a, b, 4, isa, 2)
    assert code == 1  # zeros: the masked kernel
    assert torch.equal(to_bits(got, F32), to_bits(want, F32))
