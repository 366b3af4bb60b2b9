"""The BitNet b1.58 decode path: a transformer on the packed ternary kernels, with a KV cache per
sequence and exact or L-Mul attention.

`BitNetDecoder(model)` reads the weights of a PackedBitNetForCausalLM once (q|k|v and gate|up as
one kernel call each: `place_weights_` put them back to back, so the call reads them through a
view with a scale per row) and keeps, per sequence slot, a key/value cache bounded by
`max_context`. Its outward interface is the hgrn_bit Decoder's (mulfree.engine.decode):
`reset(batch)`, `prefill(ids)` -> logits of the last position, `step(ids)` -> logits [batch,
vocab] (a buffer the next step reuses), `threads`, `isas`; the family-specific part is the
layer step (`_layer`), over the weights `BitNetWeights` holds.

Per layer, for rows x [R, D] (in `step` one token of every sequence, in `prefill` a block of
`block` tokens of one; the projections run on all rows in one kernel call, each weight read once
per call, while RoPE, the cache and attention are per sequence):
    h = RMSNorm(x) (transformers' formula, op for op); q|k|v = ternary(h) (int8 absmax per
    token inside the kernel); RoPE on q and k at the tokens' positions; k, v appended to the
    cache; attention over the cache with GQA (H / Hkv query heads per kv head):
        scores = MATMUL(q, Kᵀ) * head_dim^-0.5 (+ causal mask in a block), softmax in float32,
        out = MATMUL(p, V)
    where MATMUL is torch's (attention="exact") or the L-Matmul kernel (attention="lmul": every
    scalar product an L-Mul with `mantissa_bits`, sequential float32 sums: mulfree.lmul.lmatmul);
    attn_sub_norm, o = ternary(.), x += o; h = RMSNorm(x); gate|up = ternary(h);
    z = act(gate) * up (ReLU² for BitNet), ffn_sub_norm, down = ternary(z), x += down.
Then the final RMSNorm and the head (engine.bitnet_model.QuantizedHead: int8 / int4 / float).
`step_energy(ids)` counts and prices one step (mulfree.energy), next to dense fp32 projections.
`HFCacheStep` (end of this file) runs transformers' `generate` calls of the packed model on the
compiled step, on transformers' own cache (engine.bitnet_model's forward hands them over).

By default (`fused=None`, when the compiled core is built) a step runs whole on the compiled
core: engine.bitnet_plan.BitNetPlan encodes every layer (the same kernel calls, and the
elementwise / attention stages of csrc/mf_tfm.c in place of the torch ops below) into one
plan_run call, with its own KV cache; it matches this torch path through int8 rounding
(tests/engine/test_bitnet_plan.py). `fused=False` runs the torch path, the compiled step's spec.

The torch path's spec is the PackedBitNetForCausalLM forward (transformers' modules on the same kernels),
with `mulfree.apply_lmul_` for L-Mul attention. With a float32 cache and L-Mul attention every
operation is the model's own in the same order (the L-Mul sums run sequentially whatever the
shapes), so final hidden states are bit-equal (tests/engine/test_bitnet_decode.py); with exact
attention BLAS may order the float32 sums of other strides differently, an ulp that can move an
int8 activation code downstream: that stage is tested alone within a float32 bound, and end to
end by its greedy tokens.
A bfloat16 / float16 cache rounds k and v once as they are stored; an int8 cache stores each
(position, head) vector as int8 codes with its absmax / 127 step (errors measured in
benchmarks/bench_bitnet.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mulfree import energy, kernels
from mulfree.engine import plan as P
from mulfree.engine.modules import PackedBitLinear, adjacent_weights
from mulfree.errors import MulfreeError
from mulfree.kernels import ternary as K_
from mulfree.ternary import packing

ATTENTIONS = ("exact", "lmul")
KV_DTYPES = ("bfloat16", "float16", "float32", "int8")
DEFAULT_BLOCK = 64  # prefill tokens per kernel call (weights read once per block)


def rms_norm(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """transformers' BitNetRMSNorm / LlamaRMSNorm on float32 x, op for op (w None: identity)."""
    if w is None:
        return x
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def compiled_step_unsupported(config, isa: str | None = None) -> str | None:
    """Why the compiled step (engine.bitnet_plan) cannot run a model of `config` at `isa`
    (a resolved ISA name or None for the best), or None when it can."""
    from mulfree.engine.bitnet_ref import ACTS

    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    if kernels.resolve_isa(isa) == kernels.TORCH or not kernels.available():
        return "the compiled core is not available (or isa='torch')"
    if str(config.hidden_act) not in ACTS:
        return f"the compiled step has no {config.hidden_act} activation"
    if heads * head_dim != config.hidden_size or head_dim % 2:
        return "the compiled step needs hidden_size = heads * head_dim and an even head_dim"
    return None


class KVCache:
    """Keys and values of every layer for `slots` sequences of up to `max_context` tokens.

    Per layer, keys are stored transposed, Kᵀ [slots, Hkv, head_dim, max_context], and values
    V [slots, Hkv, max_context, head_dim], in `dtype` (float32, bfloat16, float16), or as int8
    codes with a float32 step per stored vector [slots, Hkv, max_context] (x = code * step,
    step = absmax / 127). Kᵀ makes q Kᵀ a plain product with wide rows (what BLAS and the
    L-Matmul kernel run fastest; a token's write is one strided column). `read` gives float32
    Kᵀ [Hkv, hd, n] and V [Hkv, n, hd].
    """

    def __init__(self, layers: int, slots: int, max_context: int, kv_heads: int, head_dim: int,
                 dtype: str = "bfloat16"):  # fmt: skip
        if dtype not in KV_DTYPES:
            raise MulfreeError(
                f"kv cache dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}"
            )
        self.dtype, self.max_context = dtype, max_context
        store = torch.int8 if dtype == "int8" else getattr(torch, dtype)
        kshape = (slots, kv_heads, head_dim, max_context)
        vshape = (slots, kv_heads, max_context, head_dim)
        self.k = [torch.zeros(kshape, dtype=store) for _ in range(layers)]
        self.v = [torch.zeros(vshape, dtype=store) for _ in range(layers)]
        if dtype == "int8":
            self.ks = [torch.zeros(vshape[:3]) for _ in range(layers)]
            self.vs = [torch.zeros(vshape[:3]) for _ in range(layers)]
        # float32 scratch for decoded reads, allocated once: a fresh multi-MB tensor per read
        # is a fresh mapping, and its page faults cost more than the conversion (measured ~7 ms
        # per 2048-position read here, against ~0.5 ms into a reused buffer)
        self._kbuf = torch.empty(kv_heads * max_context * head_dim)
        self._vbuf = torch.empty(kv_heads * max_context * head_dim)

    @property
    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in self.k + self.v)
        if self.dtype == "int8":
            n += sum(t.numel() * 4 for t in self.ks + self.vs)
        return n

    @staticmethod
    def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., hd] float32 -> (codes int8 [..., hd], step [...]): x ≈ codes * step."""
        step = x.abs().amax(-1).clamp_min(1e-12) / 127.0
        return torch.round(x / step[..., None]).clamp_(-127, 127).to(torch.int8), step

    def write(self, layer: int, slot: int, pos: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [T, Hkv, hd] (float32) at positions pos .. pos + T - 1 of `slot`."""
        t = k.shape[0]
        k, v = k.transpose(0, 1), v.transpose(0, 1)  # [Hkv, T, hd]
        if self.dtype == "int8":
            (kq, kst), (vq, vst) = self.quantize(k), self.quantize(v)
            self.ks[layer][slot, :, pos : pos + t] = kst
            self.vs[layer][slot, :, pos : pos + t] = vst
            k, v = kq, vq
        self.k[layer][slot, :, :, pos : pos + t] = k.transpose(1, 2)  # [Hkv, hd, T]
        self.v[layer][slot, :, pos : pos + t] = v

    def read(self, layer: int, slot: int, n: int, contiguous: bool = False):
        """(Kᵀ [Hkv, hd, n], V [Hkv, n, hd]) float32 of the first n positions of `slot`: views
        of a float32 cache (unless `contiguous`), else scratch buffers the next read overwrites
        (contiguous)."""
        k, v = self.k[layer][slot, :, :, :n], self.v[layer][slot, :, :n]
        if self.dtype == "float32" and not contiguous:
            return k, v
        kb = self._kbuf[: k.numel()].view(k.shape).copy_(k)  # [Hkv, hd, n]
        vb = self._vbuf[: v.numel()].view(v.shape).copy_(v)  # [Hkv, n, hd]
        if self.dtype == "int8":
            kb.mul_(self.ks[layer][slot, :, None, :n])
            vb.mul_(self.vs[layer][slot, :, :n, None])
        return kb, vb


@dataclass
class LayerWeights:
    """One decoder layer: norms (float32 [D] / [I], None when absent) and kernel calls."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    attn_sub_norm: torch.Tensor | None
    ffn_sub_norm: torch.Tensor | None
    qkv: P.Linear  # q | k | v rows, a scale per row
    o: P.Linear
    gate_up: P.Linear  # gate | up rows
    down: P.Linear


def _linear(ms: list[PackedBitLinear]) -> P.Linear:
    """One kernel call for projections sharing an input (rows stacked; a view when the arena
    holds them back to back, else a fused copy), or a single projection."""
    parts = [m.packed() for m in ms]
    if len(ms) == 1:
        p = parts[0]
        return P.Linear(None, p.data, p.out_features, p.in_features, p.scale_value, None, p.format)
    lay = parts[0].format  # one layout per group (engine.plan.choose_layouts)
    rows = packing.TQ2_ROWS * (1 if lay == "tq2" else 2)
    if any(m.out_features % rows for m in ms) or any(p.format != lay for p in parts):
        raise MulfreeError(
            f"fused projections need one layout and out_features in multiples of {rows} ({lay})"
        )
    data = adjacent_weights(ms)
    if data is None:
        data, row_scales = packing.fuse_rows(parts)
    else:
        row_scales = packing.stacked_row_scales(parts)
    n = sum(m.out_features for m in ms)
    return P.Linear(None, data, n, ms[0].in_features, 1.0, row_scales, lay)


def _weight(m) -> torch.Tensor | None:
    w = getattr(m, "weight", None)
    return None if w is None else w.detach().float().contiguous()


class BitNetDecoder:
    """Decoding on the kernels for a packed BitNet (mulfree.engine.bitnet_model).

    attention: "exact" | "lmul" (mantissa_bits as mulfree.lmul.lmatmul takes them; None = full);
    kv_dtype: "bfloat16" (default) | "float16" | "float32" | "int8"; max_context: tokens per sequence
    (default the model's max_position_embeddings); block: prefill tokens per kernel call
    (the torch path; the compiled step prefills in chunks of bitnet_plan.PREFILL_CHUNK).
    fused: None (default) runs the whole step on the compiled core (engine.bitnet_plan) when it
    is there, False the torch path below (the compiled step's spec), True requires the core.
    """

    def __init__(self, model, *, threads: int | None = None, isa: str | None = None,
                 attention: str = "exact", mantissa_bits: int | None = 3, kv_dtype: str = "bfloat16",
                 max_context: int | None = None, block: int = DEFAULT_BLOCK,
                 min_weights_per_thread: int = P.MIN_WEIGHTS_PER_THREAD,
                 fused: bool | None = None):  # fmt: skip
        from mulfree.engine.bitnet_model import PackedBitNetForCausalLM

        if not isinstance(model, PackedBitNetForCausalLM):
            raise MulfreeError(
                "BitNetDecoder needs a PackedBitNetForCausalLM (load_packed a bitnet file)"
            )
        if attention not in ATTENTIONS:
            raise MulfreeError(
                f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}"
            )
        if kv_dtype not in KV_DTYPES:
            raise MulfreeError(
                f"kv cache dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}"
            )
        cfg = model.config
        self.model, self.config = model, cfg
        self.attention, self.mantissa_bits, self.kv_dtype = attention, mantissa_bits, kv_dtype
        if attention == "lmul":
            from mulfree.lmul.formats import check_mantissa_bits, get_format

            check_mantissa_bits(get_format(torch.float32), mantissa_bits)
        limit = int(cfg.max_position_embeddings)
        self.max_context = limit if max_context is None else int(max_context)
        if not 0 < self.max_context <= limit:
            raise MulfreeError(
                f"max_context must be in [1, {limit}] (the model's max_position_embeddings), got {max_context}"
            )
        if block < 1:
            raise MulfreeError(f"block must be >= 1, got {block}")
        self.block = int(block)
        self.threads = kernels.resolve_threads(threads)
        self.min_weights_per_thread = int(min_weights_per_thread)
        self.isa = kernels.resolve_isa(isa)
        self.isas = {} if self.isa == kernels.TORCH else {
            f: kernels.resolve_isa(isa, f) for f in (kernels.TERNARY_B1, kernels.TERNARY_BATCH)
        }  # fmt: skip
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.scaling = self.head_dim**-0.5
        self.eps = float(cfg.rms_norm_eps)
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        inner = model.model
        with torch.inference_mode(False), torch.no_grad():
            self.layers = []
            for layer in inner.layers:
                a, mlp = layer.self_attn, layer.mlp
                self.layers.append(LayerWeights(
                    input_norm=_weight(layer.input_layernorm),
                    post_norm=_weight(layer.post_attention_layernorm),
                    attn_sub_norm=_weight(a.attn_sub_norm), ffn_sub_norm=_weight(mlp.ffn_sub_norm),
                    qkv=_linear([a.q_proj, a.k_proj, a.v_proj]), o=_linear([a.o_proj]),
                    gate_up=_linear([mlp.gate_proj, mlp.up_proj]), down=_linear([mlp.down_proj]),
                ))  # fmt: skip
            self.final_norm = _weight(inner.norm)
            rope = inner.rotary_emb
            # the rotary tables for every position, as transformers' BitNetRotaryEmbedding
            # computes them (elementwise: position * inv_freq, cat, cos/sin, * scaling)
            pos = torch.arange(self.max_context, dtype=torch.float32)[:, None]
            freqs = pos * rope.inv_freq.float()[None, :]  # [ctx, hd / 2]
            emb = torch.cat((freqs, freqs), dim=-1)  # [ctx, hd]
            self.cos = emb.cos() * rope.attention_scaling
            self.sin = emb.sin() * rope.attention_scaling
        self.embed, self.head = inner.embed_tokens, model.lm_head
        lins = [lin for L in self.layers for lin in (L.qkv, L.o, L.gate_up, L.down)]
        route = P.t81_route(self.isa, any(lin.layout == "t81" for lin in lins))
        if route == "kernel":  # calls on t81 weights run at the level `isa` resolves to
            self.isas["t81"] = self.isa
        self.fused, self.plan = self._fused_plan(fused), None
        self._tq2_copies = None  # t81 weights at a level without their kernel: tq2 copies
        if self.fused:
            from mulfree.engine.bitnet_plan import BitNetPlan, tq2_weights, weights_of
            from mulfree.kernels._core import core

            stage = self.isa if self.isa != kernels.TORCH else "scalar"
            w = weights_of(self)
            if route == "copies":
                w, self._tq2_copies = tq2_weights(core(), w)
            self.plan = BitNetPlan(core(), w, threads=self.threads, isas=self.isas,
                                   stage_isa=stage, kv_dtype=kv_dtype, attention=attention,
                                   mantissa_bits=mantissa_bits, max_context=self.max_context,
                                   min_weights_per_thread=self.min_weights_per_thread)  # fmt: skip
        self.batch = 0
        self.cache = None
        self.reset(1)

    def _fused_plan(self, fused: bool | None) -> bool:
        """Whether the step runs on the compiled core (see the class docstring)."""
        why = compiled_step_unsupported(self.config, self.isa)
        if fused and why:
            raise MulfreeError(f"fused=True: {why}")
        return why is None if fused is None else bool(fused)

    # --- slots -----------------------------------------------------------------------------
    def reset(self, batch: int = 1) -> None:
        """Empty caches for `batch` sequences (reallocated when batch changes)."""
        if batch < 1:
            raise MulfreeError(f"batch must be >= 1, got {batch}")
        if batch != self.batch:
            if self.fused:
                self.plan.allocate(batch)
            else:
                self.cache = self._torch_cache(batch)
            self.logits = torch.zeros(batch, self.config.vocab_size)
            self.batch = batch
        self.lengths = [0] * batch
        if self.fused:
            for s in range(batch):
                self.plan.clear(s)

    def _torch_cache(self, batch: int) -> KVCache:
        return KVCache(len(self.layers), batch, self.max_context, self.kv_heads, self.head_dim,
                       self.kv_dtype)  # fmt: skip

    @property
    def fused_ifg(self) -> bool:
        """True: q|k|v and gate|up run as one kernel call each (the hgrn Decoder's flag name)."""
        return True

    def load_kv(self, slot: int, keys, values) -> None:
        """Make `slot` hold the n positions keys[l], values[l] (float32 [n, Hkv, hd] per layer,
        RoPE applied: what transformers' cache holds for one sequence, padding removed), as if
        its tokens had been stepped; its next token is at position n."""
        n = int(keys[0].shape[0])
        if n > self.max_context:
            raise MulfreeError(f"load_kv: {n} positions > max_context {self.max_context}")
        if self.fused:
            as_np = lambda ts: [t.detach().float().contiguous().numpy() for t in ts]  # noqa: E731
            self.plan.load_kv(slot, as_np(keys), as_np(values))
        else:
            for i, (k, v) in enumerate(zip(keys, values, strict=True)):
                self.cache.write(i, slot, 0, k.float(), v.float())
        self.lengths[slot] = n

    def kv_rows(self, slot: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) float32 [L, n, Hkv, hd] stored for `slot` at positions start ..
        start + n - 1 (RoPE applied; the inverse of `load_kv`)."""
        if self.fused:
            k, v = self.plan.kv_rows(slot, start, n)
            return torch.from_numpy(k), torch.from_numpy(v)
        c, sl = self.cache, slice(start, start + n)
        k = torch.stack([t[slot, :, :, sl].permute(2, 0, 1) for t in c.k]).float()  # [L, n, Hkv, hd]
        v = torch.stack([t[slot, :, sl].transpose(0, 1) for t in c.v]).float()
        if c.dtype == "int8":
            k = k * torch.stack([t[slot, :, sl].T for t in c.ks])[..., None]
            v = v * torch.stack([t[slot, :, sl].T for t in c.vs])[..., None]
        return k, v

    # --- pieces ----------------------------------------------------------------------------
    def _kernel(self, lin: P.Linear, u: torch.Tensor) -> torch.Tensor:
        """Packed ternary linear of u [M, K] float32 (int8 absmax per row inside the kernel)."""
        u = u.contiguous()
        if self.isa == kernels.TORCH:
            from mulfree.ternary.packed_linear import ternary_linear_torch

            p = packing.PackedTernary(lin.data, lin.scale, lin.out_features, lin.in_features,
                                      lin.layout)  # fmt: skip
            if lin.row_scales is None:
                return ternary_linear_torch(u, p)
            _, acc = ternary_linear_torch(u, p, return_acc=True)
            s = 127.0 / u.abs().amax(-1, keepdim=True).clamp_min(1e-5)
            return acc.float() / (s * lin.row_scales)
        threads = P.threads_for(lin, self.threads, self.min_weights_per_thread)
        op, isa = P.torch_linear(lin, self.isas, self.isa, u.shape[0])
        y = op(u, lin.data, lin.out_features, lin.scale, threads=threads, isa=isa,
               row_scales=lin.row_scales)  # fmt: skip
        return y  # counted by the energy counter as the custom op it is (kernels.ternary)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """The output head; while counting, its kernel is declared (torch's int8 / int4 CPU
        kernels: per weight one multiply of the bf16 activation by the dequantized weight and
        one float32 add; the table read once). Float heads are counted by the dispatch mode."""
        head = self.head
        if not energy.counting() or head.fmt not in ("int8", "int4"):
            return head(h)
        with energy.opaque():
            y = head(h)
        M, V, D = h.shape[0], head.vocab, head.dim
        energy.record("fp_mul", 16, M * V * D)
        energy.record("fp_add", 32, M * V * (D - 1))
        energy.record_bytes(weight_read=sum(t.numel() * t.element_size() for t in head.buffers()),
                            act_read=h.numel() * 2, act_write=y.numel() * 4)  # fmt: skip
        return y

    def step_energy(self, ids, table: str | None = None) -> P.StepEnergy:
        """Count and price one `step(ids)` without advancing the sequences: the step as it runs
        (ternary kernels, quantizers, norms, RoPE, attention products exact or L-Mul, head) and
        the same step with every ternary projection a dense fp32 F.linear. `table`: an energy
        table name or JSON file (default mulfree.energy's)."""
        from mulfree.energy.counter import EnergyCounter
        from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable, price

        tab = EnergyTable.load(table or DEFAULT_TABLE)
        lengths = list(self.lengths)
        fused, cache = self.fused, self.cache
        if fused:  # counted on the torch path (the same ops; its cache contents do not matter)
            self.fused, self.cache = False, cache or self._torch_cache(self.batch)
        priced = []
        try:
            for dense in (False, True):
                try:
                    # dense: every kernel call priced as a dense fp32 F.linear of its shape
                    with EnergyCounter(self.model) as c, K_.priced_as_dense(dense):
                        self.step(ids)
                finally:  # the step's cache writes lie past `lengths`: the next step overwrites them
                    self.lengths = list(lengths)
                priced.append(price(c.counts, c.bytes, tab))
        finally:
            self.fused, self.cache = fused, cache
        per_seq = 1.0 / self.batch
        return P.StepEnergy(tab.name, priced[0]["total_pJ"] * per_seq,
                            priced[0]["memory_pJ"] * per_seq, priced[1]["total_pJ"] * per_seq)  # fmt: skip

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[B, M, K] @ [B, K, N] float32: exact (torch) or L-Matmul products."""
        if self.attention == "exact":
            return torch.matmul(a, b)
        from mulfree.lmul import lmatmul

        return lmatmul(a.contiguous(), b.contiguous(), mantissa_bits=self.mantissa_bits)

    def _attend(self, layer: int, slot: int, q: torch.Tensor, pos: int) -> torch.Tensor:
        """q [T, H, hd] of tokens at pos .. pos + T - 1 against the slot's cache -> [T, H * hd]."""
        T = q.shape[0]
        n = pos + T
        # Kᵀ [Hkv, hd, n], V [Hkv, n, hd]; the L-Matmul kernel takes contiguous operands
        Kt, V = self.cache.read(layer, slot, n, contiguous=self.attention == "lmul")
        # [T, H, hd] -> [Hkv, G * T, hd]: query head h uses kv head h // G (repeat_kv order)
        qg = q.transpose(0, 1).reshape(self.kv_heads, self.groups * T, self.head_dim)
        scores = self._matmul(qg, Kt) * self.scaling  # [Hkv, G * T, n]
        if T > 1:  # causal inside the block: token i sees positions <= pos + i
            i = torch.arange(T).repeat(self.groups)[:, None]  # [G * T, 1]
            scores = scores.masked_fill(torch.arange(n)[None, :] > pos + i, float("-inf"))
        p = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out = self._matmul(p, V)  # [Hkv, G * T, hd]
        # [Hkv, G * T, hd] -> [H, T, hd] -> [T, H * hd]
        return out.reshape(self.heads, T, self.head_dim).transpose(0, 1).reshape(T, -1)

    def _layer(self, i: int, L: LayerWeights, x: torch.Tensor, segs: list[tuple[int, int, int]],
               rows: torch.Tensor) -> None:  # fmt: skip
        """One decoder layer on x [R, D] (updated in place): rows of several sequences, `segs`
        = (slot, position of its first row, its number of rows) in row order, `rows` the
        position of every row. Projections run on all rows in one kernel call (each weight
        read once for the batch); RoPE, the cache and attention are per sequence."""
        R = x.shape[0]
        H, Hkv, hd = self.heads, self.kv_heads, self.head_dim
        qkv = self._kernel(L.qkv, rms_norm(x, L.input_norm, self.eps))  # [R, (H + 2 Hkv) hd]
        q = qkv[:, : H * hd].reshape(R, H, hd)
        k = qkv[:, H * hd : (H + Hkv) * hd].reshape(R, Hkv, hd)
        v = qkv[:, (H + Hkv) * hd :].reshape(R, Hkv, hd)
        cos, sin = self.cos[rows, None, :], self.sin[rows, None, :]  # [R, 1, hd]
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        parts, r0 = [], 0
        for slot, pos, t in segs:
            self.cache.write(i, slot, pos, k[r0 : r0 + t], v[r0 : r0 + t])
            parts.append(self._attend(i, slot, q[r0 : r0 + t], pos))  # [t, H * hd]
            r0 += t
        a = parts[0] if len(parts) == 1 else torch.cat(parts)
        x.add_(self._kernel(L.o, rms_norm(a, L.attn_sub_norm, self.eps)))
        gu = self._kernel(L.gate_up, rms_norm(x, L.post_norm, self.eps))  # [R, 2 I]
        inter = gu.shape[1] // 2
        z = self.act(gu[:, :inter]) * gu[:, inter:]
        x.add_(self._kernel(L.down, rms_norm(z, L.ffn_sub_norm, self.eps)))

    def _run(self, slots: list[int], ids: list[torch.Tensor]) -> torch.Tensor:
        """Tokens ids[j] [T_j] of sequence slots[j], all through every layer together; final
        hidden states [sum T_j, D] in that order."""
        segs = []
        for slot, t in zip(slots, ids, strict=True):
            pos = self.lengths[slot]
            if pos + t.numel() > self.max_context:
                raise MulfreeError(
                    f"context full: {pos} + {t.numel()} tokens > max_context {self.max_context}"
                )
            segs.append((slot, pos, t.numel()))
        rows = torch.cat([torch.arange(p, p + t) for _, p, t in segs])  # [R] positions
        x = self.embed(torch.cat(ids)).float().contiguous()  # [R, D]
        for i, L in enumerate(self.layers):
            self._layer(i, L, x, segs, rows)
        for slot, pos, t in segs:
            self.lengths[slot] = pos + t
        return rms_norm(x, self.final_norm, self.eps)

    # --- the interface ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """One token per sequence (ids [batch]) -> logits [batch, vocab] (a reused buffer)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if ids.numel() != self.batch:
            raise MulfreeError(f"step got {ids.numel()} tokens for a batch of {self.batch}")
        if self.fused:
            logits = self.plan.run(range(self.batch), ids.numpy())
            self.lengths = self.plan.lengths[: self.batch].tolist()
            self.hidden = torch.from_numpy(self.plan.hidden.copy())  # [batch, D]
            self.logits.copy_(torch.from_numpy(logits))
            return self.logits
        h = self._run(list(range(self.batch)), list(ids[:, None]))  # one row per sequence
        self.hidden = h  # [batch, D]: the head's input (final RMSNorm applied)
        self.logits.copy_(self._head(h))
        return self.logits

    @torch.inference_mode()
    def prefill(self, ids) -> torch.Tensor:
        """Prompts ids [batch, T] (or a list of token lists of any lengths) from empty caches,
        in blocks of `block` tokens; logits of each prompt's last token [batch, vocab]."""
        rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in
                (ids.tolist() if isinstance(ids, torch.Tensor) and ids.dim() == 2 else
                 [ids] if isinstance(ids, torch.Tensor) or (ids and isinstance(ids[0], int)) else ids)]  # fmt: skip
        if not rows or any(r.numel() == 0 for r in rows):
            raise MulfreeError("prefill needs at least one token per sequence")
        self.reset(len(rows))
        last = []
        for s, r in enumerate(rows):
            if r.numel() > self.max_context:
                raise MulfreeError(f"prompt of {r.numel()} tokens > max_context {self.max_context}")
            if self.fused:
                self.logits[s] = torch.from_numpy(self.plan.prefill(s, r.numpy()))
                last.append(torch.from_numpy(self.plan.hidden.copy()))
                self.lengths[s] = r.numel()
                continue
            h = None
            for b in range(0, r.numel(), self.block):
                h = self._run([s], [r[b : b + self.block]])
            last.append(h[-1:])
        self.hidden = torch.cat(last)  # [batch, D]
        if not self.fused:
            self.logits.copy_(self._head(self.hidden))
        return self.logits


# ---------------------------------------------------------------------------------------------
# transformers' generate on the compiled step
# ---------------------------------------------------------------------------------------------
MIN_HF_CONTEXT = 256  # positions of the first HF-step decoder; it doubles as sequences grow


class HFCacheStep:
    """What HF `generate` runs through a PackedBitNetForCausalLM's forward (the prompt, then
    one token per row and step), on a BitNetDecoder's compiled step, with transformers'
    DynamicCache kept whole: each call appends its keys and values to it, so any later call
    that falls back to the model's own forward (engine.bitnet_model's one predicate) reads a
    correct cache.

    The decoder (float32 KV, so keys and values taken from transformers' cache are held
    exactly) stays bound to the last cache it wrote: while steps continue that cache, only the
    new token runs; another cache, batch, or a cache changed behind its back (a fallback step,
    a beam search's reorder) is loaded into the decoder's slots first (`BitNetDecoder.load_kv`),
    each row's real positions packed to the front (a left-padded row's real tokens are at
    positions 0..n-1, as its position ids say). The decoder's context starts at MIN_HF_CONTEXT
    and doubles (a new decoder, loaded from the cache) when a row outgrows it.
    """

    def __init__(self, model):
        self.model, self.dec = model, None
        # (weakref to the cache, its length, row lengths, weakrefs to its layers' tensors)
        self._bound: tuple | None = None

    def _decoder(self, batch: int, need: int) -> BitNetDecoder:
        limit = int(self.model.config.max_position_embeddings)
        if self.dec is None or self.dec.max_context < need:
            ctx = min(limit, max(MIN_HF_CONTEXT, 1 << (need - 1).bit_length()))
            self.dec = BitNetDecoder(self.model, kv_dtype="float32", max_context=ctx, fused=True)
            self._bound = None
        if self.dec.batch != batch:
            self.dec.reset(batch)
            self._bound = None
        return self.dec

    def step(self, cache, ids: torch.Tensor, keep: torch.Tensor | None, lengths: list[int]):
        """ids [B]: one token per row of `cache` (a DynamicCache of past positions P); keep
        [B, P] bool (None: all) marks each row's real positions, lengths[b] = keep[b].sum()
        (the position of row b's token). Returns logits [B, V] (the decoder's buffer)."""
        B, past = ids.shape[0], cache.get_seq_length()
        dec = self._decoder(B, max(lengths) + 1)
        layers = cache.layers[: len(dec.layers)]
        if not self._bound_to(cache, layers, past, lengths):
            with torch.inference_mode():
                for b in range(B):
                    sel = slice(None) if keep is None else keep[b]  # [P] -> the row's n positions
                    # transformers' cache [B, Hkv, P, hd] -> the row's [n, Hkv, hd]
                    ks = [layer.keys[b][:, sel].transpose(0, 1) for layer in layers]
                    vs = [layer.values[b][:, sel].transpose(0, 1) for layer in layers]
                    dec.load_kv(b, ks, vs)
        with torch.inference_mode():
            logits = dec.step(ids)
            new = [dec.kv_rows(b, n, 1) for b, n in enumerate(lengths)]  # B x [L, 1, Hkv, hd]
        # outside inference mode: the cache's tensors stay ordinary ones (transformers may
        # update them in place later, e.g. a beam search's reorder)
        k = torch.stack([kb.clone() for kb, _ in new], dim=1).transpose(2, 3)  # [L, B, Hkv, 1, hd]
        v = torch.stack([vb.clone() for _, vb in new], dim=1).transpose(2, 3)
        self._append(cache, k, v, [n + 1 for n in lengths])
        return logits

    def prefill(self, cache, ids: torch.Tensor, keep: torch.Tensor | None, lengths: list[int]):
        """ids [B, T] prompts into the empty `cache`; keep [B, T] bool (None: all) marks each
        row's real tokens (lengths[b] of them, the last one real). The rows are prefilled on
        the compiled step and their keys and values written into `cache` at the real tokens'
        places (padded places hold zeros: masked, never read). Returns the last tokens'
        logits [B, V]."""
        B, T = ids.shape
        dec = self._decoder(B, max(lengths))
        rows = [r.tolist() for r in (ids if keep is None else (ids[b][keep[b]] for b in range(B)))]
        with torch.inference_mode():
            logits = dec.prefill(rows)
            kv = [dec.kv_rows(b, 0, n) for b, n in enumerate(lengths)]  # B x [L, n, Hkv, hd]
        L, _, Hkv, hd = kv[0][0].shape
        k = torch.zeros(L, B, T, Hkv, hd)
        v = torch.zeros(L, B, T, Hkv, hd)
        for b, (kb, vb) in enumerate(kv):
            sel = slice(None) if keep is None else keep[b]
            k[:, b, sel], v[:, b, sel] = kb, vb
        # [L, B, T, Hkv, hd] -> transformers' [L][B, Hkv, T, hd]
        self._append(cache, k.transpose(2, 3), v.transpose(2, 3), list(lengths))
        return logits

    def _append(self, cache, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> None:
        """Append k, v [L, B, Hkv, t, hd] to `cache` and bind the decoder to the result."""
        import weakref

        for li in range(k.shape[0]):
            cache.update(k[li], v[li], li)
        # bound: this cache object at this length, these rows, and these very tensors (a
        # reorder, crop or reset replaces them, and then the rows are loaded again)
        layers = cache.layers[: k.shape[0]]
        tensors = [weakref.ref(t) for layer in layers for t in (layer.keys, layer.values)]
        self._bound = (weakref.ref(cache), cache.get_seq_length(), tuple(lengths), tensors)

    def _bound_to(self, cache, layers, past: int, lengths: list[int]) -> bool:
        """Whether the decoder's slots hold exactly `cache`'s rows (the last step's state)."""
        if self._bound is None:
            return False
        ref, n, rows, tensors = self._bound
        if ref() is not cache or n != past or rows != tuple(lengths):
            return False
        now = [t for layer in layers for t in (layer.keys, layer.values)]
        return len(now) == len(tensors) and all(r() is t for r, t in zip(tensors, now, strict=True))
