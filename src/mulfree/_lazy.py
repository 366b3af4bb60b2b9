"""Lazy public names for mulfree's packages (PEP 562).

A package's `__init__` lists its public names and the modules that define them; a name is
imported on first access (`from mulfree.eval import evaluate` works as usual). This keeps
`import mulfree.<package>` free of torch and transformers until a name that needs them is used,
so the `mulfree` command can build its parser (and answer `--help` or a usage error) without
importing either.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Package(types.ModuleType):
    """A package whose public name shadows its own submodule of that name (mulfree.engine's
    `convert` function, defined in mulfree.engine.convert): importing the submodule must not
    replace the function on the package, as eager `from .convert import convert` never did."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_SHADOWED", ()):
            return
        super().__setattr__(name, value)


def attach(package: str, names: dict[str, str]):
    """(__getattr__, __dir__) for `package` serving names[attr] from module names[attr]."""
    shadowed = {n for n, m in names.items() if m == f"{package}.{n}"}
    if shadowed:
        mod = sys.modules[package]
        mod._SHADOWED = frozenset(shadowed)
        mod.__class__ = _Package

    def __getattr__(attr: str):
        module = names.get(attr)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(module), attr)
        setattr(sys.modules[package], attr, value)  # later accesses skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
