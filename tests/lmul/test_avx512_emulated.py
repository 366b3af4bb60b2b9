"""The AVX-512 L-Mul paths (elementwise, L-Matmul fast and full routes), bit-exact against the
scalar spec on CPUs without AVX-512: csrc/mf_lmul.c is compiled against SIMDe's emulation of the
AVX-512 intrinsics (apt: libsimde-dev), as tests/kernels/test_avx512_emulated.py does for the
ternary kernel. On an AVX-512 CPU the native path is covered by test_kernels.py as well."""

import ctypes
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.kernels.test_avx512_emulated import SHIM, SIMDE, _have_avx2

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    platform.machine() != "x86_64"
    or not SIMDE.exists()
    or shutil.which("gcc") is None
    or not _have_avx2(),
    reason="needs x86-64 with AVX2, gcc and SIMDe headers (libsimde-dev)",
)
def test_avx512_lmul_equals_scalar_under_simde(tmp_path, capfd):
    (tmp_path / "immintrin.h").write_text(SHIM)
    so = tmp_path / "harness.so"
    cmd = [
        "gcc", "-O1", "-std=gnu11", "-mavx2", "-fopenmp", "-fPIC", "-shared",
        "-DMF_TARGET_AVX512=",  # plain functions: the intrinsics come from SIMDe
        f"-I{tmp_path}", f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}",
        str(Path(__file__).with_name("avx512_lmul_harness.c")), "-o", str(so),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    fails = ctypes.CDLL(str(so)).mf_lmul_avx512_emulated_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 18 + 36, report
    assert "route=fast" in report and "route=full" in report  # both routes exercised
