"""The L-Mul kernels as torch custom ops (mulfree.kernels.lmul): checked shapes, fake
implementations (opcheck), and one cost formula whichever implementation runs — the compiled
op, or the torch twin (ISA "torch", or an option the kernel lacks) priced as the op. The counts
are the ones `lmul` / `lmatmul` declared by hand before the ops existed: one L-Mul per product
at the operands' width, K - 1 adds at the accumulator's width per L-Matmul output."""

from __future__ import annotations

import pytest
import torch

from mulfree import energy, kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import ISA_LEVELS
from mulfree.kernels import lmul as KL
from mulfree.lmul import lmatmul, lmul

needs_core = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")
ops = torch.ops.mulfree
PATHS = ["compiled", "torch"]


def _isa(path):
    return kernels.use_isa(None if path == "compiled" else "torch")


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_lmul_ew(dtype):  # (opcheck's own schema test does arithmetic fp8 lacks)
    a, b = torch.randn(3, 7).to(dtype), torch.randn(3, 7).to(dtype)
    out = torch.empty(3, 7, dtype=dtype)
    torch.library.opcheck(ops.lmul_ew.default, (a, b, out, 3, 0, ISA_LEVELS["scalar"], 1))


@needs_core
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_lmatmul_f32(dtype):
    a, b = torch.randn(2, 3, 5).to(dtype), torch.randn(2, 5, 4).to(dtype)
    out = torch.empty(2, 3, 4)
    torch.library.opcheck(ops.lmatmul_f32.default, (a, b, out, 3, 0, ISA_LEVELS["scalar"], 1, -1))


@needs_core
def test_bad_operands_are_one_error():
    a = torch.randn(3, 7)
    lv = ISA_LEVELS["scalar"]
    with pytest.raises(MulfreeError, match="one shape"):
        ops.lmul_ew(a, torch.randn(1, 7), torch.empty(3, 7), 3, 0, lv, 1)
    with pytest.raises(MulfreeError, match="share an L-Mul format"):
        ops.lmul_ew(a, a.double(), torch.empty(3, 7), 3, 0, lv, 1)
    with pytest.raises(MulfreeError, match="mode must be"):
        ops.lmul_ew(a, a, torch.empty(3, 7), 3, 5, lv, 1)
    with pytest.raises(MulfreeError, match="need a"):
        ops.lmatmul_f32(a[None], a[None], torch.empty(1, 3, 3), 3, 0, lv, 1, -1)
    with pytest.raises(MulfreeError, match="int mode"):
        b = torch.randn(1, 3, 7).bfloat16()
        ops.lmatmul_f32(b, b.mT.contiguous(), torch.empty(1, 3, 3), 3, 1, lv, 1, -1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,bits", [(torch.float32, 32), (torch.bfloat16, 16),
                                        (torch.float8_e5m2, 8)])  # fmt: skip
def test_lmul_counts_equal_the_declared_counts(path, dtype, bits):
    if path == "compiled" and not kernels.available():
        pytest.skip("needs the compiled core")
    a, b = torch.randn(4, 5).to(dtype), torch.randn(1, 5).to(dtype)  # broadcast b
    with _isa(path), energy.EnergyCounter() as c:
        out = lmul(a, b, mantissa_bits=2)
    assert c.counts[("lmul", bits)] == out.numel() == 20
    assert sum(c.counts.values()) == 20  # nothing else: no float multiply, no integer op
    assert not c.unknown
    with _isa("torch" if path == "compiled" else "compiled" if kernels.available() else "torch"):
        other = lmul(a, b, mantissa_bits=2)
    assert torch.equal(out.view(torch.uint8), other.view(torch.uint8))  # the twins agree


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,acc,bits,acc_bits", [
    (torch.float32, torch.float32, 32, 32), (torch.bfloat16, torch.float32, 16, 32),
    (torch.bfloat16, torch.bfloat16, 16, 16), (torch.float8_e4m3fn, torch.float32, 8, 32),
])  # fmt: skip
def test_lmatmul_counts_equal_the_declared_counts(path, dtype, acc, bits, acc_bits):
    if path == "compiled" and not kernels.available():
        pytest.skip("needs the compiled core")
    a, b = torch.randn(2, 3, 7).to(dtype), torch.randn(7, 5).to(dtype)
    with _isa(path), energy.EnergyCounter() as c:
        out = lmatmul(a, b, mantissa_bits=2, acc_dtype=acc)
    n_out = 2 * 3 * 5
    assert out.shape == (2, 3, 5) and out.dtype == acc
    assert c.counts[("lmul", bits)] == n_out * 7
    assert c.counts[("fp_add", acc_bits)] == n_out * 6
    assert c.total("fp_mul") == 0 and c.total("int_add") == 0 and not c.unknown


@needs_core
def test_the_compiled_lmatmul_runs_as_the_op_while_counting(monkeypatch):
    seen = []
    real = energy.EnergyCounter.count_op

    def spy(self, func, args, kwargs, out):
        seen.append(str(func.overloadpacket))
        return real(self, func, args, kwargs, out)

    monkeypatch.setattr(energy.EnergyCounter, "count_op", spy)
    a = torch.randn(3, 8)
    with energy.EnergyCounter():
        want = lmatmul(a, a.T, mantissa_bits=3)
    assert "mulfree.lmatmul_f32" in seen
    torch.testing.assert_close(lmatmul(a, a.T, mantissa_bits=3), want, atol=0, rtol=0)
    assert KL.FORMAT_IDS["bfloat16"] == 1 and KL.MODE_IDS["eq1"] == 1
