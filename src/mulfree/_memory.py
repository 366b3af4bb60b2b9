"""How much memory this machine (or this container) has: the bound a model must fit in before
anything is allocated for it."""

from __future__ import annotations

import os
from pathlib import Path

from mulfree.errors import MulfreeError


def memory_limit_bytes() -> int | None:
    """Physical memory, or the cgroup (container) limit when that is lower; None if unknown."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        limit = None
    for f in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            v = f.read_text().strip()
        except OSError:
            continue
        if v.isdigit() and (limit is None or int(v) < limit):
            limit = int(v)
    return limit


def check_fits_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Refuse, in one line, to build something that needs more bytes than the machine has
    (`hint`: what to do instead, appended to the line)."""
    limit = memory_limit_bytes()
    if limit is not None and nbytes > limit:
        raise MulfreeError(
            f"{what} needs {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{limit / 2**30:.1f} GiB of memory" + (f": {hint}" if hint else "")
        )
