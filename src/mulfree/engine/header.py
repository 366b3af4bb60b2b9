"""Checks of a packed file's header that need neither torch nor the tensor data: shared by the
torch reader (engine.format.read_packed) and the torch-free engine (engine.lite)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path

from mulfree.errors import MulfreeError, first_line  # noqa: F401  (re-exported)
from mulfree.tensorfile import PACKED, WEIGHTS_FILE  # noqa: F401  (re-exported)

# The packed format's identity, written into every file's metadata (mulfree.tensorfile.PACKED).
FORMAT_NAME = PACKED.name
FORMAT_VERSION = PACKED.version
READ_VERSIONS = PACKED.read_versions
FAMILIES = ("hgrn_bit", "bitnet")


def model_family(meta: Mapping[str, str], file) -> str:
    """The model family a packed file's metadata names (version 1 files are hgrn_bit)."""
    fam = meta.get("model_family", "hgrn_bit")
    if fam not in FAMILIES:
        raise MulfreeError(f"{file}: unknown model_family {fam!r} (expected one of {', '.join(FAMILIES)})")
    return fam


def check_identity(meta: Mapping[str, str], file, *, verify: bool = True) -> None:
    """Format name and version (and, when `verify`, the metadata CRC) of a packed file's
    metadata: one MulfreeError line for a file that is not one this mulfree reads."""
    PACKED.check(meta, file)
    if verify:
        check_metadata_crc(meta, file)


def config_metadata(meta: Mapping[str, str], file) -> dict:
    """The config JSON object a packed file's metadata holds (any family); one-line errors."""
    try:
        raw = json.loads(meta["config"])
    except KeyError:
        raise MulfreeError(f"{file}: no config in its metadata") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise MulfreeError(f"{file}: unreadable config metadata ({first_line(e)})") from None
    if not isinstance(raw, dict):
        raise MulfreeError(f"{file}: the config metadata is not a JSON object")
    return raw


def weights_file(path: str | Path) -> Path:
    """The packed safetensors file of `path` (the file itself, or DIR/model.safetensors)."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise MulfreeError(f"packed model not found: {p}")
    return p


def metadata_crc32(meta: Mapping[str, str]) -> str:
    """CRC-32 (8 hex digits) of the metadata entries other than this checksum, as `name=value`
    lines in sorted-name order: a damaged config or format field is found before it is used."""
    crc = 0
    for k in sorted(meta):
        if k != "metadata_crc32":
            crc = zlib.crc32(f"{k}={meta[k]}\n".encode("utf-8", "surrogatepass"), crc)
    return f"{crc:08x}"


def check_metadata_crc(meta: Mapping[str, str], file) -> None:
    if "metadata_crc32" in meta and metadata_crc32(meta) != meta["metadata_crc32"]:
        raise MulfreeError(f"{file} is corrupt: metadata CRC-32 does not match its header")


def check_against_config(cfg: Mapping, shapes: Mapping[str, tuple], file) -> None:
    """The config's layer count and embedding shape against the tensors the header lists
    (name -> shape), before a model of that config is described or allocated."""
    layers = {int(k.split(".")[2]) for k in shapes
              if k.startswith("model.layers.") and k.split(".")[2].isdigit()}  # fmt: skip
    n = max(layers) + 1 if layers else 0
    if n != cfg["num_hidden_layers"] or len(layers) != n:
        raise MulfreeError(
            f"{file}: config num_hidden_layers={cfg['num_hidden_layers']} but the file holds "
            f"{len(layers)} layers"
        )
    for name in ("weight", "weight_int8", "weight_int4"):  # hgrn_bit's table (bitnet: lm_head)
        key = f"model.embeddings.{name}"
        if key in shapes:
            shape = tuple(shapes[key])
            if len(shape) != 2 or shape[0] != cfg["vocab_size"] or (
                name != "weight_int4" and shape[1] != cfg["hidden_size"]
            ):
                raise MulfreeError(
                    f"{file}: shape mismatch: config vocab_size={cfg['vocab_size']}, hidden_size="
                    f"{cfg['hidden_size']} but {key} has shape {shape}"
                )
