"""Configuration of the MatMul-free LM (model_type `hgrn_bit`, as in the official `HGRNBitConfig`).

Field names and defaults follow the official `mmfreelm` / `fla` HGRNBitConfig so that official
`config.json` files load unchanged. Values are validated in `__post_init__`; a bad value raises
`MulfreeError` with one line saying which field and why.

Named shapes: `HGRNBitConfig.from_name("370M")` etc. (see `PRESETS`).
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from mulfree import _bounds
from mulfree._bounds import check_shape, parameters_estimate
from mulfree.errors import MulfreeError

# attn_mode values: "fused_recurrent" is the official name (its Triton kernel computes the plain
# recurrence); here it and "chunk" run the chunked parallel scan, "naive" runs the spec loop. All
# three compute the same values.
ATTN_MODES = ("fused_recurrent", "chunk", "naive")

# The official MLP always applies SiLU (`swiglu`) whatever `hidden_act` says; accept only the
# names that mean that, so a config can't claim an activation the model does not compute.
HIDDEN_ACTS = ("swish", "silu")

# The shape fields' upper bounds and why: mulfree._bounds (shared with the torch-free engine).

# Released checkpoints (Zhu et al. 2024, ridger/MMfreeLM-*) and small shapes for CPU training.
# Small presets use a vocabulary that suits a tokenizer trained on a small corpus; pass
# vocab_size=... to from_name to match the actual tokenizer.
PRESETS: dict[str, dict] = {
    "370M": dict(hidden_size=1024, num_hidden_layers=24, vocab_size=32000),
    "1.3B": dict(hidden_size=2048, num_hidden_layers=24, vocab_size=32000),
    "2.7B": dict(hidden_size=2560, num_hidden_layers=32, vocab_size=32000),
    # 2.1M params at vocab 4096 (d 128, 4 layers, I 512).
    "tiny": dict(hidden_size=128, num_hidden_layers=4, vocab_size=4096),
    # 9.3M params at vocab 8192 (d 256, 6 layers, I 768).
    "mini": dict(hidden_size=256, num_hidden_layers=6, vocab_size=8192),
    # 35.7M params at vocab 8192 (d 512, 8 layers, I 1536).
    "small": dict(hidden_size=512, num_hidden_layers=8, vocab_size=8192),
}


def mlp_intermediate_size(
    hidden_size: int, hidden_ratio: int | float | None, intermediate_size: int | None
) -> int:
    """The GLU width the official HGRNBitMLP uses: given, or 256 * ceil(int(d * ratio * 2/3) / 256)."""
    return _bounds.mlp_intermediate_size(hidden_size, hidden_ratio, intermediate_size)


_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings",
                 "expand_ratio", "hidden_ratio", "intermediate_size", "tie_word_embeddings")  # fmt: skip


class HGRNBitConfig(PretrainedConfig):
    """Config of HGRNBitForCausalLM; fields as the official HGRNBitConfig.

    Kept only so official config.json files round-trip: conv_size and share_conv_kernel (used only
    with use_short_conv, refused below), max_position_embeddings (a recurrence has no position
    limit) and fuse_cross_entropy (the loss here is transformers' cross entropy, same value).
    """

    model_type = "hgrn_bit"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the name before transformers 5.24

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    attn_mode: str = "fused_recurrent"
    num_heads: int = 1
    expand_ratio: int | float = 1
    use_short_conv: bool = False
    conv_size: int = 4
    share_conv_kernel: bool = True
    use_lower_bound: bool = True
    hidden_ratio: int | float | None = 4
    intermediate_size: int | None = None
    hidden_act: str = "swish"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    fuse_cross_entropy: bool = True
    # mulfree extension (not in the official config): "lmul" routes every elementwise multiply
    # of the token and channel mixers (gates, recurrence, norm scaling, GLU product) through
    # L-Mul with `elementwise_mul_bits` mantissa bits (None = float32's 23): the fully
    # multiplication-free model. "exact" is the official model.
    elementwise_mul: str = "exact"
    elementwise_mul_bits: int | None = None

    def __post_init__(self, **kwargs):
        # Checked before transformers' own post-init, which builds per-layer lists (layer_types)
        # from num_hidden_layers: a crafted 10**9 would take minutes and gigabytes there.
        self._check()
        super().__post_init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise MulfreeError(f"hgrn_bit config: {name} must be a positive integer, got {v!r}")

        # shape fields: types, ranges, upper bounds, parameter count (one owner: mulfree._bounds)
        check_shape({name: getattr(self, name) for name in _SHAPE_FIELDS})
        positive_int("num_heads")
        positive_int("max_position_embeddings")
        for name in ("rms_norm_eps", "initializer_range"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise MulfreeError(f"hgrn_bit config: {name} must be a finite number, got {v!r}")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise MulfreeError(f"hgrn_bit config: {name} must be an integer or null, got {v!r}")
        eos = self.eos_token_id
        if eos is not None and not (
            isinstance(eos, int) and not isinstance(eos, bool)
            or isinstance(eos, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in eos)
        ):
            raise MulfreeError(
                f"hgrn_bit config: eos_token_id must be an integer, a list of them or null, got {eos!r}"
            )
        if self.attn_mode not in ATTN_MODES:
            raise MulfreeError(
                f"hgrn_bit config: attn_mode must be one of {ATTN_MODES}, got {self.attn_mode!r}"
            )
        # The official short-convolution branch passes its arguments to ShortConvolution in the
        # wrong order and never fills the conv cache during prefill, so it has no well-defined
        # behaviour to match; its depthwise conv would also bring back multiplications.
        if self.use_short_conv:
            raise MulfreeError(
                "hgrn_bit config: use_short_conv=True is not supported (the released MatMul-free checkpoints do not use it)"
            )
        if int(self.hidden_size * self.expand_ratio) % self.num_heads:
            raise MulfreeError(
                f"hgrn_bit config: hidden_size*expand_ratio ({int(self.hidden_size * self.expand_ratio)}) "
                f"must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise MulfreeError(
                f"hgrn_bit config: hidden_act must be one of {HIDDEN_ACTS} (the model applies SiLU), got {self.hidden_act!r}"
            )
        from mulfree.lmul.emul import ElementwiseMul

        ElementwiseMul(self.elementwise_mul, self.elementwise_mul_bits)  # validates both fields
        if not self.rms_norm_eps > 0:
            raise MulfreeError(
                f"hgrn_bit config: rms_norm_eps must be > 0, got {self.rms_norm_eps!r}"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise MulfreeError(
                f"hgrn_bit config: pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.vocab_size})"
            )

    @property
    def layer_types(self) -> list[str]:
        # Tells transformers' DynamicCache to hold a recurrent state (no KV) for every layer.
        return ["linear_attention"] * self.num_hidden_layers

    def num_parameters_estimate(self) -> int:
        """Weights of HGRNBitForCausalLM with this config (norms included), computed from the
        fields alone: what a loader compares with the memory it has before building anything."""
        return parameters_estimate({name: getattr(self, name) for name in _SHAPE_FIELDS})

    @property
    def mlp_intermediate_size(self) -> int:
        return mlp_intermediate_size(self.hidden_size, self.hidden_ratio, self.intermediate_size)

    @classmethod
    def from_name(cls, name: str, **overrides) -> HGRNBitConfig:
        """A named shape from `PRESETS` ("370M", "1.3B", "2.7B", "tiny", "mini", "small"), with overrides."""
        if name not in PRESETS:
            raise MulfreeError(f"unknown MatMul-free preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
