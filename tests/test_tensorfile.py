"""mulfree.tensorfile: the one safetensors reader/writer (header, tensors, metadata merge,
format identity) and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mulfree import tensorfile as tf
from mulfree.errors import MulfreeError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randint(0, 255, (7,), generator=g, dtype=torch.uint8),
        "c": torch.randn(4, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0),
    }


def test_write_then_read_round_trips_bit_exactly(tmp_path):
    f = tmp_path / "w.safetensors"
    t = _tensors()
    tf.write_tensors(f, t, {"k": "v"})
    back = tf.read_tensors(f)
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k])
    meta, specs = tf.read_header(f)
    assert meta == {"k": "v"}
    assert specs["a"] == ((3, 5), "F32") and specs["b"] == ((7,), "U8") and specs["c"] == ((4,), "BF16")
    assert tf.torch_dtype("BF16") is torch.bfloat16 and tf.torch_dtype("F8_E4M3") == "F8_E4M3"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary sibling was renamed


def test_numpy_side_gives_the_same_bytes_and_crc(tmp_path):
    f = tmp_path / "w.safetensors"
    t = {k: v for k, v in _tensors().items() if k != "c"}  # NumPy has no bfloat16
    tf.write_tensors(f, t)
    arrays = tf.read_tensors(f, numpy=True)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    assert np.array_equal(arrays["a"], t["a"].numpy())
    assert tf.tensors_crc32(arrays) == tf.tensors_crc32(t)
    t2 = dict(t, a=t["a"].clone())
    t2["a"][0, 0] += 1
    assert tf.tensors_crc32(t2) != tf.tensors_crc32(t)
    meta = {"tensors_crc32": tf.tensors_crc32(t)}
    tf.check_tensors_crc(arrays, meta, "f")
    tf.check_tensors_crc(t2, {}, "f")  # a file without the checksum: nothing to check
    with pytest.raises(MulfreeError, match="f is corrupt: tensor data CRC-32"):
        tf.check_tensors_crc(t2, meta, "f")


def test_add_metadata_merges_and_keeps_tensor_bytes(tmp_path):
    f = tmp_path / "w.safetensors"
    t = _tensors()
    tf.write_tensors(f, t, {"format": "pt"})
    for extra in ({"x": "1"}, {"longer_key": "y" * 13}):  # header lengths not multiples of 8
        tf.add_metadata(f, extra)
    assert tf.read_metadata(f) == {"format": "pt", "x": "1", "longer_key": "y" * 13}
    back = tf.read_tensors(f)
    assert all(torch.equal(back[k], t[k]) for k in t)


def test_tensor_files_reads_one_tensor_at_a_time_over_files(tmp_path):
    tf.write_tensors(tmp_path / "1.safetensors", {"a": torch.ones(2)})
    tf.write_tensors(tmp_path / "2.safetensors", {"b": torch.zeros(3)})
    with tf.TensorFiles(sorted(tmp_path.glob("*.safetensors")), "ckpt") as w:
        assert w.keys() == {"a", "b"} and "a" in w and "z" not in w
        assert torch.equal(w.get("b"), torch.zeros(3))
        with pytest.raises(MulfreeError, match="ckpt: missing tensor z"):
            w.get("z")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_unreadable_files_are_one_error_line(tmp_path, damage):
    f = tmp_path / "w.safetensors"
    tf.write_tensors(f, _tensors())
    data = f.read_bytes()
    f.write_bytes({"empty": b"", "truncated": data[:5], "garbage": b"#" * 64}[damage])
    for read in (tf.read_header, tf.read_tensors, lambda p: tf.TensorFiles([p])):
        with pytest.raises(MulfreeError, match="cannot read") as e:
            read(f)
        assert "\n" not in str(e.value)


def test_truncated_data_is_corrupt(tmp_path):
    f = tmp_path / "w.safetensors"
    tf.write_tensors(f, _tensors())
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(MulfreeError, match="cannot read|corrupt"):
        tf.read_tensors(f)


def test_format_identity():
    tf.PACKED.check({**tf.PACKED.stamp()}, "f")
    for v in tf.PACKED.read_versions:
        tf.PACKED.check({"mulfree_format": tf.PACKED.name, "mulfree_format_version": str(v)}, "f")
    with pytest.raises(MulfreeError, match="is not a packed model: format None"):
        tf.PACKED.check({}, "f")
    with pytest.raises(MulfreeError, match="pack it with `mulfree convert`"):
        tf.PACKED.check(tf.CHECKPOINT.stamp(), "f")
    with pytest.raises(MulfreeError, match="packed format version '9'"):
        tf.PACKED.check({"mulfree_format": tf.PACKED.name, "mulfree_format_version": "9"}, "f")
    tf.CHECKPOINT.check({}, "f")  # an official checkpoint carries no format name
    tf.CHECKPOINT.check(tf.CHECKPOINT.stamp(), "f")
    with pytest.raises(MulfreeError, match="not 'mulfree.hgrn_bit' weights"):
        tf.CHECKPOINT.check(tf.PACKED.stamp(), "f")
    for v in ("2", "x"):
        with pytest.raises(MulfreeError, match="upgrade mulfree"):
            tf.CHECKPOINT.check({"mulfree_format": tf.CHECKPOINT.name, "mulfree_format_version": v}, "f")
