"""L-Matmul: equals a loop of lmul + accumulation in the documented order; shapes; gradients."""

import pytest
import torch

from mulfree.errors import MulfreeError
from mulfree.lmul import lmatmul, lmul


def _loop_lmatmul(a, b, acc_dtype=torch.float32, **kw):
    """The documented order, written as plainly as possible: sequential over K."""
    m_rows, k_dim = a.shape
    n_cols = b.shape[1]
    out = torch.zeros(m_rows, n_cols, dtype=torch.float32)
    for i in range(m_rows):
        for j in range(n_cols):
            acc = torch.zeros((), dtype=torch.float32)
            for k in range(k_dim):
                p = lmul(a[i, k], b[k, j], **kw).float()
                acc = (acc + p).to(acc_dtype).float()
            out[i, j] = acc
    return out.to(acc_dtype)


def _bits_equal(x, y):
    return torch.equal(x.float().view(torch.int32), y.float().view(torch.int32))


@pytest.mark.parametrize(
    "dtype,acc,k,mode",
    [
        (torch.float32, torch.float32, None, "int"),
        (torch.float32, torch.float32, 3, "eq1"),
        (torch.bfloat16, torch.float32, None, "int"),
        (torch.bfloat16, torch.bfloat16, 4, "int"),
        (torch.float16, torch.float32, 2, "eq1"),
        (torch.float8_e4m3fn, torch.float8_e4m3fn, None, "int"),
        (torch.float8_e5m2, torch.float32, None, "int"),
    ],
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_equals_loop_of_lmul(dtype, acc, k, mode):
    gen = torch.Generator().manual_seed(7)
    a = (torch.randn(5, 13, generator=gen) * 3).to(dtype)
    b = (torch.randn(13, 6, generator=gen) * 3).to(dtype)
    got = lmatmul(a, b, mantissa_bits=k, mode=mode, acc_dtype=acc)
    want = _loop_lmatmul(a, b, acc_dtype=acc, mantissa_bits=k, mode=mode)
    assert got.dtype == acc
    assert _bits_equal(got, want)


def test_special_values_propagate():
    a = torch.tensor([[1.0, float("inf")], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, float("nan")]])
    out = lmatmul(a, b)
    assert out[0, 0].item() == float("inf")  # 1*0 + inf*1
    assert out[0, 1].isnan()
    # 0*0 + 2*1: L-Mul(2, 1) = 2 * (1 + 0 + 0 + 2^-4) = 2.125.
    assert out[1, 0].item() == 2.125 and out[1, 1].isnan()


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((7,), (7,)),
        ((7,), (7, 3)),
        ((4, 7), (7,)),
        ((2, 1, 4, 7), (3, 7, 5)),
        ((3, 4, 7), (7, 5)),
        ((4, 7), (2, 7, 5)),  # only b batched
        ((2, 3, 4, 7), (2, 3, 7, 5)),  # equal batch dims (attention heads)
        ((63, 17), (17, 1)),
    ],
    ids=str,
)
def test_matmul_batching_semantics(sa, sb):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(sa, generator=gen), torch.randn(sb, generator=gen)
    out = lmatmul(a, b)
    ref = torch.matmul(a, b)
    assert out.shape == ref.shape
    # L-Mul's relative error per product is below 1/8 (mantissa product x*y replaced by 2^-4),
    # so the result stays within 12.5 % of the sum of |products|.
    bound = torch.matmul(a.abs(), b.abs()) * 0.125 + 1e-6
    assert ((out - ref).abs() <= bound).all()


def test_bad_shapes_and_dtypes():
    with pytest.raises(MulfreeError, match="shape mismatch"):
        lmatmul(torch.randn(3, 4), torch.randn(5, 2))
    with pytest.raises(MulfreeError, match="share a dtype"):
        lmatmul(torch.randn(3, 4), torch.randn(4, 2).bfloat16())
    with pytest.raises(MulfreeError, match="do not broadcast"):
        lmatmul(torch.randn(2, 3, 4), torch.randn(5, 4, 2))
    with pytest.raises(MulfreeError, match="not support dtype"):
        lmatmul(torch.randn(3, 4).double(), torch.randn(4, 2).double())
    with pytest.raises(MulfreeError, match="outside 1..23"):
        lmatmul(torch.randn(3, 4), torch.randn(4, 2), mantissa_bits=24)
    with pytest.raises(MulfreeError, match="acc_dtype"):
        lmatmul(torch.randn(3, 4), torch.randn(4, 2), acc_dtype=torch.float16)


@pytest.mark.parametrize("k", [None, 3])
def test_gradients_are_lmul_products(k):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, 7, generator=gen, requires_grad=True)
    b = torch.randn(7, 4, generator=gen, requires_grad=True)
    g = torch.randn(2, 5, 4, generator=gen)
    lmatmul(a, b, mantissa_bits=k).backward(g)
    with torch.no_grad():
        want_a = lmatmul(g, b.mT, mantissa_bits=k)
        # b is shared over the batch: its gradient sums the per-batch L-Matmuls.
        want_b = lmatmul(a.mT, g, mantissa_bits=k).sum(0)
    assert _bits_equal(a.grad, want_a)
    assert torch.allclose(b.grad, want_b, rtol=1e-6, atol=1e-6)


def test_exact_backward_matches_torch():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(6, 9, generator=gen, requires_grad=True)
    b = torch.randn(9, 3, generator=gen, requires_grad=True)
    g = torch.randn(6, 3, generator=gen)
    lmatmul(a, b, exact_backward=True).backward(g)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (a2 @ b2).backward(g)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_lmul_gradients():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(4, 6, generator=gen, requires_grad=True)
    b = torch.randn(6, generator=gen, requires_grad=True)
    g = torch.randn(4, 6, generator=gen)
    lmul(a, b, mantissa_bits=4).backward(g)
    with torch.no_grad():
        assert _bits_equal(a.grad, lmul(g, b.expand(4, 6), mantissa_bits=4))
        torch.testing.assert_close(b.grad, lmul(g, a, mantissa_bits=4).sum(0))
    a.grad = b.grad = None
    lmul(a, b, exact_backward=True).backward(g)
    torch.testing.assert_close(a.grad, g * b.detach())
    torch.testing.assert_close(b.grad, (g * a.detach()).sum(0))


def test_forward_slope_within_a_binade():
    # Inside a binade and without a mantissa carry, L-Mul(a, x) = (1 + a_m + x_m + 2^-l) 2^(e_a+e_x)
    # is linear in a with slope 2^e_x (= 1 for x in [1, 2)): finite differences confirm it.
    x = torch.tensor([1.1, 1.2])
    a = torch.tensor([1.3, 1.05])
    eps = 2.0**-10
    fd = (lmul(a + eps, x) - lmul(a, x)) / eps
    assert torch.equal(fd, torch.ones(2))
