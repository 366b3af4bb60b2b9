"""The packed model file: one safetensors file that says what it is.

Metadata (`__metadata__`, all strings):
    mulfree_format          "mulfree.packed_hgrn_bit"
    mulfree_format_version  "2" (version 1 files, without model_family, still load)
    model_family            "hgrn_bit" (absent in version 1) or "bitnet" (BitNet b1.58 / 1.58-bit
                            Llama: its tensors, `head_format` and `bitnet_layout` are described
                            in mulfree.engine.bitnet_model)
    config                  the HGRNBitConfig (bitnet: transformers' BitNetConfig) as JSON
    ternary_format          "tq2" (2 bits/weight, the kernels' layout) or "tq1" (1.6 bits/weight)
    embedding_format        "float32" | "bfloat16" | "float16" | "int8" | "int4"
    tensors_crc32           CRC-32 of every tensor's bytes, in sorted-name order (hex)
    metadata_crc32          CRC-32 of the other metadata entries (see metadata_crc32); files
                            written before it existed load without it
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
from pathlib import Path

import torch

from mulfree import tensorfile
from mulfree._memory import check_fits_memory
from mulfree.engine.header import (  # noqa: F401  (FORMAT_*, WEIGHTS_FILE, weights_file: re-exported)
    FORMAT_NAME,
    FORMAT_VERSION,
    READ_VERSIONS,
    WEIGHTS_FILE,
    check_against_config,
    check_identity,
    config_metadata,
    first_line,
    metadata_crc32,
    model_family,
    weights_file,
)
from mulfree.errors import MulfreeError
from mulfree.tensorfile import read_metadata, tensors_crc32  # noqa: F401  (re-exported)
from mulfree.ternary import packing

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
    "chat_template.jinja",
)


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[tuple, object]]]:
    """(`__metadata__`, name -> (shape, torch dtype or safetensors dtype name)) of a safetensors
    file, read from its header alone (mulfree.tensorfile.read_header with torch dtypes)."""
    meta, specs = tensorfile.read_header(path)
    return meta, {k: (shape, tensorfile.torch_dtype(d)) for k, (shape, d) in specs.items()}


def looks_packed(path: str | Path) -> bool:
    """True when `path` is meant as a packed model, readable or not (`mulfree.models.resolve`'s
    rule: any file, a directory whose config.json says model_type `hgrn_bit_packed`, or a
    directory with model.safetensors but no config.json / trainer_state.json, as packed
    directories were before they became Hugging Face directories). Loading it then says
    precisely what is wrong with the file, instead of treating a damaged packed folder as a
    checkpoint without config.json."""
    from mulfree.models.resolver import looks_packed as rule

    return rule(Path(path))


# --- the Hugging Face side of a packed directory -------------------------------------------
# A packed directory is also a Hugging Face model directory: config.json (the model's config
# with model_type `hgrn_bit_packed`, which `import mulfree` registers with the Auto classes,
# and the packing under "mulfree_packed"), generation_config.json, the tokenizer (with a chat
# template) and a model card with Hub front matter. The weights file stays the one source of
# truth: it carries its own config and format (loading never needs config.json, so packed
# directories written before config.json existed still load).
from mulfree.models.resolver import PACKED_MODEL_TYPE  # noqa: E402  (the resolver's rule uses it)

CARD_TAGS = ("mulfree", "hgrn_bit", "matmul-free", "ternary", "packed")


def hf_model_type(path: Path) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def hf_config(config_json: str, ternary_format: str, embedding_format: str) -> dict:
    """The config.json of a packed directory."""
    d = json.loads(config_json)
    d["model_type"] = PACKED_MODEL_TYPE
    d["architectures"] = ["PackedHGRNBitForCausalLM"]
    d["mulfree_packed"] = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                           "ternary_format": ternary_format,
                           "embedding_format": embedding_format, "weights": WEIGHTS_FILE}  # fmt: skip
    return d


def model_card(src_readme: Path | None, *, name: str, ternary_format: str,
               embedding_format: str) -> str:  # fmt: skip
    """README.md of a packed directory: the source's card (front matter and text) carried
    over, with Hub front matter (library_name, pipeline_tag, tags) and a note on the packing."""
    from mulfree.models.card import hub_card

    return hub_card(src_readme, title=name, section="## Packed by mulfree", tags=CARD_TAGS, text=(
        f"{ternary_format} ternary weights, {embedding_format} embeddings, in one safetensors "
        "file (`mulfree convert`). Load it with `mulfree generate -m DIR`, `mulfree serve -m "
        "DIR`, or in Python after `import mulfree`: `AutoModelForCausalLM.from_pretrained(DIR)` "
        '/ `pipeline("text-generation", model=DIR)`.'
    ))  # fmt: skip


def write_hf_files(dst: Path, config_json: str, ternary_format: str, embedding_format: str, *,
                   src_dir: Path | None = None, name: str | None = None) -> list[str]:  # fmt: skip
    """Write config.json, generation_config.json (unless copied from the source) and README.md
    into the packed directory `dst`; returns their names."""
    from mulfree._io import atomic_write_text

    cfg = hf_config(config_json, ternary_format, embedding_format)
    written = ["config.json"]
    atomic_write_text(dst / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if not (dst / "generation_config.json").is_file():
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if cfg.get(k) is not None}  # fmt: skip
        atomic_write_text(dst / "generation_config.json", json.dumps(gen, indent=2) + "\n")
        written.append("generation_config.json")
    if (dst / "tokenizer_config.json").is_file() and not (dst / "chat_template.jinja").is_file():
        try:
            has = json.loads((dst / "tokenizer_config.json").read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            has = None
        if not has:  # a base LM's tokenizer: the role-tagged template the server falls back to
            from mulfree.data.tokenizer import SIMPLE_CHAT_TEMPLATE

            atomic_write_text(dst / "chat_template.jinja", SIMPLE_CHAT_TEMPLATE)
            written.append("chat_template.jinja")
    readme = src_dir / "README.md" if src_dir is not None else None
    card = model_card(readme, name=name or dst.name, ternary_format=ternary_format,
                      embedding_format=embedding_format)  # fmt: skip
    atomic_write_text(dst / "README.md", card)
    written.append("README.md")
    return written


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
    embedding_format: str, family: str = "hgrn_bit", extra: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Write tensors + metadata atomically (a temporary sibling, fsync'ed, renamed over `path`).
    `extra`: family-specific metadata entries (bitnet: head_format, bitnet_layout)."""
    meta = {
        **tensorfile.PACKED.stamp(),
        "model_family": family,
        "config": config_json,
        "ternary_format": ternary_format,
        "embedding_format": embedding_format,
        **(extra or {}),
        "tensors_crc32": tensors_crc32(tensors),
    }
    meta["metadata_crc32"] = metadata_crc32(meta)
    tensorfile.write_tensors(path, tensors, meta)


def _parse_config(file: Path, meta: dict[str, str]):
    from mulfree.models.mmfree import HGRNBitConfig

    raw = config_metadata(meta, file)
    try:
        return HGRNBitConfig(**raw)
    except MulfreeError as e:
        raise MulfreeError(f"{file}: bad config: {e}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise MulfreeError(f"{file}: bad config: {first_line(e)}") from None


def check_finite(tensors: dict[str, torch.Tensor], where) -> None:
    """Refuse NaN/inf in any floating-point tensor, naming the first such tensor."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise MulfreeError(
                f"{where}: tensor {name} holds {bad} non-finite values (NaN or inf) of {t.numel()}"
            )


def read_packed(path: str | Path, *, verify: bool = True):
    """Read and check a packed file -> (config, tensors, metadata).

    Checks, each failing with one MulfreeError line, all but the last two before any tensor is
    read: readable safetensors header, format name, version, metadata CRC (when `verify`), config
    (every field bounded, see HGRNBitConfig), ternary/embedding formats, that the config's layer
    count and embedding shape are those of the tensors present, and that the tensor names, shapes
    and dtypes are exactly those the config implies; then the data CRC (when `verify`) and that
    no float tensor holds NaN/inf. A bitnet file (model_family "bitnet") returns a BitNetConfig
    and is checked against mulfree.engine.bitnet_model's tensor list.
    """
    file = weights_file(path)
    meta, header = read_header(file)
    check_identity(meta, file, verify=verify)
    if model_family(meta, file) == "bitnet":
        from mulfree.engine.bitnet_model import read_header_specs

        config, specs = read_header_specs(file, meta)
        check_against_config(config.to_dict(), {k: v[0] for k, v in header.items()}, file)
        check_tensors(header, specs, file)
        return config, _load_checked(file, meta, verify), meta
    config = _parse_config(file, meta)
    tfmt, efmt = meta.get("ternary_format"), meta.get("embedding_format")
    if tfmt not in TERNARY_FORMATS:
        raise MulfreeError(
            f"{file}: unknown ternary_format {tfmt!r} (expected one of {TERNARY_FORMATS})"
        )
    if efmt not in EMBEDDING_FORMATS:
        raise MulfreeError(
            f"{file}: unknown embedding_format {efmt!r} (expected one of {EMBEDDING_FORMATS})"
        )
    check_against_config(config.to_dict(), {k: v[0] for k, v in header.items()}, file)
    check_tensors(header, expected_specs(config, tfmt, efmt), file)
    return config, _load_checked(file, meta, verify), meta


def _load_checked(file: Path, meta: dict[str, str], verify: bool) -> dict[str, torch.Tensor]:
    """The tensors of a file whose header was checked: data CRC (when `verify`), finite."""
    check_fits_memory(file.stat().st_size, f"loading {file}")  # read whole into memory below
    tensors = tensorfile.read_tensors(file)
    if verify:
        tensorfile.check_tensors_crc(tensors, meta, file)
    check_finite(tensors, file)
    return tensors


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


def check_tensors(tensors: dict, specs: dict[str, tuple], where) -> None:
    """Names, shapes and dtypes of `tensors` (tensors, or name -> (shape, dtype) as read_header
    gives) must be exactly `specs`."""
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
        got_shape, got_dtype = (t.shape, t.dtype) if isinstance(t, torch.Tensor) else t
        if tuple(got_shape) != shape or got_dtype != dtype:
            raise MulfreeError(
                f"{where}: shape mismatch for {name}: file has {tuple(got_shape)} {got_dtype}, "
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
