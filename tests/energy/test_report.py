"""`mulfree energy`: per-token report across variants, files written, bad input."""

import json

import pytest
import torch

from mulfree.cli import main
from mulfree.energy.report import energy_report, write_report
from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM


def _tiny_mmfree():
    torch.manual_seed(0)
    cfg = HGRNBitConfig(hidden_size=64, num_hidden_layers=2, vocab_size=128, intermediate_size=128)
    return HGRNBitForCausalLM(cfg).eval()


def test_report_rows_and_files(tmp_path):
    rep = energy_report(
        _tiny_mmfree(), model_name="tiny", variants=("fp32", "bf16", "lmul-attn"), context=4
    )
    names = [r.name for r in rep.rows]
    assert names == ["fp32", "bf16"]
    assert "no attention" in rep.skipped["lmul-attn"]
    fp32, bf16 = rep.rows
    # The same ops run in both; bf16 halves every byte and prices ops at 16 bits.
    assert sum(v for (k, _), v in fp32.counts.items() if k == "fp_mul") == sum(
        v for (k, _), v in bf16.counts.items() if k == "fp_mul"
    )
    assert bf16.bytes["weight_read"] * 2 == pytest.approx(fp32.bytes["weight_read"], rel=0.01)
    assert bf16.energy["total_pJ"] < fp32.energy["total_pJ"]
    write_report(rep, tmp_path, command="mulfree energy --test")
    md = (tmp_path / "energy.md").read_text()
    assert "| fp32 |" in md and "Skipped variants" in md and "measured energy" in md
    data = json.loads((tmp_path / "energy.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["fp32", "bf16"]
    assert (tmp_path / "energy.png").stat().st_size > 5000


def test_cli_bad_inputs(capsys, tmp_path):
    for argv, needle in (
        (["energy", "--model", "nosuch:tiny"], "unknown model family"),
        (["energy", "--model", str(tmp_path / "missing")], "neither a local folder"),
        (["energy", "--model", "mmfree:tiny", "--variants", "fp99"], "unknown energy variant"),
        (["energy", "--model", "mmfree:nope"], "unknown MatMul-free preset"),
        (["energy", "--model", "mmfree:tiny", "--context", "0"], "context must be"),
        (
            ["energy", "--model", "mmfree:tiny", "--table", str(tmp_path / "t.json")],
            "does not exist",
        ),
    ):
        rc = main([*argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "out").exists()
