"""The one module-swap loop: the in-place model transformations (`quantize_`, `apply_lmul_`,
`pack_model_`, the packed model's construction) each say only which module becomes what."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def swap_modules_(model: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> list[str]:
    """Replace, in place, every submodule of `model` for which `replace(name, module)` returns a
    module (None: keep it); returns the replaced names, in `named_modules()` order.

    The modules are listed before any swap, and the children of a replaced module are not
    visited (they left the model with it), so a replacement that holds the old module (a
    wrapper) is not swapped again.
    """
    done: list[str] = []
    for name, old in list(model.named_modules()):
        if not name or any(name.startswith(d + ".") for d in done):
            continue
        new = replace(name, old)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        done.append(name)
    return done
