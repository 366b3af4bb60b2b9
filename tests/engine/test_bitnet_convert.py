"""`mulfree convert` / `load_packed` / `mulfree generate` on BitNet checkpoints in the official
layout: packed format version 2 (model_family "bitnet", tq1 on disk, tq2 in memory), version-1
files still load, and every bad input is one line with nothing written."""

import json
import os

import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from mulfree.cli import main  # noqa: E402
from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer  # noqa: E402
from mulfree.engine import convert, load_packed  # noqa: E402
from mulfree.engine import format as fmt  # noqa: E402
from mulfree.engine.bitnet_model import PackedBitNetForCausalLM, from_checkpoint  # noqa: E402
from mulfree.engine.convert import ConvertConfig  # noqa: E402
from mulfree.errors import MulfreeError  # noqa: E402
from mulfree.models.bitnet.synthetic import write_random_checkpoint  # noqa: E402

from .conftest import SENTENCES  # noqa: E402

IDS = torch.tensor([[1, 5, 7, 9, 33, 100, 7, 8]])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bitnet_src")
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=300)
    out = {}
    for v in ("packed", "master", "llama"):
        d = write_random_checkpoint(root / v, variant=v, seed=7)
        save_hf_tokenizer(tok, EOS_TOKEN, d)
        out[v] = d
    tied = write_random_checkpoint(root / "tied", dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2), seed=8)  # fmt: skip
    save_hf_tokenizer(tok, EOS_TOKEN, tied)
    out["tied"] = tied
    return out


@pytest.mark.parametrize("variant", ["packed", "master", "llama", "tied"])
def test_convert_then_load_equals_checkpoint(ckpts, tmp_path, variant):
    """tq1 on disk is lossless: the loaded model's logits equal the checkpoint's read directly
    (float32 tables keep the checkpoint values)."""
    r = convert(ConvertConfig(str(ckpts[variant]), str(tmp_path / "p"), embeddings="float32",
                              head="float32"))  # fmt: skip
    meta = fmt.read_metadata(r.path)
    assert (meta["mulfree_format_version"], meta["model_family"], meta["ternary_format"]) == (
        "2", "bitnet", "tq1")  # fmt: skip
    assert "tokenizer.json" in r.tokenizer_files
    model = load_packed(tmp_path / "p")
    assert isinstance(model, PackedBitNetForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, from_checkpoint(ckpts[variant])(IDS).logits,
                                   atol=0, rtol=0)  # fmt: skip


@pytest.mark.parametrize("head", ["int8", "int4"])
def test_quantized_head_sizes_and_repack(ckpts, tmp_path, head):
    """A tied model stores one table (the head); re-packing a packed file to tq2 keeps it."""
    a = convert(ConvertConfig(str(ckpts["tied"]), str(tmp_path / "a"), head=head))
    b = convert(ConvertConfig(str(tmp_path / "a"), str(tmp_path / "b"), "tq2", head=head))
    _, specs = fmt.read_header(b.path)
    assert not any(k.startswith("model.embed_tokens") for k in specs)
    assert f"lm_head.weight_{head}" in specs
    ma, mb = load_packed(tmp_path / "a"), load_packed(tmp_path / "b")
    assert fmt.read_metadata(b.path)["ternary_format"] == "tq2"
    with torch.no_grad():
        torch.testing.assert_close(mb(IDS).logits, ma(IDS).logits, atol=0, rtol=0)
    assert a.nbytes < b.nbytes  # tq1 (1.6 bits) < tq2 (2 bits)


def test_version_1_files_still_load():
    from mulfree.engine.generate import bundled_packed

    path = bundled_packed()
    if path is None:
        pytest.skip("no bundled packed model in this install")
    meta = fmt.read_metadata(fmt.weights_file(path))
    assert meta["mulfree_format_version"] == "1" and "model_family" not in meta
    model = load_packed(path)
    assert type(model).__name__ == "PackedHGRNBitForCausalLM"


def _bad(ckpt, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    raw = json.loads((ckpt / "config.json").read_text())
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(raw, tensors)
    src = tmp_path / "bad"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(src / "model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (ckpt / f).is_file():
            (src / f).write_bytes((ckpt / f).read_bytes())
    return src


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda r, t: t.update({"model.layers.0.mlp.down_proj.weight": torch.zeros(16, 95, dtype=torch.uint8)}),
         "packed tensor model.layers.0.mlp.down_proj.weight has shape \\(16, 95\\)"),
        (lambda r, t: t.pop("model.layers.1.self_attn.v_proj.weight_scale"), "missing .*v_proj.weight_scale"),
        (lambda r, t: r.update(quantization_config={"quant_method": "awq"}), "unknown quantization_config"),
        (lambda r, t: t.pop("model.norm.weight"), "missing tensor model.norm.weight"),
    ],
    ids=["packed-shape", "no-weight-scale", "unknown-qconfig", "missing-tensor"],
)  # fmt: skip
def test_bad_sources_one_line_nothing_written(ckpts, tmp_path, edit, match, capsys):
    src = _bad(ckpts["packed"], tmp_path, edit)
    dst = tmp_path / "out"
    assert main(["convert", str(src), str(dst)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and __import__("re").search(match, err), err
    assert not dst.exists() and not list(tmp_path.glob(".out*"))


def test_gguf_and_non_model_dir(tmp_path, capsys):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(MulfreeError, match="GGUF file"):
        convert(str(gguf), str(tmp_path / "o1"))
    d = tmp_path / "ggufdir"
    d.mkdir()
    (d / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(MulfreeError, match="GGUF file"):
        convert(str(d), str(tmp_path / "o2"))
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    assert main(["convert", str(empty), str(tmp_path / "o3")]) != 0
    assert "no config.json" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3"))


def test_cli_convert_and_generate(ckpts, tmp_path, capsys):
    dst = tmp_path / "packed"
    assert main(["convert", str(ckpts["packed"]), str(dst), "--head", "int4"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert fmt.read_metadata(dst / "model.safetensors")["head_format"] == "int4"
    for extra in ([], ["--attention", "lmul", "--mantissa-bits", "3", "--kv-cache", "int8"]):
        rc = main(["generate", "--model", str(dst), "The quick", "--temperature", "0",
                   "--max-tokens", "4", "--no-energy", "--max-context", "32", *extra])  # fmt: skip
        assert rc == 0
        assert "torch engine" in capsys.readouterr().err  # the torch-free engine runs hgrn_bit only


def test_generate_from_checkpoint_dir_and_lite_refusal(ckpts, tmp_path, capsys):
    """`generate --model CHECKPOINT_DIR` packs a BitNet checkpoint on the fly; the torch-free
    engine says in one line that it runs hgrn_bit only."""
    rc = main(["generate", "--model", str(ckpts["llama"]), "The quick", "--temperature", "0",
               "--max-tokens", "3", "--quiet"])  # fmt: skip
    assert rc == 0
    dst = tmp_path / "p"
    convert(ConvertConfig(str(ckpts["packed"]), str(dst)))
    assert (
        main(["generate", "--model", str(dst), "x", "--engine", "lite", "--max-tokens", "2"]) != 0
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torch-free engine" in err, err  # (or: no compiled core)
    from mulfree.engine import lite

    with pytest.raises(
        MulfreeError, match="packed bitnet model; the torch-free engine runs hgrn_bit"
    ):
        lite.LiteModel.load(dst)
