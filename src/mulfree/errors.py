"""The one exception type that the CLI turns into a single `mulfree: error: ...` line."""


class MulfreeError(ValueError):
    """A user-facing error: bad input, bad file, bad option. Its message is one clear line."""
