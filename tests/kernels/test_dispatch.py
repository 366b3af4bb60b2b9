"""The per-family ISA dispatcher (mulfree.kernels.dispatch): the choice rule on injected
timings, the interleaved measurement, the disk cache (round trip, corruption, another key), the
override precedence, that calls run the chosen level, and MULFREE_REQUIRE_C. No timed
assertions: every speed here is injected (real speeds live in benchmarks/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import _core, dispatch
from mulfree.kernels.dispatch import Family, choose, measure

ROOT = Path(__file__).resolve().parents[2]
needs_simd = pytest.mark.skipif(
    not kernels.available() or "avx2" not in kernels.available_isas(),
    reason="needs the compiled core on a CPU with AVX2",
)


# --- the rule --------------------------------------------------------------------------------
def test_choose_keeps_the_higher_level_unless_a_lower_one_is_clearly_faster():
    same = [1.0, 1.02, 0.98, 1.0, 1.01]
    assert choose({"avx2": same, "avx512": same}) == "avx512"
    assert choose({"avx2": [0.97] * 5, "avx512": [1.0] * 5}) == "avx512"  # within the margin
    assert choose({"avx2": [0.8] * 5, "avx512": [1.0] * 5}) == "avx2"
    assert choose({"avx2": [1.3] * 5, "avx512": [1.0] * 5}) == "avx512"
    assert choose({"avx512": [1.0]}) == "avx512"


def test_choose_is_robust_to_outlier_rounds_and_drift():
    # two rounds where the faster level was descheduled: the paired median ignores them
    avx2 = [0.7, 0.7, 5.0, 0.7, 9.0, 0.7, 0.7]
    avx512 = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert choose({"avx2": avx2, "avx512": avx512}) == "avx2"
    # the machine slows down 3x halfway: both levels see it, the ratio does not change
    drift = [1, 1, 1, 3, 3, 3, 3]
    assert choose({"avx2": [0.9 * d for d in drift], "avx512": drift}) == "avx2"
    assert choose({"avx2": [0.99 * d for d in drift], "avx512": drift}) == "avx512"


def test_choose_walks_down_from_the_highest_level():
    t = {"scalar": [0.95] * 3, "avx2": [0.8] * 3, "avx512": [1.0] * 3}
    assert choose(t) == "avx2"  # scalar is not clearly faster than avx2
    t["scalar"] = [0.5] * 3
    assert choose(t) == "scalar"
    assert choose(t, margin=0.6) == "avx512"


def test_disturbed_rule_on_fake_load_and_samples():
    quiet = {"avx2": [0.9, 0.91, 0.89, 0.9, 0.9], "avx512": [1.0] * 5}
    assert dispatch.disturbed(quiet, load=0.5, cores=2) is None
    assert dispatch.disturbed(quiet, load=None, cores=2) is None  # no load average: spread only
    assert dispatch.disturbed(quiet, load=2.0, cores=2) is None  # at the core count, not above
    assert "load 2.50 > 2 cores" in dispatch.disturbed(quiet, load=2.5, cores=2)
    # a steady 3x slowdown both levels see leaves the paired ratios (and the spread) alone
    drift = [1, 1, 3, 3, 3]
    steady = {"avx2": [0.9 * d for d in drift], "avx512": drift}
    assert dispatch.disturbed(steady, load=0.5, cores=2) is None
    # the rounds disagree: sometimes avx2 wins by 30 %, sometimes avx512 does
    noisy = {"avx2": [0.7, 1.3, 0.7, 1.3, 1.0], "avx512": [1.0] * 5}
    why = dispatch.disturbed(noisy, load=0.5, cores=2)
    assert why is not None and why.startswith("avx2/avx512 spread")
    assert dispatch.disturbed(noisy, load=0.5, cores=2, max_spread=1.0) is None
    # as wide, but every quartile says avx2 wins by more than the margin: cached
    clear = {"avx2": [0.5, 0.8, 0.5, 0.8, 0.6], "avx512": [1.0] * 5}
    assert dispatch.ratio_spread(clear["avx2"], clear["avx512"]) > dispatch.MAX_SPREAD
    assert dispatch.disturbed(clear, load=0.5, cores=2) is None
    assert dispatch.ratio_spread([1.0, 2.0], [1.0, 1.0]) == 0.0  # too few rounds to judge


@needs_simd
def test_busy_measurement_is_kept_in_process_only(tuner, monkeypatch):
    monkeypatch.setattr(dispatch, "load_average", lambda: 64.0)
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert tuner == ["ternary_b1"]  # measured once in this process
    entry = kernels.isa_report(measure=False)["families"]["ternary_b1"]
    assert entry["source"].startswith("measured, not cached (load 64.00 >")
    assert entry["load"] == 64.0
    assert "not cached (load 64.00 >" in kernels.isa_summary(measure=False)
    assert not _cache_file().exists()
    dispatch.reset()  # a new process on a quiet machine measures again and caches, with its load
    monkeypatch.setattr(dispatch, "load_average", lambda: 0.25)
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert tuner == ["ternary_b1", "ternary_b1"]
    stored = json.loads(_cache_file().read_text())["families"]["ternary_b1"]
    assert stored["load"] == 0.25 and "source" not in stored


def test_measure_interleaves_and_respects_the_budget():
    calls = []

    def sample(name):
        calls.append(name)
        return {"avx2": 1.0, "avx512": 2.0}[name]

    out = measure(["avx2", "avx512"], sample, rounds=4, min_rounds=2, budget_s=1e9)
    assert calls == ["avx2", "avx512", "avx512", "avx2"] * 2  # reversed every other round
    assert out == {"avx2": [1.0] * 4, "avx512": [2.0] * 4}
    now = iter(range(100))
    out = measure(["avx2", "avx512"], lambda n: 1.0, rounds=9, min_rounds=3, budget_s=0.5,
                  clock=lambda: next(now))  # fmt: skip
    assert len(out["avx2"]) == len(out["avx512"]) == 3


# --- choice + cache with injected timings ---------------------------------------------------
FAST = {"scalar": [0.5] * 5, "avx2": [1.0] * 5}  # injected: scalar clearly faster


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """A clean dispatcher on a private cache dir, with TERNARY_B1's candidates set to
    scalar/avx2 (levels every AVX2 CPU runs; both give the same bits) and measurements
    injected. Yields a list of the families measured."""
    monkeypatch.setenv("MULFREE_CACHE", str(tmp_path))
    monkeypatch.setattr(_core, "_forced", None)
    monkeypatch.setitem(dispatch.FAMILIES, "ternary_b1", Family("test", "-", ("scalar", "avx2")))
    measured = []

    def fake(family):
        measured.append(family)
        return {k: list(v) for k, v in FAST.items()}

    monkeypatch.setattr(dispatch, "measure_family", fake)
    monkeypatch.setattr(dispatch, "load_average", lambda: 0.0)  # a quiet machine unless a test says
    dispatch.reset()
    yield measured
    dispatch.reset()  # later tests resolve again from the real cache


def _cache_file():
    return dispatch.cache_path(dispatch.cache_key())


@needs_simd
def test_measured_choice_is_cached_in_process_and_on_disk(tuner):
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert tuner == ["ternary_b1"]  # measured once
    data = json.loads(_cache_file().read_text())
    assert data["key"] == dispatch.cache_key()
    assert data["families"]["ternary_b1"]["level"] == "scalar"
    assert data["families"]["ternary_b1"]["median_us"] == {"scalar": 5e5, "avx2": 1e6}
    dispatch.reset()  # a new process: read from disk, no measurement
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert tuner == ["ternary_b1"]
    assert kernels.isa_report(measure=False)["families"]["ternary_b1"]["source"] == "cache"
    assert not list(_cache_file().parent.glob("*.tmp"))  # the atomic write left no temp file


@needs_simd
@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": "other"}', "\x00\xff", "FOREIGN_KEY", "BAD_LEVEL", "OLD"],
)
def test_broken_or_foreign_cache_is_ignored_and_rewritten(tuner, content):
    key = dispatch.cache_key()
    good = {"format": dispatch.FORMAT, "version": dispatch.VERSION, "key": key,
            "families": {"ternary_b1": {"level": "avx2"}}}  # fmt: skip
    if content == "FOREIGN_KEY":
        content = json.dumps({**good, "key": {**key, "core": "another build"}})
    elif content == "BAD_LEVEL":
        content = json.dumps({**good, "families": {"ternary_b1": {"level": "avx1024"}}})
    elif content == "OLD":
        content = json.dumps({**good, "version": dispatch.VERSION - 1})
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, errors="surrogateescape")
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"  # measured, not the file's avx2
    assert tuner == ["ternary_b1"]
    data = json.loads(path.read_text())
    assert data["key"] == key and data["families"]["ternary_b1"]["level"] == "scalar"


@needs_simd
def test_a_valid_cache_entry_is_used_without_measuring(tuner):
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": dispatch.FORMAT, "version": dispatch.VERSION,
                                "key": dispatch.cache_key(),
                                "families": {"ternary_b1": {"level": "avx2"}}}))  # fmt: skip
    assert kernels.resolve_isa(None, "ternary_b1") == "avx2"
    assert tuner == []


@needs_simd
def test_unwritable_cache_dir_keeps_the_choice_in_process(tuner, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MULFREE_CACHE", str(blocker / "sub"))  # a path under a regular file
    dispatch.reset()
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert kernels.resolve_isa(None, "ternary_b1") == "scalar"
    assert tuner == ["ternary_b1"]


@needs_simd
def test_override_precedence(tuner):
    fam = "ternary_b1"
    assert kernels.resolve_isa(None, fam) == "scalar"  # auto: the measured level
    with kernels.use_isa("avx2"):  # set_isa / use_isa (and MULFREE_ISA, which sets the same)
        assert kernels.resolve_isa(None, fam) == "avx2"
        assert kernels.resolve_isa("scalar", fam) == "scalar"  # isa= beats set_isa
        assert kernels.resolve_isa("auto", fam) == "scalar"  # explicit auto: measured
        assert kernels.isa_report(measure=False)["families"][fam]["used"] == "avx2"
    with kernels.use_isa("torch"):
        assert kernels.resolve_isa(None, fam) == "torch"
    assert kernels.resolve_isa(None) == kernels.isa_max()  # no family: the best level


@needs_simd
def test_env_override_wins_over_measurement_and_measures_nothing(tmp_path):
    code = (
        "from mulfree import kernels\n"
        "from mulfree.kernels import dispatch\n"
        "dispatch.measure_family = None  # any measurement would fail\n"
        "print([kernels.resolve_isa(None, f) for f in dispatch.FAMILIES])\n"
        "print(kernels.resolve_isa('auto', 'decode_stages'))\n"
    )
    env = {**os.environ, "MULFREE_ISA": "avx2", "MULFREE_CACHE": str(tmp_path)}
    env.pop("MULFREE_REQUIRE_C", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(["avx2"] * len(dispatch.FAMILIES))
    assert lines[1] == "avx2"  # decode_stages has one candidate: nothing measured for it
    assert not list(tmp_path.iterdir())


class _Recorder:
    """Wraps the compiled core and records the ISA argument of each kernel call."""

    def __init__(self, C):
        self.C, self.seen = C, []

    def __getattr__(self, name):
        f = getattr(self.C, name)
        pos = {"tq2_linear": 10, "lmul_ew": 7, "lmatmul_f32": 9, "dec_mlgru": 14, "dec_glu": 6}
        if name not in pos:
            return f

        def call(*args):
            self.seen.append((name, args[pos[name]]))
            return f(*args)

        return call


@needs_simd
def test_calls_run_the_measured_level(tuner, monkeypatch):
    from mulfree.lmul import lmatmul, lmul
    from mulfree.ternary.packed_linear import PackedTernaryLinear, ternary_linear_torch

    for fam in ("lmul_ew", "lmatmul", "ternary_batch"):
        monkeypatch.setitem(dispatch.FAMILIES, fam, Family("test", "-", ("scalar", "avx2")))
    rec = _Recorder(_core.core())
    monkeypatch.setattr(_core, "_C", rec)
    torch.manual_seed(0)
    layer = PackedTernaryLinear.from_float(torch.randn(64, 48))
    for m in (1, 3):
        x = torch.randn(m, 48)
        y = layer(x)
        assert torch.equal(y, ternary_linear_torch(x, layer.packed()))  # same bits at any level
    a, b = torch.randn(4, 8), torch.randn(8, 5)
    lmul(a, a)
    lmatmul(a, b)
    levels = {name: lv for name, lv in rec.seen}
    assert levels == {"tq2_linear": 0, "lmul_ew": 0, "lmatmul_f32": 0}
    assert sorted(tuner) == ["lmatmul", "lmul_ew", "ternary_b1", "ternary_batch"]


@needs_simd
def test_decoder_runs_the_measured_levels(tuner, monkeypatch):
    from mulfree.engine.model import PackedHGRNBitForCausalLM
    from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

    monkeypatch.setitem(dispatch.FAMILIES, "ternary_batch", Family("t", "-", ("scalar", "avx2")))
    cfg = HGRNBitConfig(hidden_size=64, num_hidden_layers=1, vocab_size=64, eos_token_id=0,
                        bos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    packed = PackedHGRNBitForCausalLM.from_model(HGRNBitForCausalLM(cfg).eval())
    rec = _Recorder(_core.core())
    monkeypatch.setattr(_core, "_C", rec)
    dec = packed.fused_decoder(threads=1)
    assert dec.isas == {"ternary_b1": "scalar", "ternary_batch": "scalar",
                        "decode_stages": "avx2"}  # fmt: skip
    dec.prefill(torch.tensor([[1, 2, 3]]))
    dec.step([4])
    seen = set(rec.seen)
    assert ("tq2_linear", 0) in seen and ("dec_mlgru", 1) in seen and ("dec_glu", 1) in seen
    assert ("tq2_linear", 1) not in seen and ("tq2_linear", 2) not in seen


# --- the real probes (no timing asserted) ------------------------------------------------------
@needs_simd
def test_decode_stage_candidates_match_the_variants_in_csrc():
    """dec_mlgru / dec_glu return the level they ran: the distinct ones are the candidates."""
    C = kernels.core()
    gu, o = torch.randn(1, 16), torch.empty(1, 8)
    used = {C.dec_glu(gu.data_ptr(), 1, 8, o.data_ptr(), 1e-6, o.data_ptr(), kernels.ISA_LEVELS[n])
            for n in kernels.available_isas()[2:]}  # fmt: skip
    assert sorted(
        kernels.ISA_LEVELS[n] for n in dispatch.FAMILIES["decode_stages"].levels
    ) == sorted(used)


@needs_simd
@pytest.mark.parametrize("family", list(dispatch.FAMILIES))
def test_real_probe_runs_every_candidate(family):
    out = dispatch.measure_family(family)
    assert set(out) <= set(dispatch.FAMILIES[family].levels)
    assert len({len(v) for v in out.values()}) == 1  # rounds aligned
    assert all(t > 0 for v in out.values() for t in v)


@needs_simd
def test_isa_report_and_summary():
    r = kernels.isa_report()
    assert set(r["families"]) == set(dispatch.FAMILIES)
    for fam, e in r["families"].items():
        assert e["level"] in dispatch.FAMILIES[fam].levels
        # "measured, not cached (why)" when this run's machine is busy (dispatch.disturbed)
        assert e["source"].startswith(("measured", "cache", "only candidate"))
    line = kernels.isa_summary()
    assert all(f"{fam}=" in line for fam in dispatch.FAMILIES)


# --- MULFREE_REQUIRE_C -------------------------------------------------------------------------
def test_require_c_makes_a_missing_core_an_error(monkeypatch):
    monkeypatch.setattr(_core, "_C", None)
    monkeypatch.setattr(_core, "_loaded", True)
    monkeypatch.setattr(_core, "_load_error", "ImportError: simulated")
    monkeypatch.setattr(_core, "_best", None)
    monkeypatch.setattr(_core, "_forced", None)
    monkeypatch.setenv("MULFREE_REQUIRE_C", "1")
    for f in (kernels.available, kernels.core, kernels.isa_max, kernels.resolve_isa):
        with pytest.raises(MulfreeError, match="MULFREE_REQUIRE_C=1.*simulated"):
            f()
    assert kernels.resolve_isa("torch") == "torch"  # asking for torch needs no core
    assert kernels.load_error() == "ImportError: simulated"
    monkeypatch.delenv("MULFREE_REQUIRE_C")
    assert not kernels.available()


def test_require_c_fails_the_kernel_tests_instead_of_skipping(tmp_path):
    env = {**os.environ, "MULFREE_DISABLE_C": "1", "MULFREE_REQUIRE_C": "1"}
    env.pop("MULFREE_ISA", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "tests/kernels/test_ternary_kernels.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout
    assert "MULFREE_REQUIRE_C=1" in out.stdout + out.stderr
