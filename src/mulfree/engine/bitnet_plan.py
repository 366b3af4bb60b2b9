"""The BitNet b1.58 decode step on the compiled core: every layer in one `plan_run` call.

`BitNetPlan` is the transformer family's `FamilyPlan` (mulfree.engine.core): it owns, for
`capacity` sequence slots, a KV cache per layer in the layout of csrc/mf_tfm.h (keys in tiles of
8 positions, values row per position; float32, bfloat16, float16 or int8 with a step per stored
vector), the position of every slot, and float32 scratch rows. A step on B slots is one encoded
plan (csrc/mf_plan.c), cached per slot list, per layer:

    tfm_norm      x += (previous layer's down output); h = input_layernorm(x)
    tq2_linear    q | k | v = ternary(h)               (int8 absmax per token inside the kernel)
    tfm_rope      q and k heads rotated at each row's position
    tfm_kv_write  k, v stored at (slot, position)
    tfm_attend    GQA attention over positions 0..position, exact or L-Mul products
    tfm_norm      attn_sub_norm (absent in Llama-layout models: the kernel reads the output)
    tq2_linear    o_proj;  tfm_norm: x += o, h = post_attention_layernorm(x)
    tq2_linear    gate | up;  tfm_glu: act(gate) * up, ffn_sub_norm;  tq2_linear: down_proj
then the final norm and, for an int8 head, tfm_head_i8 (the int8 table times int8 absmax
activations, exact integer sums: the head is int8, not ternary), for an int4 head tfm_head_i4
(csrc/mf_head.c: exact integer sums per group of 32, then its bfloat16 step; spec
engine/head_ref.py), for a bfloat16 head tfm_head_bf16 (float32 activations, float32 sums in 8
lanes); the float16 and float32 heads (engine.bitnet_model.QuantizedHead) run after the plan in
torch.
Positions are read by the stages from rows [B, 2] = (slot, position), which `run` refills before
each call, so one encoded plan serves every step of a slot list. A prompt runs in chunks of
PREFILL_CHUNK tokens as the rows of one pass (the rows t of a chunk at positions p + t: every k, v
of the chunk is stored before any row attends, and row t attends over positions <= p + t, the
causal mask by construction); each row's arithmetic is that of a one-token step, so a prefill
equals stepping its tokens one by one, bit for bit (tests/engine/test_bitnet_plan.py).

The stages' spec is engine/bitnet_ref.py (bit for bit); the step's spec is BitNetDecoder's torch
path (`fused=False`), which it matches through int8 rounding: the stages use their own exp
polynomial, RMS sum order and sequential attention sums where torch uses its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mulfree.engine import plan as P
from mulfree.engine.bitnet_ref import ACTS, KTILE, KV_DTYPES
from mulfree.errors import MulfreeError

PREFILL_CHUNK = 64  # prompt tokens per pass (weights read once per chunk)
MAX_CACHED_PLANS = 256
F32 = 4  # bytes per float32


LINEARS = ("qkv", "o", "gate_up", "down")  # a TfmLayer's kernel calls


@dataclass
class TfmLayer:
    """One decoder layer as the plan reads it (NumPy arrays; norms None when absent)."""

    input_norm: np.ndarray
    post_norm: np.ndarray
    attn_sub_norm: np.ndarray | None
    ffn_sub_norm: np.ndarray | None
    qkv: P.Linear
    o: P.Linear
    gate_up: P.Linear
    down: P.Linear


@dataclass
class TfmWeights:
    """A BitNet model as the compiled step reads it."""

    layers: list[TfmLayer]
    final_norm: np.ndarray
    cos: np.ndarray  # float32 [max_context, hd]: RoPE tables per position
    sin: np.ndarray
    embed: Any  # ids int64 [B] -> float32 [B, D]
    head: Any  # float32 [B, D] -> logits [B, V] (a torch module or a function)
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    eps: float
    act: str  # "relu2" | "silu"
    head_i8: tuple[np.ndarray, np.ndarray] | None = None  # (codes int8 [V, D], step [V]): in C
    # (codes uint8 [V, 16 G], steps as bfloat16 bits uint16 [V, G]): in C (csrc/mf_head.h)
    head_i4: tuple[np.ndarray, np.ndarray] | None = None
    head_bf16: np.ndarray | None = None  # the table as bfloat16 bits uint16 [V, D]: in C

    @property
    def head_in_plan(self) -> bool:
        return any(h is not None for h in (self.head_i8, self.head_i4, self.head_bf16))


class BitNetPlan:
    """The BitNet family on the compiled core (see the module docstring).

    kv_dtype: one of bitnet_ref.KV_DTYPES; attention "exact" | "lmul" (mantissa_bits None: all
    23); isas: ternary kernel family -> ISA level name; stage_isa: the level name of the stages."""

    def __init__(self, C, w: TfmWeights, *, threads: int, isas, stage_isa: str, kv_dtype: str,
                 attention: str, mantissa_bits: int | None, max_context: int,
                 min_weights_per_thread: int = P.MIN_WEIGHTS_PER_THREAD, capacity: int = 1):  # fmt: skip
        from mulfree import kernels

        if kv_dtype not in KV_DTYPES:
            raise MulfreeError(
                f"kv cache dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}"
            )
        if w.act not in ACTS:
            raise MulfreeError(
                f"the compiled step has activations {', '.join(ACTS)}, not {w.act!r}"
            )
        if w.heads % w.kv_heads or w.head_dim % 2:
            raise MulfreeError("the compiled step needs heads % kv_heads == 0 and an even head_dim")
        self.C, self.w, self.threads = C, w, int(threads)
        self.vocab = w.vocab
        self.kv_dtype, self.attention = kv_dtype, attention
        self.mbits = (
            -1 if attention == "exact" else (23 if mantissa_bits is None else int(mantissa_bits))
        )
        self.max_context = int(max_context)
        self.ctx = -(-self.max_context // KTILE) * KTILE  # cache positions per slot
        self.min_weights_per_thread = int(min_weights_per_thread)
        self._levels = {f: kernels.ISA_LEVELS[lv] for f, lv in isas.items()}
        self._levels.setdefault("t81", kernels.ISA_LEVELS[kernels.isa_max()])  # t81 weights' calls
        self._family = kernels.ternary_family
        self._stage = kernels.ISA_LEVELS[stage_isa]
        self.capacity = 0
        self.lengths = np.zeros(0, dtype=np.int64)
        self._plans: dict = {}
        self.allocate(capacity)

    # --- state -----------------------------------------------------------------------------
    def _buffers(self, rows: int) -> dict[str, np.ndarray]:
        w = self.w
        z = lambda n: np.zeros((rows, n), dtype=np.float32)  # noqa: E731
        qkv = (w.heads + 2 * w.kv_heads) * w.head_dim
        return {"x": z(w.hidden), "h": z(w.hidden), "qkv": z(qkv), "a": z(w.heads * w.head_dim),
                "ha": z(w.heads * w.head_dim), "y": z(w.hidden), "gu": z(2 * w.inter),
                "z": z(w.inter), "hf": z(w.hidden), "rows": np.zeros((rows, 2), dtype=np.int64)}  # fmt: skip

    def allocate(self, capacity: int) -> None:
        w, cap = self.w, int(capacity)
        L, Hkv, hd, ctx = len(w.layers), w.kv_heads, w.head_dim, self.ctx
        store = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.uint16,
                 "int8": np.int8}[self.kv_dtype]  # fmt: skip
        k = np.zeros(
            (L, cap, Hkv, ctx // KTILE, hd, KTILE), dtype=store
        )  # [L, slot, kv head, tile, hd, 8]
        v = np.zeros((L, cap, Hkv, ctx, hd), dtype=store)  # [L, slot, kv head, position, hd]
        steps = self.kv_dtype == "int8"
        ks = np.zeros((L, cap, Hkv, ctx), dtype=np.float32) if steps else None
        vs = np.zeros((L, cap, Hkv, ctx), dtype=np.float32) if steps else None
        lengths = np.zeros(cap, dtype=np.int64)
        if self.capacity:
            keep = min(cap, self.capacity)
            k[:, :keep], v[:, :keep] = self.k[:, :keep], self.v[:, :keep]
            if steps:
                ks[:, :keep], vs[:, :keep] = self.ks[:, :keep], self.vs[:, :keep]
            lengths[:keep] = self.lengths[:keep]
        self.k, self.v, self.ks, self.vs, self.lengths = k, v, ks, vs, lengths
        self.buf = self._buffers(cap)
        self.logits = np.zeros((cap, w.vocab), dtype=np.float32)
        self.capacity = cap
        self._plans = {}  # their addresses pointed into the old arrays
        self._pbuf = None  # the prefill buffers, on first use

    @property
    def nbytes(self) -> int:
        """Bytes of the KV caches (all slots)."""
        return sum(a.nbytes for a in (self.k, self.v, self.ks, self.vs) if a is not None)

    def clear(self, slot: int) -> None:
        self.lengths[slot] = 0  # positions past a slot's length are never read

    def load_kv(self, slot: int, keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
        """Make slot `slot` hold n positions: keys[l], values[l] float32 [n, Hkv, hd] of layer l
        (RoPE applied, as the step stores them). They are written by tfm_kv_write, the stage a
        step writes with, so the cache holds what stepping those tokens would have stored
        (rounded to the cache dtype the same way); the slot's length becomes n."""
        w = self.w
        n = int(keys[0].shape[0]) if len(keys) else 0
        if len(keys) != len(w.layers) or len(values) != len(w.layers):
            raise MulfreeError(f"load_kv needs keys and values of all {len(w.layers)} layers")
        if not 0 <= n <= self.max_context:
            raise MulfreeError(f"load_kv: {n} positions > max_context {self.max_context}")
        width = w.kv_heads * w.head_dim
        rows = np.stack([np.full(n, slot), np.arange(n)], axis=1).astype(np.int64)  # [n, 2]
        kv = np.empty((n, 2 * width), dtype=np.float32)  # [n, k | v], the stage's row layout
        ptr = lambda a: 0 if a is None else a.ctypes.data  # noqa: E731
        for li in range(len(w.layers)):
            kv[:, :width] = keys[li].reshape(n, width)
            kv[:, width:] = values[li].reshape(n, width)
            if n:
                self.C.tfm_kv_write(ptr(kv), n, 2 * width, 0, width, ptr(self.k[li]),
                                    ptr(self.v[li]), ptr(None if self.ks is None else self.ks[li]),
                                    ptr(None if self.vs is None else self.vs[li]),
                                    KV_DTYPES[self.kv_dtype], w.kv_heads, w.head_dim, self.ctx,
                                    ptr(rows))  # fmt: skip
        self.lengths[slot] = n

    def kv_rows(self, slot: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) float32 [L, n, Hkv, hd] stored at positions start .. start + n - 1 of
        `slot`, decoded from the cache dtype (float32: the step's own values)."""
        t0, t1 = start // KTILE, -(-(start + n) // KTILE)
        k = self.k[:, slot, :, t0:t1]  # [L, Hkv, tiles, hd, 8]
        L, Hkv, tiles, hd, _ = k.shape
        k = k.transpose(0, 2, 4, 1, 3).reshape(L, tiles * KTILE, Hkv, hd)  # [L, positions, Hkv, hd]
        k = k[:, start - t0 * KTILE : start - t0 * KTILE + n]
        v = self.v[:, slot, :, start : start + n].transpose(0, 2, 1, 3)  # [L, n, Hkv, hd]
        if self.kv_dtype == "float32":
            return np.ascontiguousarray(k), np.ascontiguousarray(v)
        if self.kv_dtype == "bfloat16":
            dec = lambda a: (a.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
            return dec(k), dec(v)
        if self.kv_dtype == "float16":
            return k.view(np.float16).astype(np.float32), v.view(np.float16).astype(np.float32)
        ks = self.ks[:, slot, :, start : start + n].transpose(0, 2, 1)[..., None]  # [L, n, Hkv, 1]
        vs = self.vs[:, slot, :, start : start + n].transpose(0, 2, 1)[..., None]
        return k.astype(np.float32) * ks, v.astype(np.float32) * vs

    # --- the plan --------------------------------------------------------------------------
    def threads_for(self, lin: P.Linear, rows: int = 1) -> int:
        return P.threads_for(lin, self.threads, self.min_weights_per_thread, rows)

    def step_plan(self, buf: dict[str, np.ndarray], B: int, head_rows: str = "all") -> list:
        """The compiled calls of one pass on the first B rows of `buf` (their slots and
        positions in buf["rows"]); head_rows "all" (final norm of every row into buf["hf"]),
        "last" (row B-1 only, into hf row 0) or "none"."""
        C, w = self.C, self.w
        ptr = lambda a: 0 if a is None else a.ctypes.data  # noqa: E731
        D, H, Hkv, hd, inter = w.hidden, w.heads, w.kv_heads, w.head_dim, w.inter
        nqkv = (H + 2 * Hkv) * hd
        kisa = self._levels[self._family(B)]
        dt, rows, sc = KV_DTYPES[self.kv_dtype], ptr(buf["rows"]), float(w.head_dim**-0.5)

        def kernel(lin: P.Linear, u, out):
            if lin.layout == "t81":  # at the level its kernel runs at (the decoder's isa)
                fn, isa = C.t81_linear, self._levels["t81"]
            elif lin.layout == "tq2":
                fn, isa = C.tq2_linear, kisa
            else:
                raise ValueError(f"unknown weight layout {lin.layout!r}")
            return fn, (ptr(u), B, lin.in_features, ptr(lin.data), lin.out_features,
                        float(lin.scale), ptr(lin.row_scales), ptr(out), 0,
                        self.threads_for(lin, B), isa)  # fmt: skip

        x, h, qkv, a, ha, y = (buf[n] for n in ("x", "h", "qkv", "a", "ha", "y"))
        plan, pending = [], 0
        for li, L in enumerate(w.layers):
            cache = (ptr(self.k[li]), ptr(self.v[li]), ptr(None if self.ks is None else self.ks[li]),
                     ptr(None if self.vs is None else self.vs[li]), dt)  # fmt: skip
            plan.append((C.tfm_norm, (ptr(x), pending, B, D, ptr(L.input_norm), w.eps, ptr(h))))
            plan.append(kernel(L.qkv, h, qkv))
            plan.append(
                (C.tfm_rope, (ptr(qkv), B, nqkv, H + Hkv, hd, ptr(w.cos), ptr(w.sin), rows))
            )
            plan.append((C.tfm_kv_write, (ptr(qkv), B, nqkv, H * hd, (H + Hkv) * hd, *cache, Hkv,
                                          hd, self.ctx, rows)))  # fmt: skip
            plan.append((C.tfm_attend, (ptr(qkv), B, nqkv, ptr(a), H * hd, *cache, H, Hkv, hd,
                                        self.ctx, rows, sc, self.mbits, self._stage, self.threads)))  # fmt: skip
            o_in = a
            if L.attn_sub_norm is not None:
                plan.append(
                    (C.tfm_norm, (ptr(a), 0, B, H * hd, ptr(L.attn_sub_norm), w.eps, ptr(ha)))
                )
                o_in = ha
            plan.append(kernel(L.o, o_in, y))
            plan.append((C.tfm_norm, (ptr(x), ptr(y), B, D, ptr(L.post_norm), w.eps, ptr(h))))
            plan.append(kernel(L.gate_up, h, buf["gu"]))
            plan.append((C.tfm_glu, (ptr(buf["gu"]), B, inter, ptr(L.ffn_sub_norm), w.eps,
                                     ptr(buf["z"]), ACTS[w.act], self._stage)))  # fmt: skip
            plan.append(kernel(L.down, buf["z"], y))
            pending = ptr(y)
        if head_rows == "all":
            plan.append(
                (C.tfm_norm, (ptr(x), pending, B, D, ptr(w.final_norm), w.eps, ptr(buf["hf"])))
            )
        elif head_rows == "last":
            last = F32 * (B - 1) * D
            plan.append((C.tfm_norm, (ptr(x) + last, pending + last, 1, D, ptr(w.final_norm), w.eps,
                                      ptr(buf["hf"]))))  # fmt: skip
        elif head_rows != "none":
            raise ValueError(f"head_rows must be all, last or none, not {head_rows!r}")
        if w.head_in_plan and head_rows != "none":  # the int8 / int4 / bf16 head in the plan too
            rows_h = B if head_rows == "all" else 1
            threads = max(1, min(self.threads, w.vocab * D // self.min_weights_per_thread))
            hf, out = ptr(buf["hf"]), ptr(self.logits)
            if w.head_bf16 is not None:
                plan.append((C.tfm_head_bf16, (hf, rows_h, D, ptr(w.head_bf16), w.vocab, out,
                                               threads, self._stage)))  # fmt: skip
            else:
                stage, (codes, step) = ((C.tfm_head_i8, w.head_i8) if w.head_i8 is not None
                                        else (C.tfm_head_i4, w.head_i4))  # fmt: skip
                plan.append((stage, (hf, rows_h, D, ptr(codes), w.vocab, ptr(step), out, threads,
                                     self._stage)))  # fmt: skip
        return plan

    use_plan_run = True  # False: the same calls one by one from Python (the runner's twin)

    def _run_plan(self, key, buf, B: int, head_rows: str) -> None:
        """Run the (cached) plan of `key`: one plan_run call, or its calls one by one."""
        entry = self._plans.get(key)
        if entry is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            plan = self.step_plan(buf, B, head_rows)
            entry = self._plans[key] = (plan, P.encode_plan(self.C, plan))
        plan, words = entry
        if self.use_plan_run:
            self.C.plan_run(words.ctypes.data, words.size)
        else:
            for fn, args in plan:
                fn(*args)

    def _check_room(self, slot: int, n: int) -> None:
        pos = int(self.lengths[slot])
        if pos + n > self.max_context:
            raise MulfreeError(f"context full: {pos} + {n} tokens > max_context {self.max_context}")

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        e = self.w.embed(tokens)
        return e.numpy() if hasattr(e, "numpy") else np.asarray(e, dtype=np.float32)

    def _head(self, hf: np.ndarray, out: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            out[:] = self.w.head(torch.from_numpy(hf)).float().numpy()

    # --- FamilyPlan ------------------------------------------------------------------------
    def run(self, slots: Sequence[int], tokens: np.ndarray) -> np.ndarray:
        slots = [int(s) for s in slots]
        B = len(slots)
        for s in slots:
            self._check_room(s, 1)
        buf = self.buf
        buf["rows"][:B, 0] = slots
        buf["rows"][:B, 1] = self.lengths[slots]
        buf["x"][:B] = self._embed(tokens)  # [B, D]
        self._run_plan(("step", B), buf, B, "all")  # slots and positions: buf["rows"]
        self.lengths[slots] += 1
        if not self.w.head_in_plan:
            self._head(buf["hf"][:B], self.logits[:B])
        self.hidden = buf["hf"][:B]
        return self.logits[:B]

    def prefill(self, slot: int, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self._check_room(slot, tokens.size)
        if self._pbuf is None:
            self._pbuf = self._buffers(PREFILL_CHUNK)
        buf, T = self._pbuf, tokens.size
        for start in range(0, T, PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            B, last = chunk.size, start + chunk.size == T
            pos = int(self.lengths[slot])
            buf["rows"][:B, 0] = slot
            buf["rows"][:B, 1] = np.arange(pos, pos + B)
            buf["x"][:B] = self._embed(chunk)
            self._run_plan(("prefill", B, last), buf, B, "last" if last else "none")
            self.lengths[slot] = pos + B
        if not self.w.head_in_plan:
            self._head(buf["hf"][:1], self.logits[:1])
        self.hidden = buf["hf"][:1]
        return self.logits[0]


def weights_of(dec) -> TfmWeights:
    """The compiled step's view of a BitNetDecoder's weights (NumPy views, no copies)."""
    import torch

    def np_(t):
        return None if t is None else t.detach().contiguous().numpy()

    def lin(x: P.Linear) -> P.Linear:
        return P.Linear(
            None, np_(x.data), x.out_features, x.in_features, x.scale, np_(x.row_scales), x.layout
        )

    layers = [TfmLayer(np_(L.input_norm), np_(L.post_norm), np_(L.attn_sub_norm),
                       np_(L.ffn_sub_norm), lin(L.qkv), lin(L.o), lin(L.gate_up), lin(L.down))
              for L in dec.layers]  # fmt: skip
    cfg = dec.config

    embed = numpy_embedding(dec.embed, cfg.vocab_size, cfg.hidden_size)
    if embed is None:  # a table NumPy cannot read: torch's lookup

        def embed(ids: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return dec.embed(torch.from_numpy(ids)).float().contiguous().numpy()

    head = dec.head
    head_i8 = head_i4 = head_bf16 = None
    if getattr(head, "fmt", None) == "bfloat16":  # its table's bits, a view
        head_bf16 = head.weight.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
    elif getattr(head, "fmt", None) == "int8":  # QuantizedHead: its table, read by tfm_head_i8
        head_i8 = (np_(head.weight_int8), np_(head.weight_step.float()))
    elif getattr(head, "fmt", None) == "int4":  # its codes as stored; steps as bfloat16 bits
        from mulfree.engine.head_ref import bf16_steps

        steps = bf16_steps(np_(head.weight_step.float()))  # None: not bf16 values, torch runs it
        head_i4 = None if steps is None else (np_(head.weight_int4), steps)
    return TfmWeights(layers, np_(dec.final_norm), np_(dec.cos.contiguous()), np_(dec.sin.contiguous()),
                      embed, dec.head, cfg.hidden_size, dec.heads, dec.kv_heads, dec.head_dim,
                      cfg.intermediate_size, cfg.vocab_size, dec.eps, str(cfg.hidden_act),
                      head_i8, head_i4, head_bf16)  # fmt: skip


def tq2_weights(C, w: TfmWeights) -> tuple[TfmWeights, Any]:
    """`w` with every t81 projection replaced by a tq2 copy (engine.plan.tq2_copies): for a step
    at an ISA level without the t81 kernel. Returns (weights, the copies' arena or None)."""
    from dataclasses import replace

    lins = [getattr(L, n) for L in w.layers for n in LINEARS]
    new, arena = P.tq2_copies(C, lins)
    if arena is None:
        return w, None
    layers = [replace(L, **{n: new.get(id(getattr(L, n)), getattr(L, n)) for n in LINEARS})
              for L in w.layers]  # fmt: skip
    return replace(w, layers=layers), arena


def numpy_embedding(module, vocab: int, dim: int):
    """ids int64 [B] -> float32 rows [B, dim]: the lookup of a BitNet embedding module (int8,
    int4 or float tables, or a tied model's head table) in NumPy on the module's own buffers,
    the same rows bit for bit (tests/engine/test_bitnet_plan.py); None where NumPy cannot read
    the table. Why not torch's op: a 64-token prefill chunk's lookup runs on torch's OpenMP
    pool, whose workers then spin for milliseconds on the cores the plan's team needs (the
    kernels' busy-core back-off then took 2-thread prefill down to one thread)."""
    import torch

    from mulfree.engine.bitnet_model import TiedEmbedding
    from mulfree.engine.lite import embedding_lookup

    table = module._head if isinstance(module, TiedEmbedding) else module
    fmt = getattr(table, "fmt", None)  # int8 / int4 modules and heads name theirs
    w = getattr(table, "weight", None)
    if fmt not in ("int8", "int4") and w is not None and w.dtype == torch.bfloat16:
        if tuple(w.shape) != (vocab, dim):
            return None
        bits = w.detach().view(torch.int16).numpy().view(np.uint16)  # bfloat16 -> float32: exact
        rows = lambda ids: (bits[ids].astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    else:  # engine.lite's lookup (int8, int4, float32, float16), the hgrn_bit engine's twin
        try:
            tensors = {f"model.embeddings.{k}": v.detach().numpy() for k, v in table.state_dict().items()}
            rows = embedding_lookup(tensors, fmt if fmt in ("int8", "int4") else "float32", vocab,
                                    dim, "the model")  # fmt: skip
        except (TypeError, RuntimeError, MulfreeError):  # a dtype NumPy or lite cannot read
            return None

    def lookup(ids: np.ndarray) -> np.ndarray:
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise MulfreeError(f"token id out of range [0, {vocab})")
        return np.ascontiguousarray(rows(ids), dtype=np.float32)

    return lookup
