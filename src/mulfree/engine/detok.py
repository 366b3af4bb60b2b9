"""Incremental detokenizing: text as tokens arrive, linear in their number, never half a character.

`Detokenizer` is the one owner (`mulfree generate` streams through it, the server's scheduler
too). Each token decodes a short window only — the tokens since the last emitted piece plus a
few before it (the prefix/read offsets of transformers' and TGI's streamers) — and emits the text
that grew past the window's previous decode. Text ending in U+FFFD (a UTF-8 sequence split across
tokens) or not extending the previous decode is held back until more tokens come; `flush()`
emits what is left. The window may start inside the prompt (`prompt_ids`), so tokenizers that
drop a leading space at the start of a decode still produce it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

CONTEXT = 4  # prompt tokens the first window starts with


class Detokenizer:
    """`add(token) -> new text`, `flush() -> the rest`. `decode`: a function ids -> str, or an
    object with `.decode(ids)` (a server backend: special tokens skipped)."""

    def __init__(self, decode: Callable[[list[int]], str] | object, prompt_ids: Sequence[int] = ()):
        self.decode = decode if callable(decode) else decode.decode
        self.ids = list(prompt_ids[-CONTEXT:]) if prompt_ids else []
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, tok: int) -> str:
        self.ids.append(int(tok))
        before = self.decode(self.ids[self.prefix : self.read])
        now = self.decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before) :]
        return ""  # nothing new yet, or an incomplete character: wait for more tokens

    def flush(self) -> str:
        before = self.decode(self.ids[self.prefix : self.read])
        now = self.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return now[len(before) :] if len(now) > len(before) else ""
