"""Weight memory for the kernels: one arena on 2 MiB (transparent huge) pages.

A batch-1 ternary call streams its packed weights once, touching each 4 KiB page once: with
cold TLBs every page costs a page walk, and the hardware prefetchers stop at page boundaries.
Backing a model's packed weights with one anonymous mapping advised for transparent huge pages
(Linux `madvise(MADV_HUGEPAGE)`) removes most of that (the A/B measurement: docs/engine.md,
"Weight memory").

`Arena(nbytes)` is the mapping; `arena.tensor(offset, nbytes)` a uint8 tensor over a range of it,
each with its own storage (so safetensors does not see a model's weights as shared tensors).
Where huge pages are unavailable (not Linux, THP "never") the arena is ordinary anonymous memory
and everything works the same. `Arena.huge` says which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HUGE_PAGE = 2 << 20  # bytes: x86-64 transparent huge page size
ALIGN = 64  # bytes: every tensor in an arena starts on a cache line (and a full AVX-512 vector)
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str:
    """The kernel's transparent-huge-page setting: "always", "madvise", "never" or "unavailable"."""
    try:
        text = _THP.read_text()
    except OSError:
        return "unavailable"
    chosen = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else "unavailable"


def aligned(nbytes: int) -> int:
    """nbytes rounded up to the arena's alignment."""
    return -(-nbytes // ALIGN) * ALIGN


class Arena:
    """An anonymous private mapping of >= nbytes, 2 MiB aligned, advised for huge pages.

    The memory lives as long as any tensor handed out by `tensor` (each holds a reference).
    """

    def __init__(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"arena size must be >= 0, got {nbytes}")
        self.nbytes = nbytes
        size = max(nbytes, 1) + HUGE_PAGE  # slack to start on a 2 MiB boundary
        if hasattr(mmap, "MAP_PRIVATE"):  # private: shared anonymous memory is shmem (no THP)
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:  # Windows
            self._map = mmap.mmap(-1, size)
        self.huge = False
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None and thp_mode() in ("always", "madvise"):
            try:
                self._map.madvise(advice)
                self.huge = True
            except OSError:  # e.g. a kernel built without THP
                pass
        start = ctypes.addressof(ctypes.c_char.from_buffer(self._map))  # no torch needed
        self._base = (-start) % HUGE_PAGE
        self.address = start + self._base  # of byte 0

    # An arena is a place in this process's memory: a copy of an object that refers to one
    # refers to the same arena, and a pickled one to none (the tensors are what get copied).
    def __copy__(self) -> Arena:
        return self

    def __deepcopy__(self, memo) -> Arena:
        return self

    def __reduce__(self):
        return (_no_arena, ())

    def tensor(self, offset: int, nbytes: int) -> torch.Tensor:
        """uint8 [nbytes] over bytes [offset, offset + nbytes) of the arena (its own storage)."""
        import torch

        if nbytes == 0:
            self.buffer(offset, 0)  # checks the range
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(self.buffer(offset, nbytes), dtype=torch.uint8)

    def buffer(self, offset: int, nbytes: int) -> memoryview:
        """Bytes [offset, offset + nbytes) of the arena as a writable memoryview (no torch)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ValueError(
                f"range [{offset}, {offset + nbytes}) outside an arena of {self.nbytes} B"
            )
        start = self._base + offset
        return memoryview(self._map)[start : start + nbytes]


def _no_arena() -> None:
    return None


def copy_to_arena(tensors: list[torch.Tensor]) -> tuple[Arena, list[torch.Tensor]]:
    """Copies of contiguous CPU `tensors` laid out back to back (each ALIGN-aligned) in one
    new arena, with their dtypes and shapes; returns (arena, copies)."""
    import torch

    offsets, total = [], 0
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("copy_to_arena takes contiguous CPU tensors")
        offsets.append(total)
        total += aligned(t.numel() * t.element_size())
    arena = Arena(total)
    out = []
    for t, off in zip(tensors, offsets, strict=True):
        raw = arena.tensor(off, t.numel() * t.element_size())  # [nbytes] uint8
        view = raw.view(t.dtype).view(t.shape) if t.numel() else torch.empty_like(t)
        view.copy_(t)
        out.append(view)
    return arena, out


def trim_heap() -> bool:
    """Return memory that malloc holds free to the OS (glibc `malloc_trim(0)`); True if done.

    After a model's weights move into an arena, their old buffers are freed to malloc, which
    keeps them: measured on a packed 1.3B, resident memory 842 MiB after placing vs 743 without
    placing, back to 743 after the trim. A no-op where glibc is not the C library.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
