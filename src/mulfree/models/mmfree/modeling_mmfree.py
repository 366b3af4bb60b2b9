"""The MatMul-free language model (Zhu et al. 2024), matching the official `hgrn_bit` code.

Read top to bottom: norms -> BitLinear (imported) -> MLGRU token mixer (`HGRNBitAttention`) ->
GLU channel mixer (`HGRNBitMLP`) -> block -> `HGRNBitModel` -> `HGRNBitForCausalLM`.
Module and parameter names equal the official ones, so official `hgrn_bit` checkpoints load:

    model.embeddings.weight, model.lower_bounds, model.norm.weight,
    model.layers.{i}.attn_norm.weight, model.layers.{i}.attn.{i,f,g,o}_proj.weight,
    model.layers.{i}.attn.{i,f,g,o}_proj.norm.weight, model.layers.{i}.attn.g_norm.weight,
    model.layers.{i}.mlp_norm.weight, model.layers.{i}.mlp.{gate,down}_proj.weight,
    model.layers.{i}.mlp.{gate,down}_proj.norm.weight, lm_head.weight, lm_head.norm.weight

Generation keeps one float32 recurrent state [batch, hidden*expand_ratio] per layer in an
`HGRNBitCache`, a transformers DynamicCache whose layers are `LinearAttentionLayer`s (the config
declares every layer "linear_attention"): memory per sequence is constant, whatever its length.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, LinearAttentionCacheLayerMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mulfree import tensorfile
from mulfree.errors import MulfreeError
from mulfree.lmul.emul import ElementwiseMul
from mulfree.models.hf_compat import CACHE, cache_kwargs, one_cache, output_cache
from mulfree.models.loading import check_checkpoint, raise_on_bad_load
from mulfree.models.mmfree.configuration_mmfree import HGRNBitConfig
from mulfree.ops.hgrn import chunk_hgrn, naive_recurrent_hgrn
from mulfree.ternary.bitlinear import BitLinear, RMSNorm, acc_dtype

# Written into the metadata of every saved safetensors file (with the config), so a weights file
# says what it is without its directory (mulfree.tensorfile.CHECKPOINT).
FORMAT_NAME = tensorfile.CHECKPOINT.name
FORMAT_VERSION = tensorfile.CHECKPOINT.version

# ---------------------------------------------------------------------------------------------
# Norms. RMSNorm (float32 inside) comes from mulfree.ternary.bitlinear, where BitLinear uses it.
# ---------------------------------------------------------------------------------------------


class RMSNormSwishGate(RMSNorm):
    """RMSNorm(x) * weight * SiLU(o), all in float32: the official `FusedRMSNormSwishGate`."""

    def forward(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        dt = acc_dtype(x)
        xf, of = x.to(dt), o.to(dt)
        if self.emul.exact:
            rstd = 1.0 / torch.sqrt(xf.square().mean(-1, keepdim=True) + self.eps)
            return (xf * rstd * self.weight.to(dt) * F.silu(of)).to(x.dtype)
        mul = self.emul
        rstd = torch.rsqrt(mul(xf, xf).mean(-1, keepdim=True) + self.eps)
        return mul(mul(mul(xf, rstd), self.weight.to(dt)), mul.silu(of)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Token mixer: the MLGRU (official class name HGRNBitAttention; one head, expand ratio 1 in the
# released models).
# ---------------------------------------------------------------------------------------------


def _cache_layer(cache: Cache, layer_idx: int) -> LinearAttentionCacheLayerMixin:
    if layer_idx >= len(cache.layers) or not isinstance(
        cache.layers[layer_idx], LinearAttentionCacheLayerMixin
    ):
        raise MulfreeError(
            f"hgrn_bit needs a recurrent-state cache: pass {CACHE}=HGRNBitCache(model.config) "
            "(a cache built without the config holds attention KV layers)"
        )
    return cache.layers[layer_idx]


class HGRNBitAttention(nn.Module):
    """f = sigmoid(f_proj(x)), raised to lb + (1 - lb) f after layer 0; i = SiLU(i_proj(x)) (1 - f);
    h_t = f_t h_{t-1} + i_t (float32); out = o_proj(RMSNorm(g_proj(x)) * g_norm.weight * SiLU(h))."""

    def __init__(
        self,
        hidden_size: int = 1024,
        num_heads: int = 1,
        expand_ratio: int | float = 1,
        layernorm_eps: float = 1e-5,
        layer_idx: int = 0,
        mode: str = "fused_recurrent",
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.input_dim = int(hidden_size * expand_ratio)
        self.layer_idx = layer_idx
        self.mode = mode
        self.i_proj = BitLinear(hidden_size, self.input_dim, bias=False)
        self.f_proj = BitLinear(hidden_size, self.input_dim, bias=False)
        self.g_proj = BitLinear(hidden_size, self.input_dim, bias=False)
        self.g_norm = RMSNormSwishGate(self.input_dim, eps=layernorm_eps)
        self.o_proj = BitLinear(self.input_dim, hidden_size, bias=False)
        self.emul = ElementwiseMul()  # L-Mul in the fully multiplication-free model

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        lower_bound: torch.Tensor | None = None,
    ) -> torch.Tensor:
        T = hidden_states.shape[1]
        i = self.i_proj(hidden_states)  # [B, T, E]
        f = self.f_proj(hidden_states).sigmoid()  # [B, T, E]
        mul = self.emul
        # The first layer keeps f unbounded below (its lower bound is 0 anyway).
        if lower_bound is not None and self.layer_idx > 0:
            f = lower_bound + mul(1 - lower_bound, f)
        i = mul(mul.silu(i), 1 - f)
        if attention_mask is not None:
            # Left padding: zero input keeps the state at zero until the first real token.
            keep = attention_mask[:, -T:].unsqueeze(-1)
            i = i * keep.to(i.dtype) if mul.exact else torch.where(keep.bool(), i, 0.0)

        state = None
        if cache is not None:
            layer = _cache_layer(cache, self.layer_idx)
            if layer.is_recurrent_states_initialized[0]:
                state = layer.recurrent_states[0]
        # The recurrence is elementwise, so heads are only a grouping of the channel axis:
        # [B, T, E] is scanned as is.
        want_final = cache is not None
        if not mul.exact:
            # L-Mul is not associative: the chunked scan would change the value, so the
            # multiplication-free model runs the recurrence as the loop it is defined by.
            o, final = naive_recurrent_hgrn(i, f, state, want_final, mul=mul)
        else:
            scan = naive_recurrent_hgrn if self.mode == "naive" else chunk_hgrn
            o, final = scan(i, f, initial_state=state, output_final_state=want_final)
        if cache is not None:
            cache.update_recurrent_state(final.detach(), self.layer_idx)

        o = self.g_norm(self.g_proj(hidden_states), o)
        return self.o_proj(o)


# ---------------------------------------------------------------------------------------------
# Channel mixer: GLU with ternary projections.
# ---------------------------------------------------------------------------------------------


class HGRNBitMLP(nn.Module):
    """down_proj(SiLU(gate) * up) where gate, up = split(gate_proj(x)); gate_proj is d -> 2I."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.gate_proj = BitLinear(hidden_size, intermediate_size * 2, bias=False)
        self.down_proj = BitLinear(intermediate_size, hidden_size, bias=False)
        self.emul = ElementwiseMul()  # L-Mul in the fully multiplication-free model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x).chunk(2, -1)  # [B, T, I] each
        # SiLU(gate) * up in float32, as the official fused `swiglu`.
        dt = acc_dtype(gate)
        mul = self.emul
        return self.down_proj(mul(mul.silu(gate.to(dt)), up.to(dt)).to(x.dtype))


# ---------------------------------------------------------------------------------------------
# Block and models.
# ---------------------------------------------------------------------------------------------


class HGRNBitBlock(GradientCheckpointingLayer):
    # GradientCheckpointingLayer: activation_checkpointing_enable() checkpoints each block.
    def __init__(self, config: HGRNBitConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = HGRNBitAttention(
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            expand_ratio=config.expand_ratio,
            layernorm_eps=config.rms_norm_eps,
            layer_idx=layer_idx,
            mode=config.attn_mode,
        )
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = HGRNBitMLP(config.hidden_size, config.mlp_intermediate_size)

    def forward(self, hidden_states, attention_mask=None, cache=None, lower_bound=None):
        residual = hidden_states
        hidden_states = self.attn(self.attn_norm(hidden_states), attention_mask, cache, lower_bound)
        # Official: `mlp_norm(h, residual, prenorm=True)` = (norm(h + residual), h + residual).
        residual = hidden_states + residual
        return residual + self.mlp(self.mlp_norm(residual))


class HGRNBitCache(DynamicCache):
    """A DynamicCache with one recurrent-state layer per block that also counts consumed tokens.

    transformers' generate() asks the cache how many tokens it has seen; a cache of recurrent
    layers has no sequence axis to measure, so the model adds each forward's length here.
    """

    def __init__(self, config: HGRNBitConfig):
        super().__init__(config=config)
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0


class HGRNBitPreTrainedModel(PreTrainedModel):
    config_class = HGRNBitConfig
    config: HGRNBitConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HGRNBitBlock"]
    _skip_keys_device_placement = [CACHE]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # The official initialisation: linears and embeddings N(0, initializer_range); the token
        # mixer's projections xavier_uniform(gain 2^-2.5) (set in the official layer's own
        # __init__); down_proj scaled by 1/sqrt(2L) (GPT-2 residual scaling); norms 1; bounds 0.
        # Modules are visited children first, so a parent's rule overrides its children's.
        std = self.config.initializer_range
        if isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(
                module.weight, "_is_hf_initialized", False
            ):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, HGRNBitAttention):
            for proj in (module.i_proj, module.f_proj, module.g_proj, module.o_proj):
                init.xavier_uniform_(proj.weight, gain=2**-2.5)
        elif isinstance(module, HGRNBitMLP):
            init.normal_(
                module.down_proj.weight,
                mean=0.0,
                std=std / math.sqrt(2 * self.config.num_hidden_layers),
            )
        elif isinstance(module, HGRNBitModel) and module.lower_bounds is not None:
            init.zeros_(module.lower_bounds)

    def set_elementwise_mul(self, kind: str = "exact", mantissa_bits: int | None = None):
        """Route every elementwise multiply of the mixers and norms through L-Mul ("lmul") or
        back to exact products ("exact"), in place; recorded in the config so it is saved."""
        emul = ElementwiseMul(kind, mantissa_bits)  # validates
        self.config.elementwise_mul = kind
        self.config.elementwise_mul_bits = mantissa_bits
        for m in self.modules():
            if isinstance(getattr(m, "emul", None), ElementwiseMul):
                m.emul = emul
        return self

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs
    ):
        """transformers' from_pretrained, reading safetensors only, and refusing partial loads.

        With strict=True (default) a checkpoint whose tensor names or shapes differ from the model's
        raises MulfreeError naming the first offending keys, instead of leaving random weights.
        """
        kwargs.setdefault("use_safetensors", True)
        want_info = kwargs.pop("output_loading_info", False)
        path = Path(str(pretrained_model_name_or_path))
        if path.is_dir():
            if not any(path.glob("*.safetensors")):
                raise MulfreeError(
                    f"no .safetensors weights in {path} (only safetensors checkpoints are loaded)"
                )
            if strict and cls is HGRNBitForCausalLM:
                # Checked before loading: transformers reports wrong shapes as a multi-line table
                # followed by a generic RuntimeError.
                config = kwargs.get("config")
                if not isinstance(config, HGRNBitConfig):
                    config = cls.config_class.from_pretrained(path)
                check_checkpoint(cls, config, path)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        if strict:
            raise_on_bad_load(info, pretrained_model_name_or_path)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained (config.json + safetensors), then the format name, version
        and config are added to each safetensors file's metadata."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        # transformers' save_pretrained has no way to pass file metadata: added afterwards
        extra = {**tensorfile.CHECKPOINT.stamp(), "config": self.config.to_json_string(use_diff=False)}
        for file in Path(save_directory).glob("*.safetensors"):
            tensorfile.add_metadata(file, extra)
        return out


class HGRNBitModel(HGRNBitPreTrainedModel):
    # Loading the backbone alone from a causal-LM checkpoint leaves the head's tensors unused.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: HGRNBitConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        # One learnable row per layer; softmax over layers + cumsum makes the forget-gate floors
        # increase with depth (from 0 at layer 0) so upper layers keep longer memories.
        self.lower_bounds = (
            nn.Parameter(torch.zeros(config.num_hidden_layers, config.hidden_size))
            if config.use_lower_bound
            else None
        )
        self.layers = nn.ModuleList(
            [HGRNBitBlock(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()
        self.set_elementwise_mul(config.elementwise_mul, config.elementwise_mul_bits)

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """The cache may be passed as `cache` (transformers >= 5.24's name) or `past_key_values`;
        the output carries it under the installed release's name (`mulfree.models.hf_compat`)."""
        cache = one_cache(
            cache=cache, past_key_values=past_key_values, cache_params=kwargs.pop("cache_params", None)
        )
        output_hidden_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        use_cache = (
            use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise MulfreeError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() != 2:
                raise MulfreeError(
                    f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}"
                )
            inputs_embeds = self.embeddings(input_ids)
        if attention_mask is not None:
            # A 2D 0/1 mask marks left padding; 4D attention masks mean nothing to a recurrence.
            if attention_mask.dim() != 2:
                raise MulfreeError(
                    f"hgrn_bit takes a 2D [batch, seq] attention_mask, got {attention_mask.dim()}D"
                )
            if bool(attention_mask.all()):  # nothing masked: skip the multiply
                attention_mask = None
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = HGRNBitCache(self.config)
        if not use_cache:
            cache = None

        if self.lower_bounds is not None:
            lower_bounds = self.lower_bounds.softmax(0)  # [L, d]
            lower_bounds = lower_bounds.cumsum(0) - lower_bounds[0]  # [L, d], row 0 is 0
        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            lb = lower_bounds[idx] if self.lower_bounds is not None else None
            hidden_states = layer(
                hidden_states,
                attention_mask=attention_mask,
                cache=cache,
                lower_bound=lb,
            )
        hidden_states = self.norm(hidden_states)
        if isinstance(cache, HGRNBitCache):
            cache.seen_tokens += inputs_embeds.shape[1]
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **cache_kwargs(cache)
        )
        return out if return_dict else out.to_tuple()


class HGRNBitForCausalLM(HGRNBitPreTrainedModel, GenerationMixin):
    # Used only when config.tie_word_embeddings is true (false for the released models).
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: HGRNBitConfig):
        super().__init__(config)
        self.model = HGRNBitModel(config)
        self.vocab_size = config.vocab_size
        # The head is a ternary BitLinear with its own input norm, as in the official model.
        self.lm_head = BitLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.set_elementwise_mul(config.elementwise_mul, config.elementwise_mul_bits)

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model

    def set_decoder(self, decoder):
        self.model = decoder

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() would build a plain DynamicCache, which cannot report how many tokens it has
        # consumed when it holds only recurrent layers; we supply an HGRNBitCache below instead.
        return False

    def prepare_inputs_for_generation(
        self,
        input_ids,
        next_sequence_length=None,
        cache=None,
        attention_mask=None,
        inputs_embeds=None,
        is_first_iteration=False,
        use_cache=True,
        past_key_values=None,
        **kwargs,
    ):
        # Written out rather than inherited: the generic version builds 4D attention masks and
        # position ids, which a recurrence has no use for.
        cache = one_cache(cache=cache, past_key_values=past_key_values)
        if use_cache and cache is None:
            cache = HGRNBitCache(self.config)
        if inputs_embeds is not None and is_first_iteration:
            embeds = (
                inputs_embeds[:, -next_sequence_length:] if next_sequence_length else inputs_embeds
            )
            inputs = {"input_ids": None, "inputs_embeds": embeds}
        else:
            ids = input_ids[:, -next_sequence_length:] if next_sequence_length else input_ids
            inputs = {"input_ids": ids.contiguous()}
        inputs.update(
            cache_kwargs(cache if use_cache else None), attention_mask=attention_mask, use_cache=use_cache
        )
        for key in ("logits_to_keep", "output_hidden_states"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """labels: [batch, seq] token ids (-100 = ignore); the loss predicts labels[t + 1] from
        position t (shifted inside, as transformers' causal LMs and the official model do).
        logits_to_keep: if an int n > 0, logits only for the last n positions.
        cache (or its older name past_key_values): an HGRNBitCache, updated in place."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = one_cache(
            cache=cache, past_key_values=past_key_values, cache_params=kwargs.pop("cache_params", None)
        )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = (
                hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
            )
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **cache_kwargs(output_cache(outputs)),
        )
        return out if return_dict else out.to_tuple()


__all__ = [
    "HGRNBitAttention",
    "HGRNBitBlock",
    "HGRNBitCache",
    "HGRNBitForCausalLM",
    "HGRNBitMLP",
    "HGRNBitModel",
    "HGRNBitPreTrainedModel",
    "RMSNormSwishGate",
]
