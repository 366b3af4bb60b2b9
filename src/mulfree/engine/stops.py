"""Stop strings over streamed text: where one occurs, and how much of a tail to hold back.

Shared by `mulfree generate` (engine/generate.py) and the server's scheduler: a streamed piece
is emitted only once it can no longer turn out to be the start of a stop string."""

from __future__ import annotations


def longest(stop: tuple[str, ...]) -> int:
    return max((len(s) for s in stop), default=1)


def find_stop(text: str, stop: tuple[str, ...], start: int) -> int | None:
    """Index of the earliest stop string in text[start:], or None."""
    hits = [i for s in stop if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def holdback(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    for k in range(min(len(text), longest(stop) - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stop):
            return k
    return 0
