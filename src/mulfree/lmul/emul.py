"""The elementwise-multiply switch of the fully multiplication-free MatMul-free model.

Modules that multiply elementwise (gates, the recurrence, norm scaling, the GLU product) hold an
`ElementwiseMul` and call it instead of `*`. In "exact" mode it is the ordinary product (and
`silu` is F.silu, so results are bit-identical to the plain model); in "lmul" mode every product
is an L-Mul (`mulfree.lmul.lmul`, optionally with k mantissa bits), differentiable with L-Mul
products in the backward pass as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mulfree.errors import MulfreeError

KINDS = ("exact", "lmul")


class ElementwiseMul:
    """a * b, exactly or as an L-Mul. Broadcasting as torch."""

    def __init__(self, kind: str = "exact", mantissa_bits: int | None = None):
        if kind not in KINDS:
            raise MulfreeError(f"elementwise_mul must be one of {', '.join(KINDS)}; got {kind!r}")
        if mantissa_bits is not None and not (
            isinstance(mantissa_bits, int) and 1 <= mantissa_bits <= 23
        ):
            raise MulfreeError(
                f"elementwise_mul_bits must be in 1..23 or None; got {mantissa_bits!r}"
            )
        self.kind = kind
        self.mantissa_bits = mantissa_bits

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def __call__(self, a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
        if self.exact:
            return a * b
        from mulfree.lmul import lmul

        if not isinstance(b, torch.Tensor):
            b = torch.tensor(b, dtype=a.dtype)
        dt = torch.promote_types(a.dtype, b.dtype)
        k = self.mantissa_bits
        if k is not None and dt != torch.float32:
            k = min(k, torch.finfo(dt).nmant)
        return lmul(a.to(dt), b.to(dt), mantissa_bits=k)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(x): F.silu when exact, else the product as an L-Mul."""
        return F.silu(x) if self.exact else self(x, torch.sigmoid(x))

    def __repr__(self) -> str:
        bits = "" if self.mantissa_bits is None else f", mantissa_bits={self.mantissa_bits}"
        return f"ElementwiseMul({self.kind!r}{bits})"
