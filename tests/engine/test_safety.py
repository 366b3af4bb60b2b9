"""Nothing lost, nothing half-written, nothing unbounded: `convert` never destroys a folder,
crafted configs and files fail fast in one line, corrupt or NaN weights are refused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from mulfree.cli import main
from mulfree.engine import convert
from mulfree.engine import format as fmt
from mulfree.engine.convert import ConvertConfig
from mulfree.errors import MulfreeError
from mulfree.models import HGRNBitConfig

FAST_FAIL_S = 1.0  # a crafted file must be refused within this (it took > 120 s before)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _cli_error(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("mulfree: error: ") and err.count("\n") == 1, err
    assert match in err, err
    return err


# --- 1. writes never destroy ---------------------------------------------------------------
def test_convert_refuses_an_existing_checkpoint_and_leaves_it_whole(model_dir, tmp_path, capsys):
    other = tmp_path / "other_ckpt"
    shutil.copytree(model_dir, other)
    before = _files(other)
    _cli_error(["convert", str(model_dir), str(other)], capsys, "not empty")
    assert _files(other) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_convert_refuses_a_user_folder(model_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tokenizer.json").write_text("my own tokenizer")
    (mine / "notes").mkdir()
    _cli_error(["convert", str(model_dir), str(mine)], capsys, "--force")
    assert (mine / "tokenizer.json").read_text() == "my own tokenizer"
    # --force replaces only a flat output folder: this one holds a folder of the user's.
    _cli_error(["convert", str(model_dir), str(mine), "--force"], capsys, "sub-folders")
    assert (mine / "tokenizer.json").read_text() == "my own tokenizer"


def test_convert_force_replaces_the_folder_as_a_whole(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "config.json").write_text("{}")
    r = convert(ConvertConfig(str(model_dir), str(out), force=True))
    assert r.path == out / fmt.WEIGHTS_FILE and fmt.is_packed(out)
    assert not (out / "stale.txt").exists()
    assert fmt.hf_model_type(out) == fmt.PACKED_MODEL_TYPE  # the new config.json, not the stale one
    assert set(os.listdir(out)) == {fmt.WEIGHTS_FILE, *r.tokenizer_files, *r.hf_files}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    # mode of a plain file (0644 under the usual umask), like the tokenizer files next to it
    mode = stat.S_IMODE((out / fmt.WEIGHTS_FILE).stat().st_mode)
    assert mode == stat.S_IMODE((out / "tokenizer.json").stat().st_mode) == 0o666 & ~_umask()


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


@pytest.mark.parametrize("how", ["dotdot", "symlink", "parent"])
def test_convert_refuses_the_source_as_destination(model_dir, tmp_path, how, capsys):
    before = _files(model_dir)
    if how == "dotdot":
        dst = model_dir / ".." / model_dir.name
    elif how == "symlink":
        dst = tmp_path / "link"
        dst.symlink_to(model_dir)
    else:
        dst = model_dir.parent
    _cli_error(["convert", str(model_dir), str(dst), "--force"], capsys, "must differ")
    assert _files(model_dir) == before


def test_a_failing_convert_leaves_dst_as_it_was(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert(str(model_dir), str(out))
    before = _files(out)

    def dies(path, *a, **k):
        path.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "write_packed", dies)
    with pytest.raises(OSError, match="No space"):
        convert(ConvertConfig(str(model_dir), str(out), "tq2", force=True))
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_convert_without_tokenizer(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / f, bare / f)
    _cli_error(["convert", str(bare), str(tmp_path / "o")], capsys, "--no-tokenizer")
    assert not (tmp_path / "o").exists()
    assert main(["convert", str(bare), str(tmp_path / "o"), "--no-tokenizer"]) == 0
    # the weights and the Hugging Face files, no tokenizer (nor its chat template)
    assert sorted(os.listdir(tmp_path / "o")) == sorted(
        [fmt.WEIGHTS_FILE, "config.json", "generation_config.json", "README.md"]
    )


# --- 2. bounded configs ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_hidden_layers", 10**9, "num_hidden_layers is 1000000000, above the bound 1024"),
        ("hidden_size", 2**40, "hidden_size is 1099511627776, above the bound 65536"),
        ("vocab_size", 2**30, "vocab_size is 1073741824, above the bound"),
        ("intermediate_size", 2**30, "MLP width"),
        ("expand_ratio", 1e6, "hidden_size*expand_ratio"),
        ("hidden_size", -5, "hidden_size must be a positive integer"),
        ("num_hidden_layers", 1.5, "num_hidden_layers must be a positive integer"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps must be a finite number"),
        ("max_position_embeddings", 2**40, "max_position_embeddings is"),
        ("bos_token_id", "one", "bos_token_id must be an integer"),
    ],
)
def test_config_fields_are_bounded(field, value, match):
    with pytest.raises(MulfreeError, match=match.replace("*", r"\*")):
        HGRNBitConfig(**{field: value})


def test_bounds_admit_the_published_shapes():
    for name in ("370M", "1.3B", "2.7B"):
        HGRNBitConfig.from_name(name)
    HGRNBitConfig(hidden_size=8192, num_hidden_layers=80, vocab_size=262_144)  # a 70B-class shape


def test_config_json_huge_field_one_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 10**9}))
    t0 = time.perf_counter()
    _cli_error(["generate", "--model", str(bad), "hi", "--max-tokens", "1"], capsys,
               "num_hidden_layers is 1000000000, above the bound 1024")  # fmt: skip
    _cli_error(["convert", str(bad), str(tmp_path / "o")], capsys, "above the bound")
    # within the bounds but not what the weights hold: refused before a model is described
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1000}))
    _cli_error(["convert", str(bad), str(tmp_path / "o")], capsys, "weights hold 3 layers")
    assert time.perf_counter() - t0 < 3 * FAST_FAIL_S
    assert not (tmp_path / "o").exists()


def _crafted(packed_dir, tmp_path, **config_changes):
    d = tmp_path / "crafted"
    shutil.copytree(packed_dir, d)
    f = d / fmt.WEIGHTS_FILE
    meta = fmt.read_metadata(f)
    meta["config"] = json.dumps({**json.loads(meta["config"]), **config_changes})
    meta["metadata_crc32"] = fmt.metadata_crc32(meta)  # an attacker recomputes checksums
    save_file(load_file(str(f)), str(f), metadata=meta)
    return d


@pytest.mark.parametrize("layers, match", [(10**6, "above the bound 1024"),
                                           (1024, "holds 3 layers")])  # fmt: skip
def test_crafted_packed_metadata_fails_fast(packed_dir, tmp_path, layers, match, capsys):
    d = _crafted(packed_dir, tmp_path, num_hidden_layers=layers)
    for argv in (["generate", "--model", str(d), "hi"], ["convert", str(d), str(tmp_path / "o")]):
        t0 = time.perf_counter()
        _cli_error(argv, capsys, match)
        assert time.perf_counter() - t0 < FAST_FAIL_S
    from mulfree.serve import load_backend

    t0 = time.perf_counter()
    with pytest.raises(MulfreeError, match=match):
        load_backend(d)
    assert time.perf_counter() - t0 < FAST_FAIL_S


def test_metadata_is_covered_by_a_checksum(packed_dir, tmp_path):
    d = tmp_path / "damaged"
    shutil.copytree(packed_dir, d)
    f = d / fmt.WEIGHTS_FILE
    meta = fmt.read_metadata(f)
    assert meta["metadata_crc32"] == fmt.metadata_crc32(meta)
    meta["config"] = meta["config"].replace('"num_hidden_layers": 3', '"num_hidden_layers": 4')
    save_file(load_file(str(f)), str(f), metadata=meta)  # a flipped config, old checksum
    with pytest.raises(MulfreeError, match="metadata CRC-32"):
        fmt.read_packed(d)


# --- 3. loading checks -----------------------------------------------------------------------
def _relabel(file, key, dtype):
    """Rewrite one tensor's dtype in a safetensors header, bytes unchanged."""
    data = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header[key]["dtype"] = dtype
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    blob += b" " * (n - len(blob))
    file.write_bytes(bytes(data[:8]) + blob + bytes(data[8 + n :]))


def test_float_weights_relabelled_as_int32_are_refused(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    key = "model.layers.0.attn.i_proj.weight"
    _relabel(bad / "model.safetensors", key, "I32")
    for argv in (["generate", "--model", str(bad), "hi"], ["convert", str(bad), str(tmp_path / "o")]):
        _cli_error(argv, capsys, f"tensor {key} is stored as I32")
    from mulfree.models import load_causal_lm

    with pytest.raises(MulfreeError, match="stored as I32"):
        load_causal_lm(bad)


def test_nan_weights_are_refused_with_the_tensor_named(model_dir, tmp_path, capsys):
    bad = tmp_path / "nan"
    shutil.copytree(model_dir, bad)
    f = bad / "model.safetensors"
    meta = fmt.read_metadata(f)
    tensors = load_file(str(f))
    key = "model.layers.1.mlp.down_proj.weight"
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(f), metadata=meta)
    for argv in (["generate", "--model", str(bad), "hi"], ["convert", str(bad), str(tmp_path / "o")]):
        _cli_error(argv, capsys, f"tensor {key} holds")
    from mulfree.models import load_causal_lm

    with pytest.raises(MulfreeError, match=f"tensor {key} holds NaN"):
        load_causal_lm(bad)


def test_nan_in_a_packed_file_is_refused(packed_dir, tmp_path):
    d = tmp_path / "p"
    shutil.copytree(packed_dir, d)
    f = d / fmt.WEIGHTS_FILE
    meta = fmt.read_metadata(f)
    tensors = load_file(str(f))
    tensors["model.norm.weight"][3] = float("inf")
    meta["tensors_crc32"] = fmt.tensors_crc32(tensors)
    meta["metadata_crc32"] = fmt.metadata_crc32(meta)
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(MulfreeError, match="tensor model.norm.weight holds 1 non-finite"):
        fmt.read_packed(d)
    from mulfree.engine.lite import LiteModel  # the torch-free engine `generate` runs

    with pytest.raises(MulfreeError, match="tensor model.norm.weight holds non-finite"):
        LiteModel.load(d)


@pytest.mark.parametrize("damage", ["truncated", "empty", "header"])
def test_damaged_packed_folder_is_reported_as_corrupt(packed_dir, tmp_path, damage, capsys):
    d = tmp_path / "p"
    shutil.copytree(packed_dir, d)
    f = d / fmt.WEIGHTS_FILE
    data = bytearray(f.read_bytes())
    if damage == "truncated":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "empty":
        f.write_bytes(b"")
    else:
        data[8:40] = b"~" * 32
        f.write_bytes(bytes(data))
    for argv in (["generate", "--model", str(d), "hi"], ["convert", str(d), str(tmp_path / "o")]):
        err = _cli_error(argv, capsys, "corrupt")
        assert str(f) in err and "config.json" not in err
    from mulfree.serve import load_backend

    with pytest.raises(MulfreeError, match="corrupt"):
        load_backend(d)
