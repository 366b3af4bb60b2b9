"""`mulfree energy --model` and `mulfree eval --model` take the one model-spec syntax
(`mulfree.models.resolve`, loaded by `mulfree.engine.load`): packed hgrn_bit and packed BitNet
directories included, and a preset in the deprecated spelling still resolves (with a warning)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from mulfree.cli import main  # noqa: E402
from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer  # noqa: E402
from mulfree.engine import convert  # noqa: E402
from mulfree.engine.load import load  # noqa: E402
from mulfree.models.bitnet.synthetic import write_random_checkpoint  # noqa: E402
from tests.engine.conftest import SENTENCES, make_model  # noqa: E402


@pytest.fixture(scope="module")
def packed_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("specs")
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=300)
    ckpt = root / "hgrn"
    make_model(hidden=32, layers=2).save_pretrained(ckpt)
    save_hf_tokenizer(tok, EOS_TOKEN, ckpt)
    bitnet = write_random_checkpoint(root / "bitnet", variant="packed", seed=7)
    save_hf_tokenizer(tok, EOS_TOKEN, bitnet)
    out = {}
    for name, src in (("hgrn_bit", ckpt), ("bitnet", bitnet)):
        convert(str(src), str(root / f"{name}-packed"))  # what `mulfree convert` writes
        out[name] = root / f"{name}-packed"
    return out


def test_load_gives_the_packed_model_and_its_tokenizer(packed_dirs):
    from mulfree.engine import PackedBitNetForCausalLM, PackedHGRNBitForCausalLM

    got = load(packed_dirs["hgrn_bit"])
    assert isinstance(got.model, PackedHGRNBitForCausalLM) and got.source.kind == "packed"
    assert got.tokenizer_dir == packed_dirs["hgrn_bit"]
    assert isinstance(load(packed_dirs["bitnet"]).model, PackedBitNetForCausalLM)


@pytest.mark.parametrize("family,ran", [("hgrn_bit", {"ternary", "mulfree"}),
                                        ("bitnet", {"ternary", "lmul-attn", "lmul-all"})])  # fmt: skip
def test_energy_on_a_packed_dir(packed_dirs, tmp_path, capsys, family, ran):
    out = tmp_path / "e"
    rc = main(["energy", "--model", str(packed_dirs[family]), "--context", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "energy.json").read_text())
    rows = {r["name"]: r for r in rep["rows"]}
    assert set(rows) == ran
    assert "fp32" in rep["skipped"] and "ternary" in rep["skipped"]["fp32"]
    assert all(r["counts"]["ternary_add_32"] > 0 for r in rows.values())


@pytest.mark.parametrize("family", ["hgrn_bit", "bitnet"])
def test_eval_on_a_packed_dir(packed_dirs, data_dir, tmp_path, family):
    out = tmp_path / "res.json"
    rc = main(["eval", "--model", str(packed_dirs[family]), "--tasks", "piqa", "--limit", "2",
               "--data-dir", str(data_dir), "--no-progress", "--no-fetch", "--threads", "1",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["tasks"]["piqa"]["n"] == 2


def test_the_old_preset_spelling_warns_and_resolves(tmp_path, capsys):
    with pytest.warns(FutureWarning, match="write mmfree:tiny"):
        rc = main(["energy", "--model", "mmfree-tiny", "--variants", "fp32", "--context", "2",
                   "--out", str(tmp_path / "e")])  # fmt: skip
    assert rc == 0
