"""mulfree._swap.swap_modules_: the one module-swap loop every in-place transformation uses."""

from __future__ import annotations

import torch
from torch import nn

from mulfree._swap import swap_modules_
from mulfree.attention import LMulConfig
from mulfree.lmul.formats import canonical_name


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner  # a child: the wrapper holds the old module

    def forward(self, x):
        return self.inner(x) + 1


def _model():
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))


def test_swaps_what_replace_returns_in_order_and_keeps_the_rest():
    m = _model()
    x = torch.randn(3, 4)
    want = m(x)
    names = swap_modules_(m, lambda n, mod: Wrap(mod) if isinstance(mod, nn.Linear) else None)
    assert names == ["0", "1.0", "2"]
    assert isinstance(m[0], Wrap) and isinstance(m[1][0], Wrap) and isinstance(m[1][1], nn.ReLU)
    # the wrapped linears were not visited again (no Wrap(Wrap(...)))
    assert all(isinstance(w.inner, nn.Linear) for w in (m[0], m[1][0], m[2]))
    assert not torch.equal(m(x), want)


def test_children_of_a_replaced_module_are_not_visited():
    m = _model()
    seen = []

    def replace(name, mod):
        seen.append(name)
        return nn.Identity() if name == "1" else None

    assert swap_modules_(m, replace) == ["1"]
    assert "1.0" not in seen and "1.1" not in seen and isinstance(m[1], nn.Identity)
    assert swap_modules_(m, lambda n, mod: None) == []


def test_one_dtype_alias_table():
    assert canonical_name("BF16") == "bfloat16" and canonical_name("fp32") == "float32"
    assert canonical_name("e4m3") == "float8_e4m3fn" and canonical_name("float16") == "float16"
    # the attention config reads its dtype names through the same table
    assert LMulConfig(dtype="bf16").dtype == LMulConfig(dtype="bfloat16").dtype
    assert LMulConfig(dtype="fp16").dtype == LMulConfig(dtype="float16").dtype
