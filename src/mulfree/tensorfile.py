"""Safetensors files: the one module that reads and writes them.

Every safetensors file mulfree touches goes through here: a float checkpoint (our
`mulfree.hgrn_bit` Hugging Face folders, official hgrn_bit ones, BitNet checkpoints, a training
run's checkpoints) and a packed model file (`mulfree.packed_hgrn_bit`, described in
mulfree.engine.format). What the two formats share lives here once:

* reading: the header alone (`read_header`, `read_metadata`: names, shapes, dtype names and
  `__metadata__`, no tensor data touched), a whole file (`read_tensors`), or tensor by tensor
  over several files (`TensorFiles`, for converting a checkpoint in little memory); every failure
  is one MulfreeError line naming the file;
* writing: `write_tensors` (atomic: a temporary sibling, fsync'ed, renamed over the path) and
  `add_metadata` (merge entries into a written file's `__metadata__`, tensor bytes unchanged:
  transformers' save_pretrained cannot pass metadata);
* identity: each format's name and version in the metadata (`CHECKPOINT`, `PACKED`:
  `FileFormat.stamp()` when writing, `FileFormat.check()` when reading), and the data checksum
  (`tensors_crc32`, `check_tensors_crc`).

What a format's tensors must be (names, shapes against a config) stays with the model code that
knows the config (mulfree.models.loading.check_checkpoint,
mulfree.engine.format.read_packed). Base layer: imports nothing above `errors` and `_io`; torch
is imported only by the functions that return torch tensors, so the torch-free engine
(mulfree.engine.lite) reads through the NumPy side.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulfree._io import atomic_file
from mulfree.errors import MulfreeError, first_line

# A model folder's (and a packed model's) weights file.
WEIGHTS_FILE = "model.safetensors"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # safetensors dtype names of float tensors
# safetensors dtype names -> torch dtype names (the ones our files hold)
_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype name (the name itself when torch has none)."""
    import torch

    return getattr(torch, _TORCH_DTYPES[name]) if name in _TORCH_DTYPES else name


def _unreadable(path: Path, e: BaseException) -> MulfreeError:
    if path.is_file() and path.stat().st_size == 0:
        return MulfreeError(f"cannot read {path}: the file is empty (corrupt)")
    return MulfreeError(f"cannot read {path}: corrupt or not a safetensors file ({first_line(e)})")


def _open(path: Path, framework: str = "numpy"):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework=framework)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise _unreadable(path, e) from None


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], str]]]:
    """(`__metadata__`, name -> (shape, safetensors dtype name)) of a safetensors file, read from
    its header alone (no tensor data is touched); one-line errors."""
    path = Path(path)
    try:
        with _open(path) as sf:
            meta = dict(sf.metadata() or {})
            specs = {}
            for k in sf.keys():  # noqa: SIM118  (a safe_open handle is not a Mapping)
                sl = sf.get_slice(k)
                specs[k] = (tuple(sl.get_shape()), sl.get_dtype())
            return meta, specs
    except MulfreeError:
        raise
    except Exception as e:
        raise _unreadable(path, e) from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (its header only), one-line errors."""
    return read_header(path)[0]


def read_tensors(path: str | Path, *, numpy: bool = False) -> dict[str, Any]:
    """Every tensor of a safetensors file (torch tensors, or NumPy arrays with `numpy=True`,
    which needs no torch). A file whose data cannot be read: one line `<file> is corrupt: ...`."""
    path = Path(path)
    with _open(path, "numpy" if numpy else "pt") as sf:
        try:
            return {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118
        except Exception as e:
            raise MulfreeError(f"{path} is corrupt: {first_line(e)}") from None


class TensorFiles:
    """The tensors of one checkpoint's safetensors files, read one at a time (a checkpoint is
    converted in little more memory than its largest tensor). `where` names the checkpoint in
    errors."""

    def __init__(self, files: Iterable[str | Path], where: str | Path | None = None):
        self.files = [Path(f) for f in files]
        self.where = where if where is not None else (self.files[0].parent if self.files else "")
        self._handles = [_open(f, "pt") for f in self.files]
        self._of: dict[str, Any] = {}
        for sf in self._handles:
            for k in sf.keys():  # noqa: SIM118
                self._of[k] = sf

    def keys(self) -> set[str]:
        return set(self._of)

    def __contains__(self, key: str) -> bool:
        return key in self._of

    def get(self, key: str):
        """The tensor `key` (torch), one-line errors for a missing or unreadable one."""
        if key not in self._of:
            raise MulfreeError(f"{self.where}: missing tensor {key}")
        try:
            return self._of[key].get_tensor(key)
        except Exception as e:
            raise MulfreeError(f"cannot read tensor {key} from {self.where}: {first_line(e)}") from None

    def close(self) -> None:
        self._handles.clear()
        self._of.clear()

    def __enter__(self) -> TensorFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_tensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write torch `tensors` (made contiguous) with `metadata` to `path` atomically: a temporary
    sibling, fsync'ed, renamed over `path` (a reader sees the old file or the new one)."""
    from safetensors.torch import save_file

    with atomic_file(Path(path)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata is not None else None)  # fmt: skip


def add_metadata(path: str | Path, extra: Mapping[str, str]) -> None:
    """Merge `extra` into a safetensors file's `__metadata__`, copying the tensor bytes unchanged.

    Tensor offsets in the header are relative to the data section, so only the header changes;
    the rewrite is atomic."""
    path = Path(path)
    with open(path, "rb") as src, atomic_file(path) as tmp:
        (n,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(n))
        header["__metadata__"] = {**header.get("__metadata__", {}), **extra}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep the data section 8-byte aligned, as safetensors does
        with open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", len(blob)))
            dst.write(blob)
            shutil.copyfileobj(src, dst, 1 << 24)


def tensors_crc32(tensors: Mapping[str, Any]) -> str:
    """CRC-32 of the tensors' bytes (torch tensors or NumPy arrays: the same bytes give the same
    value) in sorted-name order, as 8 hex digits."""
    import numpy as np

    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, np.ndarray):  # a torch tensor: its bytes, without a copy when it can
            import torch

            t = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        t = np.ascontiguousarray(t)
        if t.size:
            crc = zlib.crc32(t.reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def check_tensors_crc(tensors: Mapping[str, Any], meta: Mapping[str, str], file) -> None:
    """Refuse tensors whose bytes do not match the file's `tensors_crc32` (when it has one)."""
    if "tensors_crc32" in meta and tensors_crc32(tensors) != meta["tensors_crc32"]:
        raise MulfreeError(f"{file} is corrupt: tensor data CRC-32 does not match its header")


@dataclass(frozen=True)
class FileFormat:
    """A file format's identity in the `__metadata__` of its safetensors files.

    `required`: a file without `mulfree_format` is refused (packed files). Otherwise such a file
    is a foreign checkpoint of the same tensor layout (an official hgrn_bit one) and is read.
    """

    name: str
    version: int  # written
    read_versions: tuple[int, ...]  # read (packed); a checkpoint reads every version up to `version`
    what: str  # in errors: "packed model" | "checkpoint"
    required: bool

    def stamp(self) -> dict[str, str]:
        """The metadata entries a file of this format is written with."""
        return {"mulfree_format": self.name, "mulfree_format_version": str(self.version)}

    def check(self, meta: Mapping[str, str], file) -> None:
        """Refuse, in one line, a file of another format or of a version this mulfree does not read."""
        name = meta.get("mulfree_format")
        if name is None and not self.required:
            return
        if name != self.name:
            if self.required:
                hint = " (a regular checkpoint: pack it with `mulfree convert`)" if name else ""
                raise MulfreeError(f"{file} is not a {self.what}: format {name!r}, expected {self.name!r}{hint}")
            raise MulfreeError(f"{file} holds {name!r}, not {self.name!r} weights")
        if self.required:
            version = meta.get("mulfree_format_version", "")
            if not version.isdigit() or int(version) not in self.read_versions:
                raise MulfreeError(f"{file} is packed format version {version!r}; this mulfree reads "
                                   f"versions {', '.join(map(str, self.read_versions))}")  # fmt: skip
            return
        # a checkpoint of an older version still loads (the layout has not changed since)
        version = meta.get("mulfree_format_version", str(self.version))
        if not version.isdigit() or int(version) > self.version:
            raise MulfreeError(f"{file} is format version {version}; this mulfree reads up to "
                               f"{self.version} (upgrade mulfree)")  # fmt: skip


# Our float checkpoints (save_pretrained of HGRNBitForCausalLM; `config` metadata beside the
# name): bump the version when the tensor layout changes.
CHECKPOINT = FileFormat("mulfree.hgrn_bit", 1, (1,), "checkpoint", required=False)
# Packed model files. 2: `model_family` metadata ("hgrn_bit" | "bitnet"; a version-1 file is
# hgrn_bit). Files of every version in read_versions load.
PACKED = FileFormat("mulfree.packed_hgrn_bit", 2, (1, 2), "packed model", required=True)
