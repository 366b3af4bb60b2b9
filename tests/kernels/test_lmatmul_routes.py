"""L-Matmul's fast routes at attention shapes, bit for bit against the spec
(mulfree.lmul.ops.lmatmul_reference): the direct route (M <= 8 rows: B read in place, encoded on
the fly; decode-time q kᵀ and p v) at every row count 1..8 and column tails (N % 8, N % 16), and
the packed route just above it (M = 9), with and without the per-lane validity mask, one and
two threads; the packed route's per-tile kernels (all-zero k-chunks skipped, A's zeros as a row
mask, the per-lane compare, the unchecked kernel) on causal-mask operands."""

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
@pytest.mark.parametrize("n", [1029, 1037])
def test_direct_route_splits_columns_over_threads(isa, n):
    """Large enough to fork (M K N >= 2^18): each thread's column range (in 16-column vectors
    at AVX-512, the last thread also taking a group of 8: N = 1037), and the scalar tail."""
    gen = torch.Generator().manual_seed(7)
    a, b = _operands("zeros", 1, 3, 128, n, gen)
    want = lmatmul_reference(a, b, mantissa_bits=4, mode="int")
    got, code = _run(a, b, 4, isa, 2)
    assert code == 1  # zeros: the masked kernel
    assert torch.equal(to_bits(got, F32), to_bits(want, F32))


def _causal(kind, bsz, m, k, n, gen):
    """p v at prefill: p [m, k] softmax-like with a causal mask (row i zero past k - m + i),
    v [k, n] normal. kind: "causal" (only p's zeros: all-zero chunks skipped, the row mask on
    the diagonal, the unchecked kernel below it); "causal_vzero" (v has zeros too: the per-lane
    compare); "causal_tiny" (one tiny p whose products underflow: the compare on its chunk);
    "window" (a sliding window of 40: zeros before the window too, so a tile's non-zero k range
    starts inside a chunk)."""
    p = torch.rand(bsz, m, k, generator=gen) + 0.01
    i, j = torch.arange(m)[:, None], torch.arange(k)[None, :]
    p = p.masked_fill(j > i + (k - m), 0.0)
    if kind == "window":
        p = p.masked_fill(j < i + (k - m) - 40, 0.0)
    p = p / p.sum(-1, keepdim=True)
    v = torch.randn(bsz, k, n, generator=gen)
    if kind == "causal_vzero":
        v[:, 5:9] = 0.0
        v[0, 200:, 3] = -0.0
    elif kind == "causal_tiny":
        p[:, m - 1, k // 2 + 1] = 2e-38  # normal; times |v| < 0.5 it underflows
    return p, v


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize("kind", ["causal", "causal_vzero", "causal_tiny", "window"])
@pytest.mark.parametrize("mkn", [(37, 300, 45), (64, 64, 64), (130, 513, 17)], ids=str)
def test_packed_tile_kernels_equal_reference(isa, kind, mkn):
    """Row blocks and panels with padding (M % 8, N % 32), K % 8 tails, several k-chunks (the
    first one all zero for the top rows: the tile still starts from +0), both thread counts."""
    m, k_dim, n = mkn
    gen = torch.Generator().manual_seed(m + k_dim + n + len(kind))
    a, b = _causal(kind, 3, m, k_dim, n, gen)  # 3 on 2 threads: each matmul on both threads
    for k in (23, 3):
        want = lmatmul_reference(a, b, mantissa_bits=k, mode="int")
        for threads in (1, 2):
            got, code = _run(a, b, k, isa, threads)
            assert code == 1  # zeros: not the no-underflow route as a whole
            assert torch.equal(to_bits(got, F32), to_bits(want, F32)), (kind, k, threads)


@pytest.mark.parametrize("isa", SIMD)
def test_packed_route_top_rows_all_zero(isa):
    """A row block whose operands are all zero in every k-chunk: its outputs are +0 (written,
    not left as the buffer's garbage)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, 20, 300, generator=gen)
    a[:, :9] = 0.0
    b = torch.randn(1, 300, 40, generator=gen)
    out = torch.full((1, 20, 40), float("nan"))
    code = core().lmatmul_f32(a.data_ptr(), b.data_ptr(), out.data_ptr(), 1, 20, 300, 40, 4, 0,
                              ISA_LEVELS[isa], 1, -1)  # fmt: skip
    want = lmatmul_reference(a, b, mantissa_bits=4, mode="int")
    assert code == 1
    assert torch.equal(to_bits(out, F32), to_bits(want, F32))
    assert torch.equal(to_bits(out[0, :9], F32), torch.zeros(9, 40, dtype=to_bits(out, F32).dtype))
