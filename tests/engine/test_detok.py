"""The one incremental detokenizer (mulfree.engine.detok): exact text, linear work."""

from __future__ import annotations

from mulfree.engine.detok import Detokenizer


# a byte-level toy vocabulary: token i is byte i (UTF-8 characters span several tokens)
def _decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_rebuilds_the_text_and_never_emits_half_a_character():
    text = "ternary weights répondent ✓ — add-only"
    ids = list(text.encode())
    d = Detokenizer(_decode)
    pieces = [d.add(t) for t in ids]
    assert "".join(pieces) + d.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_work_is_linear_in_the_tokens():
    seen = []

    def counting(ids):
        seen.append(len(ids))
        return _decode(ids)

    n = 2000
    d = Detokenizer(counting, prompt_ids=list(b"prompt "))
    for t in b"abc " * (n // 4):
        d.add(t)
    assert sum(seen) <= 8 * n  # each token decodes a window of a few tokens, not the whole text
