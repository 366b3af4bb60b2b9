"""The AVX-512 ternary kernels, bit-exact against the scalar spec, on CPUs without AVX-512.

The AVX-512 paths cannot run natively on an AVX2-only CPU, and a CPU runs only one of the two
AVX-512 variants natively (VBMI on 256-bit vectors when it has VBMI, else the 512-bit one), so
this test compiles csrc/mf_ternary.c against SIMDe's emulation of the AVX-512 intrinsics (apt:
libsimde-dev) and compares int32 accumulators and outputs of both variants, through the real
driver at 1 and 2 threads, with the scalar kernel (atol=0) at odd shapes, batches, k-chunks and
extreme sums. On an AVX-512 CPU the native variant is covered by test_ternary_kernels.py too.
"""

import ctypes
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIMDE = Path("/usr/include/simde/x86/avx512.h")
SHIM = """#include_next <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
"""


def _have_avx2() -> bool:
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


needs_simde = pytest.mark.skipif(
    platform.machine() != "x86_64" or not SIMDE.exists() or shutil.which("gcc") is None
    or not _have_avx2(),
    reason="needs x86-64 with AVX2, gcc and SIMDe headers (libsimde-dev)",
)  # fmt: skip


def build_on_simde(harness: Path, tmp_path: Path) -> ctypes.CDLL:
    """Compile a harness that #includes csrc/*.c with AVX-512 intrinsics emulated by SIMDe."""
    (tmp_path / "immintrin.h").write_text(SHIM)
    so = tmp_path / (harness.stem + ".so")
    cmd = [
        "gcc", "-O1", "-std=gnu11", "-mavx2", "-fopenmp", "-fPIC", "-shared",
        # plain functions: the intrinsics come from SIMDe, whose vectors are not registers
        "-DMF_TARGET_AVX512=", "-DMF_TARGET_VBMI=", "-DMF_KEEP512(v)=", "-DMF_KEEP_Y(v)=", "-DMF_KEEP_Z(v)=",
        f"-I{tmp_path}", f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}",
        str(harness), str(Path(__file__).with_name("simde_harness_stub.c")), "-o", str(so),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return ctypes.CDLL(str(so))


@needs_simde
def test_avx512_kernel_equals_scalar_under_simde(tmp_path, capfd):
    lib = build_on_simde(Path(__file__).with_name("avx512_emulated_harness.c"), tmp_path)
    fails = lib.mf_avx512_emulated_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 12 * 2 * 2, report  # shapes x variants x thread counts
