"""The compiled core's loader and dispatch: ISA forcing, thread counts, the slow-path warning."""

import os
import subprocess
import sys

import pytest
import torch

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import _core


def test_available_isas_are_ordered_and_include_torch():
    isas = kernels.available_isas()
    assert isas[0] == "torch"
    assert isas[1:] == [n for n in kernels.ISA_LEVELS if n in isas]
    assert kernels.isa_max() == isas[-1]


def test_resolve_and_force_isa(monkeypatch):
    monkeypatch.setattr(_core, "_forced", None)  # as without MULFREE_ISA (CI also forces it)
    assert kernels.resolve_isa("torch") == "torch"
    best = kernels.isa_max()
    assert kernels.resolve_isa("auto") == best
    with kernels.use_isa("torch"):
        assert kernels.resolve_isa() == "torch"
        assert kernels.resolve_isa("auto") == best  # an explicit argument wins
    assert kernels.resolve_isa() == best
    with pytest.raises(MulfreeError, match="unknown ISA"):
        kernels.resolve_isa("sse9")


@pytest.mark.skipif(not kernels.available(), reason="compiled core not built")
def test_unsupported_isa_is_an_error_not_a_silent_downgrade():
    if kernels.isa_max() == "avx512":
        pytest.skip("this CPU supports every level")
    with pytest.raises(MulfreeError, match="not supported by this CPU"):
        kernels.resolve_isa("avx512")


def test_threads_default_to_torch():
    assert kernels.resolve_threads() == torch.get_num_threads()
    assert kernels.resolve_threads(3) == 3
    with pytest.raises(MulfreeError):
        kernels.resolve_threads(0)


@pytest.mark.skipif(not kernels.available(), reason="compiled core not built")
def test_method_table_is_generated_from_csrc():
    C = kernels.core()
    for name in ("isa_max", "tq2_linear", "act_quant_i8", "tq2_pack", "tq1_to_tq2"):
        assert callable(getattr(C, name))
    assert C.isa_resolve(-1) == kernels.ISA_LEVELS[kernels.isa_max()]
    assert C.default_threads() >= 1
    with pytest.raises(TypeError, match="expected 1 arguments"):
        C.isa_resolve()


FALLBACK = r"""
import warnings
import torch
from mulfree import kernels
from mulfree.ternary.packed_linear import PackedTernaryLinear, ternary_linear_torch
assert not kernels.available() and "MULFREE_DISABLE_C" in kernels.load_error()
torch.manual_seed(0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    layer = PackedTernaryLinear.from_float(torch.randn(40, 70))  # packing warns (first use)
    x = torch.randn(3, 70)
    y1 = layer(x)
    y2 = layer(x)
slow = [w for w in caught if "SLOW pure-torch path" in str(w.message)]
assert len(slow) == 1, [str(w.message) for w in caught]
assert torch.equal(y1, y2)
assert torch.equal(y1, ternary_linear_torch(x, layer.packed()))
print("fallback-ok")
"""


def test_pure_torch_fallback_imports_works_and_warns_once():
    env = dict(os.environ, MULFREE_DISABLE_C="1")
    env.pop("MULFREE_ISA", None)
    env.pop("MULFREE_REQUIRE_C", None)  # this test is about the fallback itself
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "fallback-ok" in out.stdout


@pytest.mark.parametrize(
    "env,want",
    [({}, "100000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None), ({"GOMP_SPINCOUNT": "77"}, "77")],
    ids=["default", "user_policy_wins", "user_spincount_wins"],
)
def test_import_sets_a_short_openmp_spin_unless_the_user_chose(env, want):
    """`import mulfree` (before torch, as the CLIs do) bounds libgomp's idle spin (csrc/README.md,
    "Threads"); a user's OpenMP wait settings are left alone."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, mulfree; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    assert out == str(want)


def test_energy_nnz_cache_not_fooled_by_a_reused_address():
    # The counter's per-weight non-zero count is cached by address: a weight freed and another
    # one placed at the same address (same size, version 0) must get its own count.
    import gc

    from mulfree.kernels import ternary as K_

    buf = bytearray(b"\x55" * 256)  # 0x55 = four zero codes per byte
    a = torch.frombuffer(buf, dtype=torch.uint8)
    assert K_._nnz(a) == 0
    ptr = a.data_ptr()
    del a
    gc.collect()
    buf[:] = b"\x00" * 256  # four -1 codes per byte
    b = torch.frombuffer(buf, dtype=torch.uint8)
    assert b.data_ptr() == ptr and b._version == 0
    assert K_._nnz(b) == K_.tq2_nnz(b) == 1024
