"""Count the operations and bytes of what actually runs, by kind and width.

`EnergyCounter` is a context manager around a `TorchDispatchMode`: every aten op executed
inside it is classified (matrix products, elementwise, reductions, nonlinear functions, data
movement) and counted from its real shapes and dtypes. mulfree's own kernels (L-Mul, L-Matmul,
packed ternary linear) run in C or as emulations whose internal integer tensor ops are not the
operation being modelled; they declare their true op mix with `record(...)` inside `opaque()`,
which hides their internals from the mode.

Counts are keyed by (kind, bits):
  fp_mul, fp_add        floating multiply / add (bits = 8, 16, 32, 64)
  int_mul, int_add      integer multiply / add
  lmul                  one L-Mul: an integer add of the operands' width (paper Sec. 3)
  ternary_add           an add or subtract of a ternary product (weight +-1; zeros skipped)
  exp, log, div, rsqrt, sqrt, tanh, cmp   nonlinear / other, costed by composites
Bytes: weights read (tensors that are the model's parameters or buffers), activations read and
written. Ops the counter does not know are listed in `unknown` (name -> elements) and cost 0.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ACTIVE: list[EnergyCounter] = []
_OPAQUE_DEPTH = 0
# "namespace::name" of a custom op (torch.library) -> cost(counter, args, kwargs, out): the op's
# own formula for its ops and bytes, registered by the op's launcher (mulfree.kernels.*)
_OP_COSTS: dict = {}


def register_op_cost(qualname: str, cost) -> None:
    """Price the custom op `qualname` ("mulfree::tq2_linear") with `cost(counter, args, kwargs,
    out)`, which adds to `counter.counts` / `counter.bytes` what one call does."""
    _OP_COSTS[qualname] = cost


def price_as(qualname: str, args: tuple, kwargs: dict | None = None, out=None) -> None:
    """Add one call of the custom op `qualname` with these arguments to every active counter,
    by its registered formula: for an op's torch twin (run inside `opaque()`), so both
    implementations of one operation cost the same."""
    if _ACTIVE:
        cost = _OP_COSTS[qualname]
        for c in _ACTIVE:
            cost(c, args, kwargs or {}, out)


def record(kind: str, bits: int, count: int) -> None:
    """Add `count` operations of (kind, bits) to every active counter (no-op when none)."""
    for c in _ACTIVE:
        c.counts[(kind, int(bits))] += int(count)


def record_bytes(weight_read: int = 0, act_read: int = 0, act_write: int = 0) -> None:
    for c in _ACTIVE:
        c.bytes["weight_read"] += int(weight_read)
        c.bytes["act_read"] += int(act_read)
        c.bytes["act_write"] += int(act_write)


def record_io(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    """Add the bytes of an opaque op's operands (weights told apart) and results."""
    for c in _ACTIVE:
        for t in inputs:
            key = "weight_read" if c.is_weight(t) else "act_read"
            c.bytes[key] += t.numel() * t.element_size()
        for t in outputs:
            c.bytes["act_write"] += t.numel() * t.element_size()


def counting() -> bool:
    """True when an EnergyCounter is active (ops may skip the bookkeeping otherwise)."""
    return bool(_ACTIVE)


@contextlib.contextmanager
def opaque():
    """Hide the aten ops run inside from the counters (the caller records its true op mix)."""
    global _OPAQUE_DEPTH
    _OPAQUE_DEPTH += 1
    try:
        yield
    finally:
        _OPAQUE_DEPTH -= 1


def _bits(t: torch.Tensor) -> int:
    return 8 if t.dtype == torch.bool else t.element_size() * 8


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def _numel(shape) -> int:
    return math.prod(shape)


# aten ops that only change metadata (no compute, no bytes).
_VIEWS = {
    "t",
    "view",
    "reshape",
    "_reshape_alias",
    "expand",
    "permute",
    "transpose",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "detach",
    "alias",
    "_unsafe_view",
    "as_strided",
    "unbind",
    "split",
    "split_with_sizes",
    "chunk",
    "narrow",
    "view_as_real",
    "view_as_complex",
    "lift_fresh",
    "unflatten",
    "flatten",
    "expand_as",
    "view_as",
    "contiguous",
    "to",  # a real conversion dispatches _to_copy; `to` itself returns its input
    "resolve_conj",  # no-ops on real tensors (Tensor.numpy() calls them)
    "resolve_neg",
    "_has_compatible_shallow_copy_type",
    "promote_types",
    "result_type",
    "can_cast",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "dim",
    "size",
    "stride",
    "_local_scalar_dense",
    "item",  # reading one scalar
    "clone_preserve_strides",
    "empty",
    "empty_like",
    "zeros",
    "ones",
    "full",
    "arange",
    "randn",
    "rand",
    "empty_strided",
    "new_empty",
    "new_zeros",
    "new_ones",
    "scalar_tensor",
    "zeros_like",
    "ones_like",
    "full_like",
    "new_full",
    "lift_fresh_copy",
    "set_",
    "resize_",
    "_to_copy_meta",
}
# Data movement: bytes, no arithmetic.
_MOVES = {
    "copy_",
    "_to_copy",
    "clone",
    "cat",
    "stack",
    "index",
    "index_select",
    "gather",
    "embedding",
    "repeat",
    "index_put_",
    "index_put",
    "scatter",
    "scatter_",
    "fill_",
    "zero_",
    "masked_scatter",
    "constant_pad_nd",
    "roll",
    "flip",
    "tril",
    "triu",
    "repeat_interleave",
    "copy",
    "_unsafe_index",
}
# Lookups: they read only the rows they return.
_GATHERS = {"embedding", "index", "index_select", "gather", "_unsafe_index"}
_BINARY_MUL = {"mul", "mul_"}
_BINARY_ADD = {"add", "add_", "sub", "sub_", "rsub"}
_BINARY_DIV = {"div", "div_", "reciprocal"}
_UNARY = {
    "exp": ["exp"],
    "exp_": ["exp"],
    "log": ["log"],
    "rsqrt": ["rsqrt"],
    "sqrt": ["sqrt"],
    "tanh": ["tanh"],
    "sigmoid": ["exp", "fp_add", "div"],
    "silu": ["exp", "fp_add", "div", "fp_mul"],
    "silu_": ["exp", "fp_add", "div", "fp_mul"],
    "gelu": ["tanh", "fp_mul", "fp_mul", "fp_mul", "fp_mul", "fp_add", "fp_add"],
    "neg": ["cmp"],
    "abs": ["cmp"],
    "relu": ["cmp"],
    "round": ["cmp"],
    "floor": ["cmp"],
    "ceil": ["cmp"],
    "trunc": ["cmp"],
    "sign": ["cmp"],
    "clamp": ["cmp", "cmp"],
    "clamp_": ["cmp", "cmp"],
    "clamp_min": ["cmp"],
    "clamp_min_": ["cmp"],
    "clamp_max": ["cmp"],
    "isnan": ["cmp"],
    "isinf": ["cmp"],
    "logical_not": ["cmp"],
    "bitwise_not": ["cmp"],
    "maximum": ["cmp"],
    "minimum": ["cmp"],
    "where": ["cmp"],
    "masked_fill": ["cmp"],
    "masked_fill_": ["cmp"],
    "eq": ["cmp"],
    "ne": ["cmp"],
    "lt": ["cmp"],
    "le": ["cmp"],
    "gt": ["cmp"],
    "ge": ["cmp"],
    "bitwise_and": ["cmp"],
    "bitwise_or": ["cmp"],
    "logical_and": ["cmp"],
    "logical_or": ["cmp"],
    "erf": ["exp", "fp_mul", "fp_add"],
    "cos": ["exp"],
    "sin": ["exp"],
    "pow_2": ["fp_mul"],
    "square": ["fp_mul"],
    "log1p": ["log", "fp_add"],
    "expm1": ["exp", "fp_add"],
    "softplus": ["exp", "fp_add", "log"],
}
_REDUCE_ADD = {"sum", "mean", "cumsum", "nansum", "logsumexp"}
_REDUCE_CMP = {"amax", "amin", "max", "min", "argmax", "argmin", "any", "all"}


@dataclass
class EnergyCounter:
    """Counts ops and bytes of everything run inside `with EnergyCounter(model) as c:`.

    `model` (optional): its parameters and buffers are the "weights" for byte accounting.
    """

    model: torch.nn.Module | None = None
    counts: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self._weight_ptrs: set[int] = set()
        if self.model is not None:
            for t in _model_tensors(self.model):
                self._weight_ptrs.add(t.untyped_storage().data_ptr())
        self._mode: _CountingMode | None = None

    def is_weight(self, t: torch.Tensor) -> bool:
        try:
            return t.untyped_storage().data_ptr() in self._weight_ptrs
        except RuntimeError:
            return False

    def __enter__(self) -> EnergyCounter:
        _ACTIVE.append(self)
        self._mode = _CountingMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        _ACTIVE.remove(self)
        return False

    def total(self, kind: str) -> int:
        return sum(v for (k, _), v in self.counts.items() if k == kind)

    def as_dict(self) -> dict:
        return {
            "counts": {f"{k}_{b}": v for (k, b), v in sorted(self.counts.items())},
            "bytes": dict(self.bytes),
            "unknown": dict(self.unknown),
        }

    # --- classification of one aten op ----------------------------------------------------

    def _count_bytes(self, name: str, args, out) -> None:
        if name in _GATHERS:
            # A lookup reads the rows it returns (and its indices), not the whole table.
            src = _flat_tensors(args)[0]
            got = sum(o.numel() for o in _flat_tensors(out)) * src.element_size()
            self.bytes["weight_read" if self.is_weight(src) else "act_read"] += got
            for a in _flat_tensors(args)[1:]:
                self.bytes["act_read"] += a.numel() * a.element_size()
            for o in _flat_tensors(out):
                self.bytes["act_write"] += o.numel() * o.element_size()
            return
        for a in _flat_tensors(args):
            if self.is_weight(a):
                self.bytes["weight_read"] += a.numel() * a.element_size()
            else:
                self.bytes["act_read"] += a.numel() * a.element_size()
        for o in _flat_tensors(out):
            self.bytes["act_write"] += o.numel() * o.element_size()

    def count_op(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        cost = _OP_COSTS.get(f"{getattr(func, 'namespace', '')}::{name}")
        if cost is not None:  # a compiled kernel: its registered formula (see register_op_cost)
            cost(self, args, kwargs, out)
            return
        if name in _VIEWS:
            return
        self._count_bytes(name, args, out)
        if name in _MOVES:
            return
        outs = _flat_tensors(out)
        o = outs[0] if outs else None
        c = self.counts
        if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "dot", "mv", "addmv"):
            self._count_matmul(name, args, o)
        elif name.startswith("_scaled_dot_product") or name == "scaled_dot_product_attention":
            self._count_sdpa(args, kwargs)
        elif name in _BINARY_MUL and o is not None:
            c[(_arith("mul", o), _bits(o))] += o.numel()
        elif name in _BINARY_ADD and o is not None:
            c[(_arith("add", o), _bits(o))] += o.numel()
        elif name in _BINARY_DIV and o is not None:
            kind = "div" if _is_float(o) else "int_mul"
            c[(kind, _bits(o))] += o.numel()
        elif name in ("pow", "pow_") and o is not None:
            self._count_pow(args, o)
        elif name in ("_softmax", "softmax", "_log_softmax", "log_softmax") and o is not None:
            n, b = o.numel(), _bits(o)
            for k in ("cmp", "fp_add", "exp", "fp_add", "div"):  # max, x - max, exp, sum, /sum
                c[(k, b)] += n
        elif name in _UNARY and o is not None:
            for k in _UNARY[name]:
                if not _is_float(o):  # integer/bool tensors: compares and arithmetic are int ops
                    k = {"cmp": "int_add", "fp_add": "int_add", "fp_mul": "int_mul"}.get(k, k)
                c[(k, _bits(o))] += o.numel()
        elif name in _REDUCE_ADD and o is not None:
            src = _flat_tensors(args)[0]
            adds = max(src.numel() - o.numel(), 0)
            c[(_arith("add", src), _bits(src))] += adds
            if name == "mean":
                c[("div", _bits(o))] += o.numel()
            if name == "logsumexp":
                c[("exp", _bits(src))] += src.numel()
                c[("log", _bits(o))] += o.numel()
        elif name in _REDUCE_CMP and o is not None:
            src = _flat_tensors(args)[0]
            c[("cmp", _bits(src))] += max(src.numel() - o.numel(), 0)
        elif name in ("addcmul", "addcmul_", "lerp", "lerp_") and o is not None:
            c[(_arith("mul", o), _bits(o))] += 2 * o.numel()
            c[(_arith("add", o), _bits(o))] += o.numel()
        elif name in ("addcdiv", "addcdiv_") and o is not None:
            c[("div", _bits(o))] += o.numel()
            c[(_arith("mul", o), _bits(o))] += o.numel()
            c[(_arith("add", o), _bits(o))] += o.numel()
        elif name in ("native_layer_norm", "_fused_rms_norm", "rms_norm"):
            self._count_norm(name, args, outs)
        else:
            self.unknown[name] += sum(t.numel() for t in outs)

    def _count_matmul(self, name, args, o) -> None:
        ts = _flat_tensors(args)
        # addmm / baddbmm / addmv take (bias, a, b); the others (a, b).
        bias, a = (ts[0], ts[1]) if name in ("addmm", "baddbmm", "addmv") else (None, ts[0])
        k_dim = a.shape[-1]
        n_out = o.numel()
        bits = _bits(o)
        self.counts[(_arith("mul", o), bits)] += n_out * k_dim
        self.counts[(_arith("add", o), bits)] += n_out * (k_dim - 1) + (
            n_out if bias is not None else 0
        )

    def _count_sdpa(self, args, kwargs) -> None:
        q, k, v = _flat_tensors(args)[:3]
        *batch, lq, e = q.shape
        s, ev = k.shape[-2], v.shape[-1]
        nb = _numel(batch)
        bits = _bits(q)
        scores = nb * lq * s
        c = self.counts
        c[("fp_mul", bits)] += scores * e + scores  # Q K^T, then the 1/sqrt(d) scale
        c[("fp_add", bits)] += scores * (e - 1)
        for kk in ("cmp", "fp_add", "exp", "fp_add", "div"):  # softmax over s
            c[(kk, bits)] += scores
        c[("fp_mul", bits)] += nb * lq * ev * s  # P V
        c[("fp_add", bits)] += nb * lq * ev * (s - 1)

    def _count_pow(self, args, o) -> None:
        exponent = args[1] if len(args) > 1 else None
        n, b = o.numel(), _bits(o)
        if isinstance(exponent, (int, float)) and float(exponent) == 2.0:
            self.counts[(_arith("mul", o), b)] += n
        elif isinstance(exponent, (int, float)) and float(exponent) == 0.5:
            self.counts[("sqrt", b)] += n
        elif isinstance(exponent, (int, float)) and float(exponent) == -0.5:
            self.counts[("rsqrt", b)] += n
        elif isinstance(exponent, (int, float)) and float(exponent) == 1.0:
            return
        else:  # general power: exp(y * log(x))
            self.counts[("log", b)] += n
            self.counts[("exp", b)] += n
            self.counts[("fp_mul", b)] += n

    def _count_norm(self, name, args, outs) -> None:
        x = _flat_tensors(args)[0]
        n, b = x.numel(), _bits(x)
        rows = n // max(x.shape[-1], 1)
        c = self.counts
        c[("fp_mul", b)] += 2 * n  # square (or centred square), then the weight
        c[("fp_add", b)] += n  # sum of squares
        c[("rsqrt", b)] += rows
        c[("fp_mul", b)] += n  # normalize
        if name == "native_layer_norm":
            c[("fp_add", b)] += 2 * n  # mean, subtract


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and tensors modules keep as plain attributes (e.g. BitLinear's cached
    quantized weight, packed weights held in small containers): all of it is "weights"."""
    found = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        for v in vars(m).values():
            found.extend(_flat_tensors(v))
            if hasattr(v, "__dataclass_fields__"):
                found.extend(_flat_tensors(list(vars(v).values())))
    return found


def _arith(op: str, t: torch.Tensor) -> str:
    return ("fp_" if _is_float(t) else "int_") + op


def _flat_tensors(x) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            out.extend(_flat_tensors(y))
    elif isinstance(x, dict):
        for y in x.values():
            out.extend(_flat_tensors(y))
    return out


class _CountingMode(TorchDispatchMode):
    def __init__(self, counter: EnergyCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _OPAQUE_DEPTH == 0:
            self.counter.count_op(func, args, kwargs, out)
        return out
