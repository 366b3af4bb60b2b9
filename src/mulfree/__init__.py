"""mulfree: language models without floating-point multiplication in their heavy parts.

Public API (re-exports only). Heavy submodules are imported lazily, except that the
transformers registration at the bottom imports the model classes.
"""

from mulfree.errors import MulfreeError

__version__ = "0.1.0"

__all__ = ["LMulConfig", "MulfreeError", "__version__", "apply_lmul_", "lmul", "remove_lmul_"]

# Public names served lazily from submodules: name -> module.
_LAZY = {name: "mulfree.attention" for name in ("LMulConfig", "apply_lmul_", "remove_lmul_")}


def __getattr__(name):
    # Lazy submodule access keeps `import mulfree` cheap for the CLI.
    if name == "lmul":
        import importlib

        return importlib.import_module("mulfree.lmul")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mulfree' has no attribute {name!r}")


# `import mulfree` registers model_type "hgrn_bit" with transformers' AutoConfig / AutoModel /
# AutoModelForCausalLM registries, so `AutoModelForCausalLM.from_pretrained(dir)` loads MatMul-free
# checkpoints. Registration needs the model classes, so it imports torch and transformers (~8 s
# on a small machine). The `mulfree` command defers it to after parsing its command line
# (`mulfree.cli.main`), so `mulfree --help` and usage errors answer at once.


def _register() -> None:
    from mulfree.models import register_with_transformers

    register_with_transformers()


def _in_console_script() -> bool:
    import os
    import sys

    return bool(sys.argv) and os.path.basename(sys.argv[0]) in ("mulfree", "mulfree.exe")


if not _in_console_script():
    _register()
