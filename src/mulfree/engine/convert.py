"""`convert`: pack a MatMul-free checkpoint (ours or an official `hgrn_bit` one), or a BitNet
b1.58 checkpoint in the official layout (see mulfree.engine.bitnet_model), into one file.

Ternary weights are quantized with BitLinear's rule (absmean scale, in float32: what the
PyTorch model computes for float32 weights) and packed as tq1 (1.6 bits/weight, default) or tq2
(2 bits, the kernels' layout). The token embedding is kept as float32/bfloat16/float16 or
stored as int8 rows with a float32 step each (default: with tq1 this keeps MMfreeLM-370M under
100 MB; bfloat16 embeddings would add 65 MB). Norms and lower bounds stay float32.
Checkpoints are read tensor by tensor (safetensors), so converting needs little memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mulfree._io import check_output_dir, output_dir
from mulfree.engine import format as fmt
from mulfree.engine.modules import Int4Embedding, Int8Embedding
from mulfree.errors import MulfreeError
from mulfree.tensorfile import TensorFiles
from mulfree.ternary import packing
from mulfree.ternary.packed_linear import PackedTernaryLinear


@dataclass
class ConvertConfig:
    """What `convert` writes. ternary_format: "tq1" | "tq2"; embeddings: see format.EMBEDDING_FORMATS."""

    src: str
    dst: str
    ternary_format: str = "tq1"
    embeddings: str = "int8"
    force: bool = False  # replace a non-empty DST as a whole (else it is refused)
    no_tokenizer: bool = False  # write a model without tokenizer files (else: refused)
    head: str = "int8"  # BitNet models: the output head's storage (engine.bitnet_model)

    def __post_init__(self):
        from mulfree.engine.bitnet_model import HEAD_FORMATS

        if self.head not in HEAD_FORMATS:
            raise MulfreeError(f"head must be one of {', '.join(HEAD_FORMATS)}, got {self.head!r}")
        if self.ternary_format not in fmt.TERNARY_FORMATS:
            raise MulfreeError(
                f"ternary format must be one of {', '.join(fmt.TERNARY_FORMATS)}, got {self.ternary_format!r}"
            )
        if self.embeddings not in fmt.EMBEDDING_FORMATS:
            raise MulfreeError(
                f"embeddings must be one of {', '.join(fmt.EMBEDDING_FORMATS)}, got {self.embeddings!r}"
            )


@dataclass
class ConvertResult:
    path: Path  # the packed safetensors file
    nbytes: int  # its size
    tokenizer_files: list[str]
    hf_files: list[str] = field(default_factory=list)  # config.json, README.md, ... written


def _embedding_tensors(emb, efmt: str) -> dict:
    """The embedding in format `efmt`, from a float table or a quantized embedding module
    (kept as it is when already in `efmt`, else decoded to float and re-encoded)."""
    if isinstance(emb, (Int8Embedding, Int4Embedding)):
        if efmt == emb.fmt:
            return {f"model.embeddings.{k}": t for k, t in emb.state_dict().items()}
        w = emb.dequantize()
    else:
        w = emb.detach().float()
    if efmt == "int8":
        q, s = Int8Embedding.quantize(w)
        return {"model.embeddings.weight_int8": q, "model.embeddings.weight_step": s}
    if efmt == "int4":
        codes, s = Int4Embedding.quantize(w)
        return {"model.embeddings.weight_int4": codes, "model.embeddings.weight_step": s}
    return {"model.embeddings.weight": w.to(getattr(torch, efmt))}


def _pack_all(config, linear, tensor, embedding, tfmt: str, efmt: str) -> dict[str, torch.Tensor]:
    """Walk the tensors a packed file of `config` holds, pulling each from the source.

    linear(module_name) -> PackedTernary; tensor(key) -> float tensor; embedding() -> dict.
    """
    out: dict[str, torch.Tensor] = {}
    for key in fmt.expected_specs(config, tfmt, efmt):
        mod, _, leaf = key.rpartition(".")
        if leaf == "weight_packed":
            p = linear(mod).to_format(tfmt)
            out[key], out[f"{mod}.weight_scale"] = p.data, p.scale.clone()
        elif leaf == "weight_scale":
            continue
        elif key.startswith("model.embeddings."):
            out.update(embedding())
        else:
            out[key] = tensor(key).detach().float().contiguous()
    return out


def packed_tensors_from_model(
    model, tfmt: str = "tq1", efmt: str = "int8"
) -> dict[str, torch.Tensor]:
    """Tensors of the packed format from an in-memory HGRNBitForCausalLM (float or packed)."""
    mods = dict(model.named_modules())
    sd = model.state_dict()

    def linear(name):
        m = mods[name]
        if isinstance(m, PackedTernaryLinear):
            return m.packed()
        return packing.PackedTernary.from_float(m.weight.detach().float(), "tq2")

    def embedding():
        emb = model.model.embeddings
        return _embedding_tensors(emb if hasattr(emb, "dequantize") else emb.weight, efmt)

    return _pack_all(model.config, linear, lambda k: sd[k], embedding, tfmt, efmt)


def save_packed(
    model, dst: str | Path, *, ternary_format: str = "tq1", embedding_format: str = "int8"
) -> Path:
    """Write an in-memory HGRNBitForCausalLM (float or packed) as DST/model.safetensors, with
    the Hugging Face files beside it (`mulfree.engine.format.write_hf_files`)."""
    ConvertConfig("", str(dst), ternary_format, embedding_format)  # validates
    tensors = packed_tensors_from_model(model, ternary_format, embedding_format)
    path = Path(dst) / fmt.WEIGHTS_FILE
    config_json = model.config.to_json_string(use_diff=False)
    fmt.write_packed(path, tensors, config_json, ternary_format, embedding_format)
    # config.json, generation_config.json, README.md: a Hugging Face directory (a card already
    # there is carried over)
    fmt.write_hf_files(path.parent, config_json, ternary_format, embedding_format,
                       src_dir=path.parent)  # fmt: skip
    return path


def resolve_checkpoint(src: Path) -> tuple[Path, dict, list[Path], Path]:
    """Where a source's weights are: (folder, raw model config, weight files, tokenizer folder).

    Accepts what `mulfree.models.resolve` calls a checkpoint: a model folder (config.json +
    *.safetensors: ours, or an official hgrn_bit one), a `mulfree train` run folder (its exported
    model/, else its newest checkpoint) and one checkpoints/step_* folder (config from
    trainer_state.json, weights from model.safetensors; the tokenizer from the run folder).
    """
    from mulfree.models.resolver import classify
    from mulfree.models.runs import read_trainer_state

    try:
        source = classify(src)
    except MulfreeError:
        source = None
    if source is None or source.kind != "checkpoint":
        raise MulfreeError(
            f"no config.json in {src} (expected an hgrn_bit checkpoint, a training run or a packed model)"
        )
    src = source.path
    if (src / "config.json").is_file():
        cfg_file = src / "config.json"
        try:
            raw = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise MulfreeError(f"cannot read {cfg_file}: {e}") from None
        return src, raw, sorted(src.glob("*.safetensors")), source.tokenizer_dir
    raw = read_trainer_state(src).get("model_config")
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise MulfreeError(f"checkpoint {src} has no model.safetensors")
    return src, raw, [weights], source.tokenizer_dir  # <run>/checkpoints/step_N -> <run>


def pack_checkpoint(src: Path, tfmt: str, efmt: str):
    """(config, tensors, tokenizer folder) packed from a checkpoint (see resolve_checkpoint),
    read tensor by tensor (`mulfree.engine.model.build_packed` makes the model of them)."""
    from mulfree.models.loading import check_checkpoint
    from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM

    src, raw, files, tok_dir = resolve_checkpoint(src)
    if not isinstance(raw, dict) or raw.get("model_type") != "hgrn_bit":
        got = raw.get("model_type") if isinstance(raw, dict) else None
        raise MulfreeError(
            f"{src} holds model_type {got!r}; only hgrn_bit (MatMul-free) and BitNet b1.58 (model_type bitnet, or llama with a bitnet quantization_config) models can be packed"
        )
    try:
        config = HGRNBitConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise MulfreeError(f"{src}: bad model config: {e}") from None
    # names, shapes, format metadata: one line
    check_checkpoint(HGRNBitForCausalLM, config, src, files)
    with TensorFiles(files, src) as weights:

        def tensor(key):
            if key not in weights and key == "lm_head.weight" and config.tie_word_embeddings:
                key = "model.embeddings.weight"
            t = weights.get(key)
            fmt.check_finite({key: t}, src)
            return t

        def linear(name):
            return packing.PackedTernary.from_float(tensor(f"{name}.weight").float(), "tq2")

        def embedding():
            return _embedding_tensors(tensor("model.embeddings.weight").float(), efmt)

        tensors = _pack_all(config, linear, tensor, embedding, tfmt, efmt)
    return config, tensors, tok_dir


# Any of these next to the weights lets `generate`/`serve` load a tokenizer.
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "vocab.json")


def convert(config: ConvertConfig | str, dst: str | None = None, **kw) -> ConvertResult:
    """Pack `src` into `dst`/model.safetensors: a model folder, a `mulfree train` run folder or
    one of its checkpoints/step_* folders (see resolve_checkpoint), or a packed file/dir to re-pack.

    `convert("ckpt", "out")` or `convert(ConvertConfig("ckpt", "out", "tq2", "float32"))`.
    A BitNet b1.58 checkpoint in the official layout (mulfree.models.bitnet.layout: model_type
    bitnet, or llama with a bitnet quantization_config) is packed as model_family "bitnet"
    (mulfree.engine.bitnet_model), its head stored as `head`.
    Tokenizer and generation files of the source directory are copied alongside; a source
    without a tokenizer is refused unless `no_tokenizer`. DST must be new or empty unless
    `force`, which replaces it as a whole; the output is written into a temporary sibling folder
    and renamed into place when complete (see mulfree._io.output_dir), so a failed or killed
    convert leaves DST as it was.
    """
    if not isinstance(config, ConvertConfig):
        config = ConvertConfig(str(config), str(dst), **kw)
    src, out_dir = Path(config.src), Path(config.dst)
    tfmt, efmt = config.ternary_format, config.embeddings
    if not src.exists():
        raise MulfreeError(f"source not found: {src}")
    _refuse_gguf(src)
    keep = [src] if src.is_dir() else [src, src.parent]
    if fmt.looks_packed(src) and _packed_family(src) == "bitnet":
        from mulfree.engine import bitnet_model as B

        src_dir = fmt.weights_file(src).parent
        keep.append(src_dir)
        check_output_dir(out_dir, force=config.force, keep=keep)
        _check_tokenizer(src_dir, config)
        model = B.load_packed_bitnet(src)
        tensors = B.model_tensors(model, tfmt, config.head, efmt)
        return _write(config, out_dir, keep, tensors, B.config_json(model.config), src_dir,
                      "bitnet", B.file_metadata(model.layout, config.head),
                      model.embedding_format if model.config.tie_word_embeddings else efmt)  # fmt: skip
    if src.is_dir() and not fmt.looks_packed(src) and is_bitnet_dir(src):
        from mulfree.engine import bitnet_model as B
        from mulfree.models.bitnet.layout import BitNetCheckpoint

        check_output_dir(out_dir, force=config.force, keep=keep)  # before minutes of packing
        _check_tokenizer(src, config)
        ck = BitNetCheckpoint(src)
        try:
            tensors = B.packed_tensors_from_checkpoint(ck, tfmt, efmt, config.head)
        finally:
            ck.close()
        efmt_file = config.head if ck.config.tie_word_embeddings else efmt
        return _write(config, out_dir, keep, tensors, B.config_json(ck.config), src, "bitnet",
                      B.file_metadata(ck.layout, config.head), efmt_file)  # fmt: skip
    if fmt.looks_packed(src):
        from mulfree.engine.model import load_packed

        src_dir = fmt.weights_file(src).parent
        keep.append(src_dir)
        check_output_dir(out_dir, force=config.force, keep=keep)  # before minutes of packing
        _check_tokenizer(src_dir, config)
        model = load_packed(src)
        tensors = packed_tensors_from_model(model, tfmt, efmt)
        model_config = model.config
    elif src.is_dir():
        _, _, _, tok_dir = resolve_checkpoint(src)
        keep.append(tok_dir)
        check_output_dir(out_dir, force=config.force, keep=keep)  # before minutes of packing
        _check_tokenizer(tok_dir, config)
        model_config, tensors, src_dir = pack_checkpoint(src, tfmt, efmt)
    else:
        raise MulfreeError(f"{src} is neither a packed model nor a checkpoint directory")
    with output_dir(out_dir, force=config.force, keep=keep) as tmp:
        path = tmp / fmt.WEIGHTS_FILE
        fmt.write_packed(path, tensors, model_config.to_json_string(use_diff=False), tfmt, efmt)
        copied = fmt.copy_tokenizer_files(src_dir, tmp)
        written = fmt.write_hf_files(tmp, model_config.to_json_string(use_diff=False), tfmt,
                                     efmt, src_dir=src_dir, name=out_dir.name)  # fmt: skip
        nbytes = path.stat().st_size
    return ConvertResult(out_dir / fmt.WEIGHTS_FILE, nbytes, copied, written)


def _write(config: ConvertConfig, out_dir: Path, keep: list, tensors: dict, config_json: str,
           src_dir: Path, family: str, extra: dict, efmt: str) -> ConvertResult:  # fmt: skip
    with output_dir(out_dir, force=config.force, keep=keep) as tmp:
        path = tmp / fmt.WEIGHTS_FILE
        fmt.write_packed(path, tensors, config_json, config.ternary_format, efmt, family, extra)
        copied = fmt.copy_tokenizer_files(src_dir, tmp)
        nbytes = path.stat().st_size
    return ConvertResult(out_dir / fmt.WEIGHTS_FILE, nbytes, copied)


def _refuse_gguf(src: Path) -> None:
    """A GGUF file (llama.cpp's format, magic b"GGUF") gets its own one-line answer."""
    file = src if src.is_file() else None
    if file is None and src.is_dir():
        ggufs = sorted(src.glob("*.gguf"))
        if ggufs and not (src / "config.json").is_file() and not (src / fmt.WEIGHTS_FILE).exists():
            file = ggufs[0]
    if file is None:
        return
    try:
        with open(file, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MulfreeError(f"cannot read {file}: {e}") from None
    if magic == b"GGUF":
        raise MulfreeError(
            f"{file} is a GGUF file (llama.cpp); `mulfree convert` packs safetensors checkpoints "
            "(a directory with config.json + *.safetensors)"
        )


def _packed_family(src: Path) -> str | None:
    try:
        return fmt.model_family(fmt.read_metadata(fmt.weights_file(src)), src)
    except MulfreeError:
        return None  # the hgrn_bit path reports what is wrong with the file


def is_bitnet_dir(src: Path) -> bool:
    from mulfree.models.bitnet.layout import is_bitnet_config

    cfg = src / "config.json"
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False  # resolve_checkpoint reports it
    return is_bitnet_config(raw)


def _check_tokenizer(tok_dir: Path, config: ConvertConfig) -> None:
    if config.no_tokenizer or any((tok_dir / n).is_file() for n in _TOKENIZER_CORE):
        return
    raise MulfreeError(
        f"no tokenizer next to the source ({', '.join(_TOKENIZER_CORE)} in {tok_dir}): "
        "`generate`/`serve` could not use the packed model; pass --no-tokenizer to pack it anyway "
        "(then give them --tokenizer DIR)"
    )
