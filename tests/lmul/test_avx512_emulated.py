"""The AVX-512 L-Mul paths (elementwise, L-Matmul fast, no-underflow and full routes), bit-exact against the
scalar spec on CPUs without AVX-512: csrc/mf_lmul_ew.c and mf_lmatmul.c are compiled against SIMDe's emulation of the
AVX-512 intrinsics (apt: libsimde-dev), as tests/kernels/test_avx512_emulated.py does for the
ternary kernel. On an AVX-512 CPU the native path is covered by test_kernels.py as well."""

from pathlib import Path

from tests.kernels.test_avx512_emulated import build_on_simde, needs_simde


@needs_simde
def test_avx512_lmul_equals_scalar_under_simde(tmp_path, capfd):
    lib = build_on_simde(Path(__file__).with_name("avx512_lmul_harness.c"), tmp_path)
    fails = lib.mf_lmul_avx512_emulated_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 18 + 5 * 4 * 3, report
    for route in ("fast", "fast-nounder", "full"):  # every route exercised
        assert f"route={route}:" in report, route
