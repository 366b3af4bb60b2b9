"""Gemma section: stored results (finished, partial, missing) -> tables, claims, commands."""

import re
from pathlib import Path

import pytest

from mulfree.errors import MulfreeError
from mulfree.report import gemma
from mulfree.report import verdict as V
from mulfree.report.common import Context
from tests.report.helpers import fixture_tree, write_eval

REPO = Path(__file__).resolve().parents[2]


def test_load_marks_partial_and_lists_missing(tmp_path):
    fixture_tree(tmp_path)
    runs, missing = gemma.load_runs(tmp_path / "gemma3-270m", gemma.ATTENTION_CONFIGS)
    by = {(r["label"], t): m for r in runs for t, m in r["tasks"].items()}
    assert by[("fp8_e5m2", "piqa")]["partial"] is True
    assert "partial" not in by[("fp32", "piqa")]
    assert ("lmul_full", "lambada") in missing and ("fp32", "arc_easy") in missing
    assert ("fp32", "lambada") not in missing


def test_partial_file_is_marked_even_without_the_flag(tmp_path):
    # A .json.partial is a run that did not finish, whatever its metrics say.
    write_eval(tmp_path, "fp32", "piqa", [1, 0, 1, 1], partial=True)
    p = tmp_path / "gemma3-270m" / "fp32" / "piqa.json.partial"
    p.write_text(p.read_text().replace('"partial": true', '"n_ok": 1'))
    runs, _ = gemma.load_runs(tmp_path / "gemma3-270m", ["fp32"], ["piqa"])
    assert runs[0]["tasks"]["piqa"]["partial"] is True


def test_finished_result_wins_over_partial(tmp_path):
    write_eval(tmp_path, "fp32", "piqa", [1, 0], partial=True)
    write_eval(tmp_path, "fp32", "piqa", [1, 1, 1])
    runs, _ = gemma.load_runs(tmp_path / "gemma3-270m", ["fp32"], ["piqa"])
    assert runs[0]["tasks"]["piqa"]["n"] == 3 and "partial" not in runs[0]["tasks"]["piqa"]


def test_mislabelled_result_is_an_error(tmp_path):
    path = write_eval(tmp_path, "fp32", "piqa", [1, 0])
    (tmp_path / "gemma3-270m" / "bf16").mkdir()
    path.rename(tmp_path / "gemma3-270m" / "bf16" / "piqa.json")
    with pytest.raises(MulfreeError, match="label is 'fp32', not 'bf16'"):
        gemma.load_runs(tmp_path / "gemma3-270m", ["bf16"], ["piqa"])


def test_claims_are_computed_from_paired_differences(tmp_path):
    fixture_tree(tmp_path)
    root = tmp_path / "gemma3-270m"
    runs, _ = gemma.load_runs(root, gemma.ATTENTION_CONFIGS)
    lin, _ = gemma.load_runs(root, gemma.LINEAR_CONFIGS)
    ref = [r for r in runs if r["label"] == "fp32"]
    rows = {r["comparison"]: r for r in gemma.claims(runs, ref + lin)}
    # lmul_k4 loses 30 of 60 correct answers and 0.5 nats per item: measured losses.
    k4 = rows["lmul_k4 − fp32"]
    assert k4["verdict"] == V.DIFFERS
    assert {d.label: d.word() for d in k4["diffs"]} == {"lambada acc": "worse",
                                                        "lambada ppl": "worse"}  # fmt: skip
    assert k4["diffs"][0].mean == pytest.approx(-0.30)
    assert rows["lmul_k3 − fp32"]["verdict"] == V.AGREES  # identical items
    assert rows["lmul_k3 − fp8_e5m2"]["verdict"] == V.AGREES
    assert rows["lmul_k4 − fp8_e4m3"]["verdict"] == V.DIFFERS
    assert rows["lmul_full − fp32"]["verdict"] == V.NOT_MEASURED  # no results at all
    assert rows["linear_k3 − fp32 (inference only)"]["verdict"] == V.AGREES


def test_section_says_what_is_missing_with_the_command(tmp_path):
    fixture_tree(tmp_path)
    s = gemma.section(Context(results=tmp_path, out=tmp_path, repo=None))
    line = next(x for x in s.body.splitlines() if x.startswith("- **Missing:** arc_easy"))
    assert "bash docs/results/gemma3-270m/run.sh report arc_easy fp32,bf16," in line
    assert line.endswith(" 100`.")  # the limit of the stored runs
    assert "- **Partial:** piqa for fp8_e5m2 (40 items so far" in s.body
    assert "| 100.0 ± 0.0 (40, partial) |" in s.body  # fp8_e5m2 piqa: its first 40 items
    assert {v["verdict"] for v in s.verdicts} <= {V.AGREES, V.DIFFERS, V.WITHIN, V.NOT_MEASURED}


def test_config_flags_match_run_sh():
    """The report's refresh runs exactly what docs/results/gemma3-270m/run.sh runs."""
    text = (REPO / gemma.RUN_SH).read_text()
    in_script = dict(re.findall(r'^\s*(\w+)\)\s+echo "([^"]+)"', text, re.M))
    assert in_script == gemma.CONFIG_FLAGS


def test_config_flags_parse_to_lmul_configs():
    cfg, label = gemma.config_flags("linear_k3")
    assert (cfg.kind, cfg.mantissa_bits, cfg.linear, label) == ("lmul", 3, True, "linear_k3")
    assert gemma.config_flags("fp32") == (None, "fp32")
    assert gemma.config_flags("bf16")[0].dtype == "bfloat16"
    with pytest.raises(MulfreeError, match="unknown configuration"):
        gemma.config_flags("fp16")


def test_refresh_reruns_into_the_tree(tmp_path):
    """refresh() on a tiny model and tiny data writes finished JSONs where run.sh would."""
    from mulfree.eval import read_results
    from tests.eval.helpers import tiny_llama, tiny_tokenizer, write_olmo_layout

    tok = tiny_tokenizer()
    data = write_olmo_layout(tmp_path / "olmo")
    write_eval(tmp_path / "res", "lmul_k3", "piqa", [0, 0], partial=True)  # a stopped run
    written = gemma.refresh(
        tmp_path / "res", configs=("fp32", "lmul_k3"), tasks=("piqa",), limit=2,
        model=tiny_llama(len(tok)), tokenizer=tok, data_dir=str(data), progress=False,
    )  # fmt: skip
    root = tmp_path / "res" / "gemma3-270m"
    assert written == [root / "fp32" / "piqa.json", root / "lmul_k3" / "piqa.json"]
    assert not (root / "lmul_k3" / "piqa.json.partial").exists()
    r = read_results(root / "lmul_k3" / "piqa.json")
    assert r["label"] == "lmul_k3" and r["attention"]["mantissa_bits"] == 3
    assert r["tasks"]["piqa"]["n"] == 2 and "partial" not in r["tasks"]["piqa"]
