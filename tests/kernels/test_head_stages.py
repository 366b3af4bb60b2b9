"""The compiled int4 head stage (csrc/mf_head.c, tfm_head_i4) equals its NumPy twin
(engine/head_ref.py) bit for bit at every ISA level this CPU has (tolerance EXACT: exact integer
group sums, then the same float32 operations in the same order). Shapes leave a vector tail of
groups (G % 8 != 0), a D tail inside the last group, rows for two threads; any nibble code
(0..15: a file may hold code 0 = -8); the twin is the int4 product QuantizedHead decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mulfree import kernels
from mulfree.engine import head_ref as ref
from mulfree.kernels import ISA_LEVELS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

LEVELS = [i for i in kernels.available_isas() if i in ISA_LEVELS] if kernels.available() else []
f32 = np.float32


def _core():
    from mulfree.kernels._core import core

    return core()


def _p(a) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


def _table(V, D, seed):
    rng = np.random.default_rng(seed)
    G = -(-D // 32)
    codes = rng.integers(0, 256, (V, 16 * G)).astype(np.uint8)
    step = torch.from_numpy(rng.standard_normal((V, G)).astype(f32) * 1e-2)
    return codes, step.to(torch.bfloat16).float().numpy()  # bf16 values, as quantize_head's


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("V,D,B,threads", [(37, 300, 3, 1), (9, 64, 1, 1), (8203, 512, 2, 2),
                                           (50, 2560, 1, 1), (5, 20, 2, 1)])  # fmt: skip
def test_head_i4_equals_twin(isa, V, D, B, threads):
    C = _core()
    codes, step = _table(V, D, V + D)
    st = ref.bf16_steps(step)
    x = (np.random.default_rng(D).standard_normal((B, D)) * 3.0).astype(f32)
    if B > 1:
        x[1] = 0.0  # an all-zero row: absmax floor
    out = np.zeros((B, V), dtype=f32)
    used = C.tfm_head_i4(_p(x), B, D, _p(codes), V, _p(st), _p(out), threads, ISA_LEVELS[isa])
    assert used <= ISA_LEVELS[isa]
    want = ref.head_i4(x, codes, st)
    diff = np.flatnonzero(out.view(np.uint32) != want.view(np.uint32))
    assert diff.size == 0, f"{isa}: {diff.size} of {out.size} differ, first at {diff[:5]}"


def test_head_i4_is_the_int4_product():
    """The twin is QuantizedHead's int4 head: within its activation quantization step of the
    float product with the decoded table (engine.bitnet_model's layout)."""
    from mulfree.engine.bitnet_model import QuantizedHead

    w = torch.randn(60, 100)
    head = QuantizedHead.from_float(w, "int4")
    x = np.random.default_rng(3).standard_normal((2, 100)).astype(f32)
    got = ref.head_i4(x, head.weight_int4.numpy(), ref.bf16_steps(head.weight_step.numpy()))
    table = head.dequantize().double().numpy()  # [V, D]
    want = x.astype(np.float64) @ table.T
    # each activation is off by at most half its step (absmax / 127 / 2): summed over a row
    bound = np.abs(table).sum(1)[None] * np.abs(x).max(1, keepdims=True) / 127 / 2 + 1e-5
    assert (np.abs(got - want) <= bound).all()
    assert np.abs(got - want).max() > 0  # the quantizer is really in the path


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("V,D,B,threads", [(37, 300, 3, 1), (9, 64, 1, 1), (8203, 20, 2, 2),
                                           (6, 13, 1, 1)])  # fmt: skip
def test_head_bf16_equals_twin(isa, V, D, B, threads):
    """Rows past a block of 4, a D tail past 8 entries, two threads; signed zeros and a huge
    entry (an inf product) among the weights."""
    C = _core()
    rng = np.random.default_rng(V * D)
    w = torch.from_numpy(rng.standard_normal((V, D)).astype(f32)).to(torch.bfloat16)
    w[0, :3] = torch.tensor([0.0, -0.0, 3e38])
    bits = w.view(torch.int16).numpy().view(np.uint16)
    x = (rng.standard_normal((B, D)) * 3.0).astype(f32)
    out = np.zeros((B, V), dtype=f32)
    used = C.tfm_head_bf16(_p(x), B, D, _p(bits), V, _p(out), threads, ISA_LEVELS[isa])
    assert used <= ISA_LEVELS[isa]
    want = ref.head_bf16(x, bits)
    diff = np.flatnonzero(out.view(np.uint32) != want.view(np.uint32))
    assert diff.size == 0, f"{isa}: {diff.size} of {out.size} differ, first at {diff[:5]}"


def test_head_bf16_is_the_float_product():
    from tests._tolerances import FP32_REASSOC

    w = torch.randn(40, 100).to(torch.bfloat16)
    x = np.random.default_rng(4).standard_normal((2, 100)).astype(f32)
    got = ref.head_bf16(x, w.view(torch.int16).numpy().view(np.uint16))
    want = x.astype(np.float64) @ w.double().numpy().T
    np.testing.assert_allclose(got, want, **FP32_REASSOC.kw())


def test_bf16_steps_refuses_other_floats():
    assert ref.bf16_steps(np.array([[0.5, 1.0 + 2**-12]], dtype=f32)) is None
    np.testing.assert_array_equal(ref.bf16_steps(np.array([[0.5, -2.0]], dtype=f32)),
                                  np.array([[0x3F00, 0xC000]], dtype=np.uint16))  # fmt: skip


def test_bad_arguments_raise():
    C = _core()
    x = np.zeros((1, 32), dtype=f32)
    with pytest.raises(ValueError, match="tfm_head_i4"):
        C.tfm_head_i4(_p(x), 1, 0, _p(x), 1, _p(x), _p(x), 1, -1)  # D = 0
    with pytest.raises(ValueError, match="tfm_head_i4"):
        C.tfm_head_i4(_p(x), 1, 32, 0, 1, _p(x), _p(x), 1, -1)  # no table
    with pytest.raises(ValueError, match="tfm_head_bf16"):
        C.tfm_head_bf16(_p(x), 1, 32, 0, 1, _p(x), 1, -1)  # no table
