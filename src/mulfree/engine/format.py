"""The packed model file: one safetensors file that says what it is.

Metadata (`__metadata__`, all strings):
    mulfree_format          "mulfree.packed_hgrn_bit"
    mulfree_format_version  "1"
    config                  the HGRNBitConfig as JSON (every field)
    ternary_format          "tq2" (2 bits/weight, the kernels' layout) or "tq1" (1.6 bits/weight)
    embedding_format        "float32" | "bfloat16" | "float16" | "int8" | "int4"
    tensors_crc32           CRC-32 of every tensor's bytes, in sorted-name order (hex)
Tensors, named as the modules of HGRNBitForCausalLM with PackedTernaryLinear layers:
    <linear>.weight_packed  uint8 [packed_nbytes(ternary_format, N, K)]
    <linear>.weight_scale   float32 [] (w ≈ q / scale, BitLinear's absmean rule)
    <linear>.norm.weight    float32 [K] (BitLinear's input RMSNorm)
    model.embeddings.weight float [V, D]  or, for int8,
    model.embeddings.weight_int8 int8 [V, D] + model.embeddings.weight_step float32 [V]
    or, for int4 (engine.modules.Int4Embedding, G = ceil(D / 32)),
    model.embeddings.weight_int4 uint8 [V, 16 G] + model.embeddings.weight_step float32 [V, G]
    model.lower_bounds, model.norm.weight, model.layers.<i>.{attn_norm,mlp_norm}.weight,
    model.layers.<i>.attn.g_norm.weight   float32
Nothing is inferred from file names: a reader checks the format name, version and that every
tensor has the shape the config implies.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import torch

from mulfree.errors import MulfreeError
from mulfree.ternary import packing

FORMAT_NAME = "mulfree.packed_hgrn_bit"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TERNARY_FORMATS = packing.FORMATS  # ("tq2", "tq1")
EMBEDDING_FORMATS = ("int8", "int4", "float32", "bfloat16", "float16")
INT4_GROUP = 32  # entries per step of an int4 embedding row (llama.cpp Q4_0's block size)
# Files copied next to the packed weights when the source has them (tokenizer + generation).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


def tensors_crc32(tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 of the tensors' bytes in sorted-name order, as 8 hex digits."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.numel():
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def weights_file(path: str | Path) -> Path:
    """The packed safetensors file of `path` (the file itself, or DIR/model.safetensors)."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise MulfreeError(f"packed model not found: {p}")
    return p


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, with one-line errors for unreadable files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as sf:
            return dict(sf.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise MulfreeError(f"cannot read {path}: {_first_line(e)}") from None


def is_packed(path: str | Path) -> bool:
    """True when `path` (a file, or a directory with model.safetensors) is a packed model."""
    p = Path(path)
    p = p / WEIGHTS_FILE if p.is_dir() else p
    if not p.is_file():
        return False
    try:
        return read_metadata(p).get("mulfree_format") == FORMAT_NAME
    except MulfreeError:
        return False


def write_packed(
    path: Path, tensors: dict[str, torch.Tensor], config_json: str, ternary_format: str,
    embedding_format: str,
) -> None:  # fmt: skip
    """Write tensors + metadata atomically (tmp file, then rename)."""
    from safetensors.torch import save_file

    meta = {
        "mulfree_format": FORMAT_NAME,
        "mulfree_format_version": str(FORMAT_VERSION),
        "config": config_json,
        "ternary_format": ternary_format,
        "embedding_format": embedding_format,
        "tensors_crc32": tensors_crc32(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def read_packed(path: str | Path, *, verify: bool = True):
    """Read and check a packed file -> (config, tensors, metadata).

    Checks, each failing with one MulfreeError line: readable safetensors header and data,
    format name, version, config, ternary/embedding formats, CRC (when `verify`), and that the
    tensor names and shapes are exactly those the config implies.
    """
    from safetensors.torch import load_file

    from mulfree.models.mmfree import HGRNBitConfig

    file = weights_file(path)
    meta = read_metadata(file)
    name = meta.get("mulfree_format")
    if name != FORMAT_NAME:
        hint = " (a regular checkpoint: pack it with `mulfree convert`)" if name else ""
        raise MulfreeError(
            f"{file} is not a packed model: format {name!r}, expected {FORMAT_NAME!r}{hint}"
        )
    version = meta.get("mulfree_format_version", "")
    if not version.isdigit() or int(version) != FORMAT_VERSION:
        raise MulfreeError(
            f"{file} is packed format version {version!r}; this mulfree reads version {FORMAT_VERSION}"
        )
    try:
        config = HGRNBitConfig(**json.loads(meta["config"]))
    except MulfreeError as e:
        raise MulfreeError(f"{file}: bad config: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise MulfreeError(
            f"{file}: missing or unreadable config metadata ({_first_line(e)})"
        ) from None
    tfmt, efmt = meta.get("ternary_format"), meta.get("embedding_format")
    if tfmt not in TERNARY_FORMATS:
        raise MulfreeError(
            f"{file}: unknown ternary_format {tfmt!r} (expected one of {TERNARY_FORMATS})"
        )
    if efmt not in EMBEDDING_FORMATS:
        raise MulfreeError(
            f"{file}: unknown embedding_format {efmt!r} (expected one of {EMBEDDING_FORMATS})"
        )
    try:
        tensors = load_file(str(file))
    except Exception as e:
        raise MulfreeError(f"cannot read {file}: {_first_line(e)}") from None
    if verify and "tensors_crc32" in meta and tensors_crc32(tensors) != meta["tensors_crc32"]:
        raise MulfreeError(f"{file} is corrupt: tensor data CRC-32 does not match its header")
    check_tensors(tensors, expected_specs(config, tfmt, efmt), file)
    return config, tensors, meta


def expected_specs(config, ternary_format: str, embedding_format: str) -> dict[str, tuple]:
    """name -> (shape, dtype) of every tensor a packed file of `config` holds."""
    from mulfree.models.mmfree import HGRNBitForCausalLM
    from mulfree.ternary.bitlinear import BitLinear

    with torch.device("meta"):
        model = HGRNBitForCausalLM(config)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}
    specs: dict[str, tuple] = {}
    for key, t in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod in linears and leaf == "weight":
            m = linears[mod]
            nbytes = packing.packed_nbytes(ternary_format, m.out_features, m.in_features)
            specs[f"{mod}.weight_packed"] = ((nbytes,), torch.uint8)
            specs[f"{mod}.weight_scale"] = ((), torch.float32)
        elif key == "model.embeddings.weight":
            if embedding_format == "int8":
                specs["model.embeddings.weight_int8"] = (tuple(t.shape), torch.int8)
                specs["model.embeddings.weight_step"] = ((t.shape[0],), torch.float32)
            elif embedding_format == "int4":
                groups = -(-t.shape[1] // INT4_GROUP)
                specs["model.embeddings.weight_int4"] = ((t.shape[0], 16 * groups), torch.uint8)
                specs["model.embeddings.weight_step"] = ((t.shape[0], groups), torch.float32)
            else:
                specs[key] = (tuple(t.shape), getattr(torch, embedding_format))
        else:
            specs[key] = (tuple(t.shape), torch.float32)
    return specs


def check_tensors(tensors: dict[str, torch.Tensor], specs: dict[str, tuple], where) -> None:
    missing = sorted(set(specs) - set(tensors))
    if missing:
        raise MulfreeError(f"{where}: missing tensors: {', '.join(missing[:3])}"
                           + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))  # fmt: skip
    extra = sorted(set(tensors) - set(specs))
    if extra:
        raise MulfreeError(f"{where}: unexpected tensors: {', '.join(extra[:3])}"
                           + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""))  # fmt: skip
    for name in sorted(specs):
        shape, dtype = specs[name]
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise MulfreeError(
                f"{where}: shape mismatch for {name}: file has {tuple(t.shape)} {t.dtype}, "
                f"the config implies {shape} {dtype}"
            )


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer/generation files `src` has into `dst`; returns their names."""
    copied = []
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
                copied.append(name)
    return copied
