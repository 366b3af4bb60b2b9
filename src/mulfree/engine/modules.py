"""Inference modules of the packed engine, and `pack_model_`, the verb that puts them in a model.

- `PackedBitLinear`: `PackedTernaryLinear` (same buffers, same forward) as the hgrn_bit model's
  projections; its kernel is the custom op `torch.ops.mulfree.tq2_linear`, which the energy
  counter prices itself (`mulfree.kernels.ternary`), so the module has no counting code.
- `Int8Embedding`: a token embedding stored as int8 rows with one float32 step per row
  (x = q * step); `Int4Embedding`: 4-bit codes with one step per 32 entries of a row (half
  the bytes: the form that keeps a packed MMfreeLM-370M under 100 MB).
- `pack_model_(model)`: every BitLinear of a model -> PackedBitLinear, in place.
"""

from __future__ import annotations

import torch
from torch import nn

from mulfree._swap import swap_modules_
from mulfree.engine.format import INT4_GROUP
from mulfree.errors import MulfreeError
from mulfree.kernels.ternary import tq2_nnz  # noqa: E402,F401  (re-exported)
from mulfree.ternary.packed_linear import PackedTernaryLinear, ternary_linear


class PackedBitLinear(PackedTernaryLinear):
    """PackedTernaryLinear as a MatMul-free model's projection (state dict unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return ternary_linear(x, self.packed(), self.bias)


class _QuantizedEmbedding(nn.Module):
    """Shared part of the quantized token embeddings: buffers `weight_<fmt>` (codes) and
    `weight_step`, built by `quantize`, read back by `rows` (which decodes only those rows)."""

    fmt = ""  # "int8" | "int4": the embedding_format name and the codes buffer's suffix

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    @classmethod
    def from_float(cls, weight: torch.Tensor):
        m = cls(*weight.shape)
        codes, step = cls.quantize(weight)
        getattr(m, f"weight_{cls.fmt}").copy_(codes)
        m.weight_step.copy_(step)
        return m

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, D] this module looks up."""
        return self.rows(slice(None))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise MulfreeError(f"token id out of range [0, {self.num_embeddings})")
        return self.rows(ids)  # [..., D]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.fmt}"


class Int8Embedding(_QuantizedEmbedding):
    """Token embedding with int8 rows: e[t] = q[t] * step[t] (float32), step = absmax / 127.

    Buffers `weight_int8` [V, D] int8 and `weight_step` [V] float32. A lookup dequantizes only
    the rows it reads (D multiplies per token, counted by the energy counter as fp32 muls).
    """

    fmt = "int8"

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.register_buffer(
            "weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        )
        self.register_buffer("weight_step", torch.ones(num_embeddings, dtype=torch.float32))

    @staticmethod
    def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """weight [V, D] float -> (q [V, D] int8 in [-127, 127], step [V] float32)."""
        w = weight.detach().float()
        step = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [V]
        q = torch.round(w / step[:, None]).clamp_(-127, 127).to(torch.int8)
        return q, step

    def rows(self, ids) -> torch.Tensor:
        return self.weight_int8[ids].float() * self.weight_step[ids].unsqueeze(-1)  # [..., D]


class Int4Embedding(_QuantizedEmbedding):
    """Token embedding with 4-bit codes in groups of 32 along a row, one float32 step per group:
    e[t, j] = q[t, j] * step[t, j // 32], q in [-7, 7], step = group absmax / 7.

    Buffers `weight_int4` uint8 [V, G * 16] (two codes per byte, q + 8; the low nibble is the
    even column) and `weight_step` float32 [V, G], G = ceil(D / 32); columns past D are zero
    codes. Half the bytes of Int8Embedding (what keeps a packed MMfreeLM-370M under 100 MB),
    at a coarser rounding: |e - w| <= step / 2 per entry. A lookup decodes only its rows.
    """

    fmt = "int4"

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        groups = -(-embedding_dim // INT4_GROUP)
        self.register_buffer(
            "weight_int4",
            torch.full((num_embeddings, groups * INT4_GROUP // 2), 0x88, dtype=torch.uint8),
        )
        self.register_buffer("weight_step", torch.ones(num_embeddings, groups, dtype=torch.float32))

    @staticmethod
    def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """weight [V, D] float -> (codes [V, G * 16] uint8, step [V, G] float32)."""
        w = weight.detach().float()
        V, D = w.shape
        G = -(-D // INT4_GROUP)
        w = torch.nn.functional.pad(w, (0, G * INT4_GROUP - D)).reshape(V, G, INT4_GROUP)
        step = w.abs().amax(dim=2).clamp_min(1e-12) / 7.0  # [V, G]
        q = torch.round(w / step[..., None]).clamp_(-7, 7).to(torch.uint8) + 8  # [V, G, 32]
        q = q.reshape(V, -1, 2)  # [V, G * 16, 2]: (even, odd) column pairs
        return q[..., 0] | (q[..., 1] << 4), step

    @staticmethod
    def decode(codes: torch.Tensor, step: torch.Tensor, dim: int) -> torch.Tensor:
        """codes [..., G * 16] uint8, step [..., G] -> float32 rows [..., dim]."""
        q = torch.stack((codes & 15, codes >> 4), dim=-1).flatten(-2)  # [..., G * 32]
        q = q.to(torch.float32).sub_(8).unflatten(-1, (step.shape[-1], INT4_GROUP))
        return (q * step[..., None]).flatten(-2)[..., :dim]

    def rows(self, ids) -> torch.Tensor:
        return self.decode(self.weight_int4[ids], self.weight_step[ids], self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()} (groups of {INT4_GROUP})"


def attach_generation_config(model: nn.Module, folder) -> None:
    """A packed folder's generation_config.json as model.generation_config, when there is one
    (a broken file leaves the config-derived defaults)."""
    from pathlib import Path

    if not (Path(folder) / "generation_config.json").is_file():
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    except (OSError, ValueError):
        pass


def pack_model_(model: nn.Module) -> nn.Module:
    """Replace every BitLinear of `model` by a PackedBitLinear (tq2, add-only kernels), in place.

    Each packed layer computes its BitLinear's no-grad forward (ternary weight quantized with the
    absmean rule, int8 activations), within the tolerance in mulfree.ternary.packed_linear; the
    float weights are dropped. Returns the model (for chaining). Inference only.
    """
    from mulfree.ternary.bitlinear import BitLinear

    swap_modules_(model, lambda _, m: PackedBitLinear.from_bitlinear(m) if isinstance(m, BitLinear) else None)
    return model.eval() if hasattr(model, "eval") else model


def lay_out_(model: nn.Module, layout: str = "auto", isa: str | None = None) -> dict[str, int]:
    """Re-code the packed weights of a packed `model` (hgrn_bit or BitNet) in place as t81 where
    that layout is chosen (`layout` "auto": mulfree.kernels.dispatch.weight_layout per input
    width, for kernels run at `isa`; or "tq2" / "t81" for every layer). Projections the decoder
    runs as one weight (an MLGRU's i/f/g, a transformer's q/k/v and gate/up:
    `model.fused_projections`) stay tq2 unless each has a multiple of 64 rows (t81 interleaves
    pairs of 32-row blocks; engine.plan.choose_layouts). Values, sizes and state dicts are
    unchanged (PackedTernaryLinear.to_layout_). Returns layout -> number of layers."""
    from mulfree import kernels
    from mulfree.engine.plan import MLGRU_FUSED, choose_layouts

    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, PackedTernaryLinear)]
    lays = choose_layouts([(n, m.out_features, m.in_features) for n, m in mods],
                          layout if kernels.available() or layout != "auto" else "tq2", isa,
                          getattr(model, "fused_projections", MLGRU_FUSED))  # fmt: skip
    counts = {"tq2": 0, "t81": 0}
    for (_, m), lay in zip(mods, lays, strict=True):
        m.to_layout_(lay)
        counts[lay] += 1
    return counts


def _arena_range(m: nn.Module) -> tuple[object, int] | None:
    """(arena, offset) of the packed weight of `m` when `place_weights_` put it in an arena and
    it is still there (a copied or reloaded model's tensors live elsewhere), else None."""
    tag = getattr(m, "_mf_arena", None)
    wp = getattr(m, "weight_packed", None)
    if tag is None or tag[0] is None or wp is None or wp.numel() == 0:
        return None
    return tag if wp.data_ptr() == tag[0].address + tag[1] else None


def place_weights_(model: nn.Module) -> nn.Module:
    """Move the packed weights of every PackedTernaryLinear of `model` into one arena on 2 MiB
    pages (`mulfree.kernels.memory`), in place; values unchanged.

    Why: a decode step streams every packed weight once, and on huge pages a cold batch-1 call
    walks far fewer page tables (measured in docs/engine.md, "Weight memory"). The weights are
    laid out back to back in module order, so projections defined together (an MLGRU's i/f/g)
    are adjacent and the decoder runs them as one call on a view (`adjacent_weights`) instead
    of a fused copy. Each layer's `weight_packed` buffer becomes a tensor of its own storage
    over the arena (state dicts and safetensors see ordinary, unshared tensors; a layer
    remembers where in `_mf_arena`). Layers sharing one weight tensor keep sharing it. A model
    whose weights are already placed is left as it is. Returns the model.
    """
    from mulfree.kernels import memory

    layers = [m for m in model.modules() if isinstance(m, PackedTernaryLinear)]
    if not layers:
        return model
    where = [_arena_range(m) for m in layers]
    if where[0] is not None and all(w is not None and w[0] is where[0][0] for w in where):
        return model  # already placed (a model placed once keeps its layout)
    unique: dict[int, torch.Tensor] = {}  # id -> tensor, first use order
    for m in layers:
        unique.setdefault(id(m.weight_packed), m.weight_packed)
    # ordinary tensors even when called under inference_mode (layers read their version)
    with torch.inference_mode(False), torch.no_grad():
        arena, copies = memory.copy_to_arena([t.contiguous() for t in unique.values()])
    moved = dict(zip(unique, copies, strict=True))  # old tensor id -> its copy
    for m in layers:
        t = moved[id(m.weight_packed)]
        m.weight_packed = t  # a registered buffer: replaced in _buffers
        m._mf_arena = (arena, t.data_ptr() - arena.address)
        m._packed = None  # drop the cached view of the old buffer (and its memory)
    del unique, copies, moved, t
    memory.trim_heap()  # the old buffers went back to malloc; hand them to the OS
    return model


def adjacent_weights(layers: list[nn.Module]) -> torch.Tensor | None:
    """The packed bytes of `layers` as one tensor without a copy, when `place_weights_` put
    their weights back to back in one arena (rows concatenated: the tq2 weight of the stacked
    [sum N_i, K] matrix, since tq2 stores 32-row blocks contiguously); else None."""
    where = [_arena_range(m) for m in layers]
    if any(w is None or w[0] is not where[0][0] for w in where):
        return None
    sizes = [m.weight_packed.numel() for m in layers]
    for w, n, nxt in zip(where[:-1], sizes, where[1:], strict=False):
        if w[1] + n != nxt[1]:
            return None
    arena, start = where[0]
    return arena.tensor(start, sum(sizes))
