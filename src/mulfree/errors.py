"""The one exception type that the CLI turns into a single `mulfree: error: ...` line."""


class MulfreeError(ValueError):
    """A user-facing error: bad input, bad file, bad option. Its message is one clear line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
