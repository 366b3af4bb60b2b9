"""Bad packed files give one MulfreeError line; `mulfree convert` / `mulfree generate` CLI."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mulfree.cli import main
from mulfree.engine import load_packed
from mulfree.engine.format import WEIGHTS_FILE, metadata_crc32, read_metadata
from mulfree.engine.generate import GenerateConfig, generate
from mulfree.errors import MulfreeError


def _copy(packed_dir, tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(packed_dir, dst)
    return dst, dst / WEIGHTS_FILE


def _rewrite(file, tensors=None, **meta_changes):
    meta = read_metadata(file)
    tensors = load_file(str(file)) if tensors is None else tensors
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    if "metadata_crc32" in meta and "metadata_crc32" not in meta_changes:
        meta["metadata_crc32"] = metadata_crc32(meta)  # a crafted file, not a damaged one
    save_file(tensors, str(file), metadata=meta)


def _one_line_error(path, match):
    with pytest.raises(MulfreeError, match=match) as e:
        load_packed(path)
    assert "\n" not in str(e.value)


def test_truncated_file(packed_dir, tmp_path):
    d, f = _copy(packed_dir, tmp_path)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    _one_line_error(d, "cannot read")
    f.write_bytes(data[:5])  # not even the header length
    _one_line_error(d, "cannot read")


def test_corrupt_header(packed_dir, tmp_path):
    d, f = _copy(packed_dir, tmp_path)
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + 20] = b"#" * 20  # the JSON header is no longer JSON
    f.write_bytes(bytes(data))
    _one_line_error(d, "cannot read")
    data[:8] = struct.pack("<Q", n * 1000)  # header length past the end of the file
    f.write_bytes(bytes(data))
    _one_line_error(d, "cannot read")


def test_corrupt_tensor_data_fails_crc(packed_dir, tmp_path):
    d, f = _copy(packed_dir, tmp_path)
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    _one_line_error(d, "corrupt")


def test_wrong_version_and_format_name(packed_dir, tmp_path):
    d, f = _copy(packed_dir, tmp_path)
    _rewrite(f, mulfree_format_version="99")
    _one_line_error(d, "version '99'")
    _rewrite(f, mulfree_format_version="1", mulfree_format="mulfree.hgrn_bit")
    _one_line_error(d, "not a packed model")
    _rewrite(f, mulfree_format="mulfree.packed_hgrn_bit", ternary_format="tq3")
    _one_line_error(d, "ternary_format")
    _rewrite(f, ternary_format="tq1", config="{not json")
    _one_line_error(d, "config")


def test_shape_mismatch_and_missing_tensor(packed_dir, tmp_path):
    d, f = _copy(packed_dir, tmp_path)
    tensors = load_file(str(f))
    key = "model.layers.0.attn.o_proj.weight_packed"
    good = tensors[key]
    tensors[key] = torch.cat([good, good[:5]])
    _rewrite(f, tensors, tensors_crc32=None)
    _one_line_error(d, f"shape mismatch for {key}")
    # a config that disagrees with the tensors is a shape mismatch too
    tensors[key] = good
    cfg = json.loads(read_metadata(f)["config"])
    cfg["hidden_size"] = 96
    _rewrite(f, tensors, config=json.dumps(cfg))
    _one_line_error(d, "shape mismatch")
    del tensors[key]
    cfg["hidden_size"] = 64
    _rewrite(f, tensors, config=json.dumps(cfg))
    _one_line_error(d, "missing tensors")


def test_not_found_and_regular_checkpoint_file(model_dir, tmp_path):
    _one_line_error(tmp_path / "nope", "not found")
    _one_line_error(model_dir, "not a packed model")


def test_generate_python_api_streams_and_stops(packed_dir, model_dir):
    pieces = []
    r = generate(
        GenerateConfig("The quick", model=str(packed_dir), max_tokens=7, stop_on_eos=False),
        on_text=pieces.append,
    )
    assert len(r.token_ids) == 7 and r.stop_reason == "max_tokens"
    assert "".join(pieces) == r.text or r.text.startswith("".join(pieces))
    assert r.prefill_tok_s > 0 and r.decode_steps == 6 and r.peak_rss_mb > 0
    # a checkpoint dir is packed on the fly; greedy gives the same tokens as its packed form
    # (float32 vs int8 embeddings may differ, so compare with an exact conversion)
    r2 = generate(
        GenerateConfig("The quick", model=str(model_dir), max_tokens=7, stop_on_eos=False)
    )
    assert len(r2.token_ids) == 7
    # sampling is reproducible with a seed
    cfg = dict(
        model=str(packed_dir),
        max_tokens=10,
        temperature=0.9,
        top_k=20,
        top_p=0.9,
        seed=7,
        stop_on_eos=False,
    )
    a = generate(GenerateConfig("Ternary", **cfg)).token_ids
    assert a == generate(GenerateConfig("Ternary", **cfg)).token_ids
    # EOS stops generation: declare the greedy continuation's 3rd token to be EOS
    model, tok = load_packed(packed_dir), _tok(packed_dir)
    free = generate(
        GenerateConfig("x", max_tokens=5, stop_on_eos=False, temperature=0), model=model,
        tokenizer=tok,
    )
    model.config.eos_token_id = model.generation_config.eos_token_id = free.token_ids[2]
    tok.eos_token = None
    stopped = generate(GenerateConfig("x", max_tokens=5, temperature=0), model=model, tokenizer=tok)
    assert stopped.stop_reason == "eos" and stopped.token_ids == free.token_ids[:2]


def _tok(path):
    from mulfree.engine.generate import load_tokenizer

    return load_tokenizer(path)


def test_cli_convert_and_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(["convert", str(model_dir), str(out), "--format", "tq2", "--embeddings", "float32"])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert (
        main(["generate", "--model", str(out), "The quick", "--max-tokens", "5", "--ignore-eos"])
        == 0
    )
    cap = capsys.readouterr()
    assert "prefill:" in cap.err and "decode:" in cap.err and "peak RSS" in cap.err
    assert "energy per token (estimated, horowitz-45nm table)" in cap.err and "x less" in cap.err
    assert cap.out.endswith("\n")
    argv = ["generate", "--model", str(out), "The quick", "--max-tokens", "2", "--no-energy"]
    assert main(argv) == 0
    assert "energy" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "a"], "required"),
        (["convert", "a", "b", "--format", "tq3"], "invalid choice"),
        (["convert", "a", "b", "--embeddings", "int2"], "invalid choice"),
        (["generate"], "required"),
        (["generate", "x", "--max-tokens", "many"], "invalid int"),
    ],
    ids=["convert-missing-dst", "bad-format", "bad-embeddings", "no-prompt", "bad-int"],
)
def test_cli_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-tokens", "0"], "max_tokens"),
        (["--top-p", "0"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-3"], "top_k"),
        (["--energy-table", "nope"], "unknown energy table"),
    ],
    ids=["max-tokens", "top-p", "temperature", "top-k", "energy-table"],
)
def test_cli_bad_values_one_line(packed_dir, extra, message, capsys):
    assert main(["generate", "--model", str(packed_dir), "hi", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_bad_files_one_line(packed_dir, model_dir, tmp_path, capsys):
    d, f = _copy(packed_dir, tmp_path)
    f.write_bytes(f.read_bytes()[:100])
    assert main(["generate", "--model", str(d), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mulfree: error: ") and err.count("\n") == 1
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["convert", str(model_dir), str(model_dir)]) == 2
    assert "differ" in capsys.readouterr().err
