"""Registration of the compiled kernels as dispatcher ops `torch.ops.mulfree.<name>`.

A plain `torch.library.Library` definition (schema inferred from the Python signature, a CPU
kernel and a fake kernel), not `torch.library.custom_op`: the latter wraps every call in Python
autograd, in-place/view and dynamo-disable layers, ~100 us per call on the Zen 3 dev machine
(`[16, 1, 64] x [16, 64, 256]` L-Matmul: raw C call 106 / 125 us min / median, custom op
193 / 253, this definition 117 / 144; thread CPU time, loaded machine, interleaved), more than
the kernel itself at attention's decode shapes. What torch sees is the same: a schema with its
mutated `out`, shape/dtype checks before the C call, a fake implementation for tracing and
compile (torch.library.opcheck passes), and the energy counter prices the op by its name.
These ops return nothing and mutate only a fresh `out`, so they need no autograd kernel; the
differentiable wrappers (mulfree.lmul.ops._LMatmulFn) call them inside autograd.Function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_LIB = torch.library.Library("mulfree", "FRAGMENT")


def define_op(name: str, impl: Callable, fake: Callable, *, mutates_args: Sequence[str]) -> None:
    """Define mulfree::`name` with the schema of `impl`'s annotated signature (arguments in
    `mutates_args` written in place), `impl` as its CPU kernel and `fake` as its fake kernel."""
    schema = torch.library.infer_schema(impl, mutates_args=tuple(mutates_args))
    _LIB.define(name + schema)
    _LIB.impl(name, impl, "CPU")
    torch.library.register_fake(f"mulfree::{name}", fake, lib=_LIB)
