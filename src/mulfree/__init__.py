"""mulfree: language models without floating-point multiplication in their heavy parts.

Public API (re-exports only). Heavy submodules are imported lazily.
"""

from mulfree.errors import MulfreeError

__version__ = "0.1.0"

__all__ = ["MulfreeError", "__version__", "lmul"]


def __getattr__(name):
    # Lazy submodule access keeps `import mulfree` cheap for the CLI.
    if name == "lmul":
        import importlib

        return importlib.import_module("mulfree.lmul")
    raise AttributeError(f"module 'mulfree' has no attribute {name!r}")
