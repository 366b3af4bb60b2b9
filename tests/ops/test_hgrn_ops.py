"""chunk_hgrn (parallel scan) vs naive_recurrent_hgrn (the spec loop): outputs and gradients."""

import pytest
import torch
from tests._tolerances import SCAN

from mulfree.ops.hgrn import chunk_hgrn, naive_recurrent_hgrn

# The doubling scan re-associates the same float32 products and sums as the loop; with gates in
# [0, 1] and inputs of size ~1 the difference is a few ulps times log2(T).
SCAN_RTOL, SCAN_ATOL = SCAN.rtol, SCAN.atol

CASES = [
    # (leading dims, T, D)
    pytest.param((2,), 1, 7, id="B2-T1-D7"),
    pytest.param((2,), 2, 3, id="B2-T2-D3"),
    pytest.param((1,), 63, 500, id="B1-T63-D500"),
    pytest.param((2,), 64, 33, id="B2-T64-D33"),
    pytest.param((3,), 65, 17, id="B3-T65-D17"),
    pytest.param((2, 3), 200, 5, id="B2xH3-T200-D5"),
    pytest.param((1,), 300, 1, id="B1-T300-D1"),
]


def _inputs(lead, T, D, seed, with_h0):
    g = torch.Generator().manual_seed(seed)
    f = torch.sigmoid(torch.randn(*lead, T, D, generator=g) * 2)
    x = (1 - f) * torch.randn(*lead, T, D, generator=g)
    h0 = torch.randn(*lead, D, generator=g) if with_h0 else None
    return x, f, h0


def _run(fn, x, f, h0, do, dht):
    x = x.clone().requires_grad_()
    f = f.clone().requires_grad_()
    h0 = h0.clone().requires_grad_() if h0 is not None else None
    o, ht = fn(x, f, h0, output_final_state=True)
    ((o * do).sum() + (ht * dht).sum()).backward()
    return o, ht, x.grad, f.grad, (h0.grad if h0 is not None else None)


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=none", "h0=given"])
@pytest.mark.parametrize("lead,T,D", CASES)
def test_chunk_matches_naive_outputs_and_grads(lead, T, D, with_h0):
    x, f, h0 = _inputs(lead, T, D, seed=T * 1000 + D, with_h0=with_h0)
    do = torch.randn_like(x)
    dht = torch.randn(*lead, D)
    ref = _run(naive_recurrent_hgrn, x, f, h0, do, dht)
    got = _run(chunk_hgrn, x, f, h0, do, dht)
    for name, r, g in zip(["o", "ht", "dx", "df", "dh0"], ref, got, strict=True):
        if r is None:
            assert g is None, name
            continue
        torch.testing.assert_close(
            g, r, rtol=SCAN_RTOL, atol=SCAN_ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_final_state_equals_last_output_and_chaining():
    # Running two halves with the state carried over equals running the whole sequence.
    x, f, _ = _inputs((2,), 130, 9, seed=1, with_h0=False)
    o_full, ht_full = chunk_hgrn(x, f, output_final_state=True)
    o1, h1 = chunk_hgrn(x[:, :77], f[:, :77], output_final_state=True)
    o2, h2 = chunk_hgrn(x[:, 77:], f[:, 77:], initial_state=h1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, rtol=SCAN_RTOL, atol=SCAN_ATOL)
    torch.testing.assert_close(h2, ht_full, rtol=SCAN_RTOL, atol=SCAN_ATOL)
    torch.testing.assert_close(ht_full, o_full[:, -1], rtol=0, atol=0)


def test_bf16_inputs_keep_dtype_and_float32_state():
    x, f, _ = _inputs((1,), 40, 8, seed=2, with_h0=False)
    o, ht = chunk_hgrn(x.bfloat16(), f.bfloat16(), output_final_state=True)
    ref, ref_ht = naive_recurrent_hgrn(x.bfloat16(), f.bfloat16(), output_final_state=True)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    torch.testing.assert_close(ht, ref_ht, rtol=SCAN_RTOL, atol=SCAN_ATOL)
    torch.testing.assert_close(o, ref, rtol=0, atol=0)


def test_tiny_gates_underflow_without_nan():
    # Gates that are exactly 0 or 1e-30 make gate products underflow; the result must stay finite.
    x = torch.randn(1, 100, 4)
    f = torch.full((1, 100, 4), 1e-30)
    f[:, ::7] = 0.0
    o, _ = chunk_hgrn(x, f)
    ref, _ = naive_recurrent_hgrn(x, f)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, ref, rtol=SCAN_RTOL, atol=SCAN_ATOL)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        chunk_hgrn(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="initial_state"):
        chunk_hgrn(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), initial_state=torch.zeros(2, 4))
