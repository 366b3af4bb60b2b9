"""mulfree: language models without floating-point multiplication in their heavy parts.

Public API (re-exports only). Heavy submodules are imported lazily: `import mulfree` imports
neither torch nor transformers (the registration with transformers' Auto classes waits for them,
see the bottom of this file).

Layers (imports run downward; docs/layers.md, enforced by tests/test_layers.py): base (errors,
I/O, energy counter, data) -> numeric core (kernels, lmul, ops, ternary) -> models (models,
attention, hub) -> engine -> applications (train, eval) -> front ends (serve, report, CLIs).
"""

import os as _os

from mulfree.errors import MulfreeError

# OpenMP's idle spin. libgomp (one copy, shared with torch) reads it once, when it is loaded; its
# default (300000 spins: milliseconds of a busy core after every parallel region) made 2-thread
# decode calls stall 50-100 ms on cores that other processes share; 100000 spins stalled rarely
# there and decode as fast as the default on an idle machine, where 10000 (workers asleep between
# a step's calls) cost 13-17 % of decode speed (csrc/README.md, "Threads"). Takes effect when
# mulfree is imported before torch (the CLIs, the packed engine); a user's OMP_WAIT_POLICY or
# GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "100000")

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


# `import mulfree` makes model_type "hgrn_bit" known to transformers' AutoConfig / AutoModel /
# AutoModelForCausalLM registries, so `AutoModelForCausalLM.from_pretrained(dir)` loads MatMul-free
# checkpoints. Registering needs our model classes, i.e. torch and transformers' model code (seconds
# on a small machine), which the packed engine (mulfree.engine.lite) and `mulfree --help` never
# need. So the registration runs when transformers' Auto modules are loaded (at once if they
# already are): a post-import hook (wrapt), not an import of ours.


# Modules that can be the outermost half-loaded one when an Auto module loads: transformers' core
# (our classes import names from most of them) and our own modules the registration imports.
# When the registration had to wait, each one's hook retries it as it finishes.
_RETRY_HOOKS = ("transformers.configuration_utils", "transformers.modeling_utils",
                "transformers.modeling_layers", "transformers.modeling_outputs",
                "transformers.cache_utils", "transformers.generation",
                "transformers.conversion_mapping", "transformers.integrations",
                "transformers.trainer", "transformers.pipelines",
                "mulfree.models.hf_compat", "mulfree.models.transformerpp",
                "mulfree.engine.hf")  # fmt: skip
_pending = False  # an Auto module loaded while the registration could not run yet


def _initializing(mod) -> bool:
    # importlib marks a module's spec while its body runs (a post-import hook runs inside it)
    return bool(getattr(getattr(mod, "__spec__", None), "_initializing", False))


def _blocks(name: str) -> bool:
    # transformers' own machinery (Auto included) and what the registration imports of ours (a
    # module of transformers for one model, or of ours that the registration does not import,
    # may be the outermost import: modeling_bitnet importing modeling_utils, say)
    if name.startswith("mulfree.models.") or name == "mulfree.engine.hf":
        return True
    if not name.startswith("transformers."):
        return False
    return not name.startswith("transformers.models.") or name.startswith("transformers.models.auto")


def _register(_module=None) -> None:
    global _pending
    import sys

    for name in ("mulfree.models", "mulfree.models.mmfree"):
        pkg = sys.modules.get(name)
        if pkg is not None and not getattr(pkg, "_READY", False):
            return  # being imported (it loads transformers): it registers when done
    for name, mod in list(sys.modules.items()):
        if mod is not _module and _blocks(name) and _initializing(mod):
            # half loaded (modeling_utils imports configuration_auto on its way, modeling_layers
            # imports modeling_utils ...): our classes import its names, so register when it
            # has finished (its retry hook follows)
            _pending = True
            return
    auto = sys.modules.get("transformers.models.auto.modeling_auto")
    if auto is not None and not hasattr(auto, "AutoModelForCausalLM"):
        return  # configuration_auto finished inside modeling_auto's import: its own hook follows
    _pending = False
    from mulfree.models import register_with_transformers

    register_with_transformers()
    if "transformers.models.auto.modeling_auto" in sys.modules:
        # packed directories (model_type hgrn_bit_packed) load through load_packed
        from mulfree.engine.hf import register_packed_with_transformers

        register_packed_with_transformers()


def _retry(module) -> None:
    if _pending:
        _register(module)


def _install_hooks() -> None:
    import wrapt

    for name in ("transformers.models.auto.configuration_auto",
                 "transformers.models.auto.modeling_auto"):  # fmt: skip
        wrapt.register_post_import_hook(_register, name)
    for name in _RETRY_HOOKS:
        wrapt.register_post_import_hook(_retry, name)


_install_hooks()
