"""The AVX-512 VNNI int4 head (csrc/mf_head.c, tfm_head_i4) bit-exact against the scalar spec on
CPUs without AVX-512: compiled against SIMDe's emulation of the intrinsics (apt: libsimde-dev),
as tests/kernels/test_avx512_emulated.py does for the ternary kernels. On a CPU with AVX-512
VNNI the native variant is covered by test_head_stages.py too."""

from pathlib import Path

from tests.kernels.test_avx512_emulated import build_on_simde, needs_simde


@needs_simde
def test_avx512_vnni_head_equals_scalar_under_simde(tmp_path, capfd):
    lib = build_on_simde(Path(__file__).with_name("head_avx512_emulated_harness.c"), tmp_path)
    fails = lib.mf_head_avx512_emulated_check()
    report = capfd.readouterr().out
    assert fails == 0, report
    assert report.count(": ok") == 6 * 2, report  # shapes x thread counts
