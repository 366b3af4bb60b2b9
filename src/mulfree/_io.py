"""Writing outputs so that nothing is lost and nothing is half-written.

* `atomic_write_text` / `save_figure`: one file, written beside its destination, fsync'ed and
  renamed over it: a reader sees the old file or the new one, never a part.
* `output_dir(dst, force=...)`: a whole result folder (a packed model, a report). The content is
  written into a temporary sibling folder; only when it is complete does it take DST's place.
  A non-empty DST is refused unless `force`, and with `force` the old folder is replaced as a
  whole (never a mix of old and new files).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mulfree.errors import MulfreeError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a folder (a rename into it is durable afterwards), where the filesystem allows it."""
    try:
        _fsync(path)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def finish_file(tmp: Path, path: Path) -> None:
    """fsync the complete file `tmp`, then rename it over `path` (and fsync the folder).

    The file gets the mode a plain open() would give it (mkstemp, and some writers such as
    safetensors, create files 0600)."""
    os.chmod(tmp, 0o666 & ~_umask())
    _fsync(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """`with atomic_file(p) as tmp: write tmp` -> tmp (a fresh sibling of p) replaces p on success;
    on any error tmp is removed and p is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, suffix)
    try:
        yield tmp
        finish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(Path(path), ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def _protected(dst: Path) -> str | None:
    """Why `dst` must never be replaced as a whole, or None."""
    real = Path(os.path.realpath(dst))
    if real == Path(real.anchor):
        return "it is a filesystem root"
    home = Path(os.path.realpath(Path.home()))
    if real == home or real in home.parents:
        return "it is your home folder or one of its parents"
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == cwd or real in cwd.parents:
        return "it is the current folder or one of its parents"
    return None


def check_output_file(path: Path, *, force: bool, flag: str = "--force", hint: str = "") -> None:
    """Refuse to overwrite an existing file (or anything that is not a regular file) unless
    `force`."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise MulfreeError(f"output {path} exists and is not a regular file")
    if path.exists() and not force:
        raise MulfreeError(f"output {path} exists; pass {flag} to overwrite it{hint}")


def check_output_dir(dst: Path, *, force: bool, keep: Iterable[Path] = (), flag: str = "--force",
                     own: Iterable[str] = ()):  # fmt: skip
    """Refuse a destination folder that writing would destroy; returns None when DST may be used.

    Refused: DST is a file; DST is not empty and not `force` (a folder holding only files named
    in `own`, the command's own earlier output, counts as empty); DST is or holds one of `keep`
    (the inputs; symlinks and `..` resolved); with `force`, DST holds sub-folders (a result
    folder is flat: this is someone's project, not an earlier output) or is the root, home or
    current folder.
    """
    dst = Path(dst)
    real = Path(os.path.realpath(dst))
    for k in keep:
        rk = Path(os.path.realpath(k))
        if real == rk or real in rk.parents:
            raise MulfreeError(f"destination {dst} must differ from the source {k} and not hold it")
    if dst.exists() and not dst.is_dir():
        raise MulfreeError(f"destination {dst} exists and is not a directory")
    if not dst.is_dir():
        return
    entries = sorted(p.name for p in dst.iterdir())
    own = set(own)
    if all(e in own and (dst / e).is_file() for e in entries):
        return  # empty, or only this command's earlier result
    if not force:
        shown = ", ".join(entries[:3]) + (f" (+{len(entries) - 3} more)" if len(entries) > 3 else "")
        raise MulfreeError(
            f"destination {dst} is not empty ({shown}); choose an empty or new folder, or pass "
            f"{flag} to replace it as a whole"
        )
    why = _protected(dst)
    if why is None and any(p.is_dir() and not p.is_symlink() for p in dst.iterdir()):
        why = "it holds sub-folders (an output folder is flat)"
    if why:
        raise MulfreeError(f"refusing to replace {dst} even with {flag}: {why}")


@contextmanager
def output_dir(dst: Path, *, force: bool = False, keep: Iterable[Path] = (),
               flag: str = "--force", own: Iterable[str] = ()) -> Iterator[Path]:  # fmt: skip
    """`with output_dir(dst, force=...) as tmp: write files into tmp` -> tmp becomes `dst`.

    Checks DST first (see check_output_dir). The files are written into a temporary sibling
    folder; on success each is fsync'ed and the folder renamed into place (an existing DST, empty
    or replaced with `force`, is moved aside first and deleted after). On any error, or if the
    process dies, DST is as it was; a killed run leaves only a hidden `.DST.*.tmp` sibling.
    """
    dst = Path(dst)
    check_output_dir(dst, force=force, keep=keep, flag=flag, own=own)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; an output folder is a plain folder
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
        fsync_dir(tmp)
        old = None
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / "d")  # DST moves aside whole (it may be empty)
        try:
            os.replace(tmp, dst)
        except BaseException:
            if old is not None:
                os.replace(old / "d", dst)  # put the old folder back
            raise
        fsync_dir(dst.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
