"""L-Mul (and fp8) attention for Hugging Face transformers models, through the attention registry.

    import mulfree
    mulfree.apply_lmul_(model, mulfree.LMulConfig(mantissa_bits=3))   # in place
    ...                                                               # prefill and cached decoding
    mulfree.remove_lmul_(model)                                       # back to what it was

`apply_lmul_` registers one attention function per configuration with transformers'
`AttentionInterface` (and the eager mask builder under the same name with `AttentionMaskInterface`,
so masks, padding, sliding windows and cache offsets are built exactly as for eager attention), then
switches the model to it with `model.set_attn_implementation`. Every attention layer that calls
`ALL_ATTENTION_FUNCTIONS.get_interface(...)` -- Llama, Mistral, Gemma 1/2/3, Qwen 2/3, GPT-OSS and
most other decoder models -- then runs it in every forward, with or without a KV cache. No class is
patched; `remove_lmul_` restores the previous implementation.

What the registered attention computes, per layer (q [B, H, Tq, D], k and v [B, Hkv, S, D]):
    scores = MATMUL(q, kᵀ) · scaling          (grouped-query: H/Hkv query heads share a kv head)
    scores = tanh(scores / cap) · cap          (if the layer passes `softcap`, as Gemma 2 does)
    scores = scores + mask                     (the eager additive mask: causal/window/padding)
    p = softmax(scores) in float32 -> q.dtype  (with `module.sinks`: the GPT-OSS sink column)
    out = MATMUL(p, v)
Everything but MATMUL is the eager code, operation for operation. MATMUL depends on `kind`:
  - "lmul": `mulfree.lmul.lmatmul` -- every scalar product an L-Mul with `mantissa_bits`
    (2, 3, 4 or None = the full mantissa of the operand format) and `mode`, sequential
    accumulation in `acc_dtype`; operands in `dtype` (default: the model's own dtype).
  - "exact": the exact product. With `dtype=None` this is eager attention bit for bit; with
    `dtype="bfloat16"` the operands are rounded to bfloat16, products are exact and accumulation is
    float32 (products of two bfloat16 values are exact in float32).
  - "fp8_e4m3" / "fp8_e5m2": operands scaled by powers of two and rounded (RNE, saturating) to
    float8 e4m3fn / e5m2, products exact, float32 accumulation, then unscaled. Scales are powers of
    two chosen so that the scaled absolute maximum is as large as possible without exceeding the
    format's largest finite value (448 / 57344), so scaling adds no error of its own.
    `fp8_scaling="per_token"` (default): q per query token, k per key token, v per key token (the
    v scale is folded into p exactly, p·2^-e_v, before p is scaled per query row). Every scale
    then depends only on one token's own vector, so results do not depend on padding, batching or
    on future tokens, and cached decoding equals a full forward.
    `fp8_scaling="per_tensor"`: one scale per (sequence, head) matrix for each of q, k, p, v, as
    hardware recipes with dynamic per-tensor scales do. The maximum then runs over masked
    positions too (future and padding tokens). As scales are powers of two, this changes results
    only for values that land in fp8's subnormal range or would saturate, but then results depend
    on padding and cached decoding can differ from a full forward.

`linear=True` also makes every `torch.nn.Linear` (exactly that class, so quantized subclasses are
left alone) outside `linear_skip` compute its product with `lmatmul` (the paper's fine-tuning
setting); the layer objects are swapped for `LMulLinear` wrappers that share the same weight
Parameters, and swapped back by `remove_lmul_`. fp8 kinds apply to the attention only.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from mulfree._swap import swap_modules_
from mulfree.errors import MulfreeError
from mulfree.lmul.formats import canonical_name

KINDS = ("lmul", "fp8_e4m3", "fp8_e5m2", "exact")
MANTISSA_BITS = (2, 3, 4, None)
FP8_SCALINGS = ("per_token", "per_tensor")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ACC_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# name -> (torch dtype, E with largest finite value = 0.875 * 2^E): 448 = 0.875·2^9 (e4m3fn),
# 57344 = 0.875·2^16 (e5m2).
_FP8 = {"fp8_e4m3": (torch.float8_e4m3fn, 9), "fp8_e5m2": (torch.float8_e5m2, 16)}
# Power-of-two scale exponents are clamped so 2^e stays a normal float32 (|e| <= 126); a tensor
# whose maximum is below 2^-100 keeps less than full fp8 resolution, which does not matter.
_MAX_SCALE_EXP = 100
_PREFIX = "mulfree_"


def _dtype_name(value, table: dict, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        for name, dt in table.items():
            if dt == value:
                return name
    elif isinstance(value, str):
        key = canonical_name(value)  # "bf16", "fp32", ... (mulfree.lmul.formats' alias table)
        if key in table:
            return key
    raise MulfreeError(f"{field} must be one of {', '.join(table)}; got {value!r}")


@dataclass(frozen=True)
class LMulConfig:
    """What `apply_lmul_` does to a model. Validated on construction (MulfreeError if invalid).

    kind: "lmul" (L-Mul products), "fp8_e4m3" / "fp8_e5m2" (fp8 operands, exact products, fp32
        accumulation), or "exact" (eager attention; with `dtype`, exact products of rounded operands).
    mantissa_bits: L-Mul mantissa bits k: 2, 3, 4, or None for the format's full mantissa.
    mode: "int" (the paper's integer add) or "eq1" (Eq. 1 literally); see docs/lmul.md.
    dtype: operand format of the two attention matmuls ("float32", "bfloat16", "float16"; None =
        the model's own dtype). kinds "lmul" and "exact" only.
    acc_dtype: L-Mul accumulation, "float32" or "bfloat16" (emulated, rounded after every add).
    fp8_scaling: "per_token" or "per_tensor", see the module docstring.
    linear: also use L-Mul in every nn.Linear not named in `linear_skip` (kind "lmul" only).
    linear_skip: module-name suffixes left exact when `linear=True` (default: the output layer).
    exact_backward: gradients through L-Mul products use exact products (default: L-Mul too).
    """

    kind: str = "lmul"
    mantissa_bits: int | None = None
    mode: str = "int"
    dtype: str | torch.dtype | None = None
    acc_dtype: str | torch.dtype = "float32"
    fp8_scaling: str = "per_token"
    linear: bool = False
    linear_skip: tuple[str, ...] = ("lm_head",)
    exact_backward: bool = False

    def __post_init__(self):
        from mulfree.lmul.reference import MODES

        if self.kind not in KINDS:
            raise MulfreeError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if isinstance(self.mantissa_bits, bool) or self.mantissa_bits not in MANTISSA_BITS:
            raise MulfreeError(f"mantissa_bits must be 2, 3, 4 or None; got {self.mantissa_bits!r}")
        if self.mode not in MODES:
            raise MulfreeError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.fp8_scaling not in FP8_SCALINGS:
            raise MulfreeError(
                f"fp8_scaling must be one of {', '.join(FP8_SCALINGS)}; got {self.fp8_scaling!r}"
            )
        # Stored as canonical names so equal configs compare (and register) equal.
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, _DTYPES, "dtype"))
        object.__setattr__(self, "acc_dtype", _dtype_name(self.acc_dtype, _ACC_DTYPES, "acc_dtype"))
        if isinstance(self.linear_skip, str) or not all(
            isinstance(s, str) for s in self.linear_skip
        ):
            raise MulfreeError("linear_skip must be a tuple of module-name suffixes")
        object.__setattr__(self, "linear_skip", tuple(self.linear_skip))
        if self.kind != "lmul":
            if self.mantissa_bits is not None:
                raise MulfreeError(
                    f"mantissa_bits applies to kind 'lmul' only (kind={self.kind!r})"
                )
            if self.linear:
                raise MulfreeError(f"linear=True applies to kind 'lmul' only (kind={self.kind!r})")
        if self.kind.startswith("fp8") and self.dtype is not None:
            raise MulfreeError(f"dtype does not apply to kind {self.kind!r} (operands are fp8)")
        if (
            self.kind == "lmul"
            and self.dtype is not None
            and self.mantissa_bits is not None
            and self.dtype == "float16"
            and self.mantissa_bits > 10
        ):
            raise MulfreeError("mantissa_bits exceeds the float16 mantissa")

    @property
    def name(self) -> str:
        """The attention-implementation name this config registers under (stable, readable)."""
        parts = [self.kind]
        if self.kind == "lmul":
            parts += [f"k{self.mantissa_bits or 'full'}", self.mode, f"acc{self.acc_dtype}"]
            if self.exact_backward:
                parts.append("exactbwd")
        if self.kind.startswith("fp8"):
            parts.append(self.fp8_scaling)
        if self.dtype is not None:
            parts.append(self.dtype)
        return _PREFIX + "_".join(parts)


# --- the matrix products ----------------------------------------------------------------------


def _pow2_exponent(amax: torch.Tensor, emax: int) -> torch.Tensor:
    """Largest integer e with amax · 2^e <= 0.875 · 2^emax (the fp8 maximum); 0 where amax is 0.

    Exact: frexp gives amax = m · 2^x with m in [0.5, 1), so amax · 2^e = m · 2^(x+e).
    """
    m, x = torch.frexp(amax)
    e = emax - x - (m > 0.875).to(x.dtype)
    e = torch.where((amax > 0) & torch.isfinite(amax), e, torch.zeros_like(e))
    return e.clamp(-_MAX_SCALE_EXP, _MAX_SCALE_EXP).to(torch.float32)


def _to_fp8(x: torch.Tensor, e: torch.Tensor, fp8: torch.dtype) -> torch.Tensor:
    """Round x · 2^e to fp8 (torch's RNE, saturating cast) and back to float32 (exact)."""
    return (x * torch.exp2(e)).to(fp8).to(torch.float32)


def _amax_exponent(x: torch.Tensor, dims: tuple[int, ...], emax: int) -> torch.Tensor:
    return _pow2_exponent(x.abs().amax(dim=dims, keepdim=True), emax)


def _fp8_qk(q, k, cfg, groups):
    """Scores q kᵀ in float32 from fp8 operands. q [B, H, Tq, D], k [B, Hkv, S, D]."""
    fp8, emax = _FP8[cfg.kind]
    q, k = q.float(), k.float()
    per_token = cfg.fp8_scaling == "per_token"
    eq = _amax_exponent(q, (-1,) if per_token else (-2, -1), emax)  # [B, H, Tq|1, 1]
    ek = _amax_exponent(k, (-1,) if per_token else (-2, -1), emax)  # [B, Hkv, S|1, 1]
    q8 = _group(_to_fp8(q, eq, fp8), groups)  # [B, Hkv, G*Tq, D]
    k8 = _to_fp8(k, ek, fp8)
    s = torch.matmul(q8, k8.mT)  # [B, Hkv, G*Tq, S]; fp8 x fp8 products are exact in float32
    s = _ungroup(s, groups)  # [B, H, Tq, S]
    return s * torch.exp2(-(eq + _expand_kv(ek, groups).mT))


def _fp8_pv(p, v, cfg, groups):
    """p v in float32 from fp8 operands. p [B, H, Tq, S], v [B, Hkv, S, D]."""
    fp8, emax = _FP8[cfg.kind]
    p, v = p.float(), v.float()
    if cfg.fp8_scaling == "per_token":
        ev = _amax_exponent(v, (-1,), emax)  # [B, Hkv, S, 1]: one scale per key token
        v8 = _to_fp8(v, ev, fp8)
        # out = sum_j p_ij 2^-ev_j v8_jd: fold each key's v scale into p (exact: a power of two).
        p = p * torch.exp2(-_expand_kv(ev, groups).mT)  # [B, H, Tq, S]
        ep = _amax_exponent(p, (-1,), emax)  # [B, H, Tq, 1]: one scale per query row
        out = _ungroup(torch.matmul(_group(_to_fp8(p, ep, fp8), groups), v8), groups)
        return out * torch.exp2(-ep)
    ev = _amax_exponent(v, (-2, -1), emax)  # [B, Hkv, 1, 1]
    ep = _amax_exponent(p, (-2, -1), emax)  # [B, H, 1, 1]
    v8 = _to_fp8(v, ev, fp8)
    out = _ungroup(torch.matmul(_group(_to_fp8(p, ep, fp8), groups), v8), groups)
    return out * torch.exp2(-(ep + _expand_kv(ev, groups)))


def _group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv*G, T, X] -> [B, Hkv, G*T, X]: the G query heads of one kv head stacked as rows.

    Query head h uses kv head h // G (transformers' repeat_kv order), so one matmul per kv head
    covers its whole group without copying k or v G times.
    """
    b, h, t, n = x.shape
    return x.reshape(b, h // groups, groups * t, n)


def _ungroup(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, G*T, X] -> [B, Hkv*G, T, X] (inverse of `_group`)."""
    b, hkv, gt, n = x.shape
    return x.reshape(b, hkv * groups, gt // groups, n)


def _expand_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """A per-kv-head tensor [B, Hkv, ...] -> per query head [B, Hkv*G, ...] (repeat_kv order)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """transformers' repeat_kv: [B, Hkv, S, D] -> [B, Hkv*G, S, D]."""
    if groups == 1:
        return x
    b, hkv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, hkv, groups, s, d).reshape(b, hkv * groups, s, d)


def _matmul(a, b, cfg, groups, *, scores: bool):
    """The two attention products in float32 (scores: q kᵀ, else p v), grouped by kv head.

    a: q [B, H, Tq, D] or p [B, H, Tq, S]; b: k or v [B, Hkv, S, D].
    """
    from mulfree.lmul import lmatmul

    if cfg.kind.startswith("fp8"):
        return _fp8_qk(a, b, cfg, groups) if scores else _fp8_pv(a, b, cfg, groups)
    op_dtype = _DTYPES[cfg.dtype] if cfg.dtype is not None else a.dtype
    ag = _group(a.to(op_dtype), groups)
    bb = b.to(op_dtype)
    if scores:
        bb = bb.mT  # [B, Hkv, D, S]
    if cfg.kind == "lmul":
        out = lmatmul(
            ag,
            bb,
            mantissa_bits=cfg.mantissa_bits,
            mode=cfg.mode,
            acc_dtype=_ACC_DTYPES[cfg.acc_dtype],
            exact_backward=cfg.exact_backward,
        )
    else:  # exact products of operands rounded to op_dtype, float32 accumulation
        out = torch.matmul(ag.float(), bb.float())
    return _ungroup(out.float(), groups)


# --- the registered attention function --------------------------------------------------------


def lmul_attention_forward(
    cfg: LMulConfig,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with the two products per `cfg`; everything else as transformers' eager code.

    query [B, H, Tq, D], key/value [B, Hkv, S, D], attention_mask additive [B, 1, Tq, >=S] or None.
    Returns (output [B, Tq, H, D], probabilities [B, H, Tq, S]) like eager attention.
    """
    if scaling is None:
        scaling = module.head_dim**-0.5
    groups = query.shape[1] // key.shape[1]
    exact_eager = cfg.kind == "exact" and cfg.dtype is None
    if exact_eager:
        key_states = _repeat_kv(key, groups)
        value_states = _repeat_kv(value, groups)
        attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    else:
        attn_weights = _matmul(query, key, cfg, groups, scores=True).to(query.dtype) * scaling
    if softcap is not None:
        attn_weights = attn_weights / softcap
        attn_weights = torch.tanh(attn_weights)
        attn_weights = attn_weights * softcap
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    sinks = getattr(module, "sinks", None)
    if sinks is not None:
        # GPT-OSS: a learned per-head logit joins the softmax and is dropped afterwards.
        sinks = sinks.reshape(1, -1, 1, 1).expand(query.shape[0], -1, query.shape[-2], -1)
        combined = torch.cat([attn_weights, sinks], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = nn.functional.softmax(combined, dim=-1, dtype=combined.dtype)
        attn_weights = nn.functional.dropout(
            probs[..., :-1], p=dropout, training=module.training
        ).to(value.dtype)
    else:
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32)
        attn_weights = attn_weights.to(query.dtype)
        attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    if exact_eager:
        attn_output = torch.matmul(attn_weights, value_states)
    else:
        attn_output = _matmul(attn_weights, value, cfg, groups, scores=False).to(query.dtype)
    attn_output = attn_output.transpose(1, 2).contiguous()  # [B, H, Tq, D] -> [B, Tq, H, D]
    return attn_output, attn_weights


@cache
def _attention_function(cfg: LMulConfig):
    def attention(module, query, key, value, attention_mask, **kwargs):
        return lmul_attention_forward(cfg, module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = cfg.name
    attention.__qualname__ = cfg.name
    return attention


def register_attention(cfg: LMulConfig) -> str:
    """Register `cfg`'s attention (and the eager mask builder) under `cfg.name`; return the name.

    After this, `from_pretrained(..., attn_implementation=name)` works too.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(cfg.name, _attention_function(cfg))
    # Without a mask function under the same name, transformers builds NO mask for a custom
    # attention (it assumes the kernel masks by itself) -- causal masking would silently vanish.
    AttentionMaskInterface.register(cfg.name, eager_mask)
    return cfg.name


# --- linear layers ----------------------------------------------------------------------------


class LMulLinear(nn.Module):
    """y = x Wᵀ + b with every product an L-Mul; shares `weight`/`bias` with the wrapped layer."""

    def __init__(self, linear: nn.Linear, cfg: LMulConfig):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.cfg = cfg
        self.original = [linear]  # a list, so the original is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mulfree.lmul import lmatmul

        cfg = self.cfg
        op_dtype = _DTYPES[cfg.dtype] if cfg.dtype is not None else self.weight.dtype
        x2 = x.reshape(-1, self.in_features).to(op_dtype)  # [..., in] -> [N, in]
        y = lmatmul(
            x2,
            self.weight.to(op_dtype).t(),
            mantissa_bits=cfg.mantissa_bits,
            mode=cfg.mode,
            acc_dtype=_ACC_DTYPES[cfg.acc_dtype],
            exact_backward=cfg.exact_backward,
        ).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)  # [N, out] -> [..., out]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.cfg.name}"


def _swap_linears(model: nn.Module, cfg: LMulConfig) -> list[str]:
    def lmul(name: str, mod: nn.Module) -> LMulLinear | None:
        if type(mod) is not nn.Linear or any(name.endswith(s) for s in cfg.linear_skip):
            return None
        return LMulLinear(mod, cfg)

    return swap_modules_(model, lmul)


def _restore_linears(model: nn.Module) -> None:
    swap_modules_(model, lambda _, mod: mod.original[0] if isinstance(mod, LMulLinear) else None)


# --- the in-place verbs -----------------------------------------------------------------------

_STATE_ATTR = "_mulfree_lmul_state"


@cache
def _module_uses_interface(module_name: str) -> bool:
    mod = sys.modules.get(module_name)
    try:
        return mod is not None and "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(mod)
    except (OSError, TypeError):
        return False


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the attention layers of `model` that dispatch through transformers' registry."""
    return [
        name
        for name, mod in model.named_modules()
        if "Attention" in type(mod).__name__ and _module_uses_interface(type(mod).__module__)
    ]


def apply_lmul_(model: nn.Module, cfg: LMulConfig | None = None) -> nn.Module:
    """Make `model`'s attention (and with cfg.linear, its linear layers) use `cfg`, in place.

    `model` is a transformers PreTrainedModel whose attention layers call the AttentionInterface
    (otherwise MulfreeError). Applying again replaces the previous configuration. Returns `model`.
    """
    cfg = LMulConfig() if cfg is None else cfg
    if not isinstance(cfg, LMulConfig):
        raise MulfreeError(f"apply_lmul_ takes an LMulConfig, got {type(cfg).__name__}")
    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise MulfreeError(
            f"{type(model).__name__} is not a transformers PreTrainedModel; apply_lmul_ needs one"
        )
    if not attention_layers(model) or not type(model)._can_set_attn_implementation():
        raise MulfreeError(
            f"{type(model).__name__} has no attention layers that use transformers' "
            "AttentionInterface, so apply_lmul_ cannot change its attention"
        )
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        remove_lmul_(model)
    previous = model.config._attn_implementation
    name = register_attention(cfg)
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise MulfreeError(f"{type(model).__name__} refused attention implementation {name!r}")
    linears = _swap_linears(model, cfg) if cfg.linear else []
    # Instance attribute (not a submodule, not a class change): what remove_lmul_ must undo.
    object.__setattr__(
        model, _STATE_ATTR, {"config": cfg, "previous": previous, "linears": linears}
    )
    return model


def remove_lmul_(model: nn.Module) -> nn.Module:
    """Undo `apply_lmul_`: the previous attention implementation and the original linear layers."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise MulfreeError("remove_lmul_: apply_lmul_ was not applied to this model")
    _restore_linears(model)
    model.set_attn_implementation(state["previous"])
    object.__delattr__(model, _STATE_ATTR)
    return model


def lmul_config_of(model: nn.Module) -> LMulConfig | None:
    """The LMulConfig applied to `model`, or None."""
    state = getattr(model, _STATE_ATTR, None)
    return None if state is None else state["config"]


__all__ = [
    "KINDS",
    "LMulConfig",
    "LMulLinear",
    "apply_lmul_",
    "attention_layers",
    "lmul_attention_forward",
    "lmul_config_of",
    "register_attention",
    "remove_lmul_",
]
