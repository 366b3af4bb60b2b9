"""Readable NumPy twins of the transformer decode stages in csrc/mf_tfm.c — their spec and oracle.

Each function does what its C stage does, operation by operation in the same order and the same
float32 precision, so the compiled stage equals it bit for bit at every ISA level
(tests/kernels/test_tfm_stages.py):

    norm       x += add; out = w * (x * (1 / sqrt(mean(x^2) + eps)))        (tfm_norm)
    rope       rotate-half RoPE of heads in place at each row's position    (tfm_rope)
    kv_write   k, v rows into the cache at (slot, position)                 (tfm_kv_write)
    attend     one token's GQA attention over its slot's positions 0..pos   (tfm_attend)
    glu        act(gate) * up, then the sub-norm                            (tfm_glu)
    head_i8    int8 table times int8 (absmax) activations, exact int sums   (tfm_head_i8)

The orders the C fixes (so that scalar and SIMD code agree) and the twins follow:
- the RMS sum: float64, element j into lane j % 8 (sequential per lane), lanes combined
  ((0+1)+(2+3))+((4+5)+(6+7)); the mean rounded to float32, then 1 / sqrtf(mean + eps);
- a score sums its head_dim products d = 0, 1, ... from +0.0 in float32, then * scaling; an
  output element sums p_j * v_j over positions j = 0, 1, ...; the softmax denominator sums
  exp(s_j - max) into float32 lane j % 8, lanes combined as above, and p_j = e_j * (1 / sum);
- exp is `exp_poly`, the polynomial of mulfree.engine.decode_ref.exp_avx2 (one formula for
  every lane; the C writes it once scalar and once for 8 lanes);
- products are float32 (exact attention) or L-Mul of float32 operands in "int" mode with
  `mantissa_bits` (mulfree.lmul: the same bits as csrc/mf_lmul.h's lmul_one).
Cache layout (csrc/mf_tfm.h): keys [slots, Hkv, ctx / 8, hd, 8], values [slots, Hkv, ctx, hd],
int8 steps [slots, Hkv, ctx]; `kv_dtype` one of KV_DTYPES.
"""

from __future__ import annotations

import numpy as np

from mulfree.engine.decode_ref import exp_avx2 as exp_poly
from mulfree.engine.decode_ref import quiet_fp

f32 = np.float32
KTILE = 8  # positions per key tile (TFM_KTILE)
KV_DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2, "int8": 3}  # the C dtype codes
ACTS = {"relu2": 0, "silu": 1}  # the C activation codes

__all__ = ["exp_poly", "inv_rms8", "norm", "rope", "kv_write", "attend", "glu", "head_i8", "Cache",
           "bf16_round", "KV_DTYPES", "ACTS", "KTILE"]  # fmt: skip


def _tree8(lanes: np.ndarray):
    """((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) in the lanes' dtype."""
    l = lanes  # noqa: E741
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))


def _lanes8(v: np.ndarray, dtype) -> np.ndarray:
    """The 8 lane sums of v (element j into lane j % 8, each lane summed in order), in dtype."""
    n = -(-v.size // 8) * 8
    p = np.zeros(max(n, 8), dtype=dtype)
    p[: v.size] = v  # zero padding: adding +0.0 changes no sum of non-negative terms
    return np.cumsum(p.reshape(-1, 8), axis=0, dtype=dtype)[-1]


def inv_rms8(v: np.ndarray, eps: float) -> np.float32:
    """1 / sqrt(mean(v^2) + eps) with the 8-lane float64 sum."""
    v = np.asarray(v, dtype=f32).astype(np.float64)
    s = _tree8(_lanes8(v * v, np.float64))
    mean = f32(s / float(v.size))
    return f32(1.0) / np.sqrt(mean + f32(eps))


@quiet_fp
def norm(x, add, w, eps):
    """tfm_norm on rows x [B, n]: returns (x + add, out)."""
    x = np.array(x, dtype=f32, copy=True)
    if add is not None:
        x = x + np.asarray(add, dtype=f32)
    w = np.asarray(w, dtype=f32)
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        out[b] = w * (x[b] * inv_rms8(x[b], eps))
    return x, out


def rope(x, cos, sin, positions):
    """tfm_rope: x [B, heads, hd] rotated at positions [B] (tables cos / sin [ctx, hd])."""
    x = np.asarray(x, dtype=f32)
    h = x.shape[-1] // 2
    c = np.asarray(cos, dtype=f32)[positions][:, None, :]  # [B, 1, hd]
    s = np.asarray(sin, dtype=f32)[positions][:, None, :]
    rot = np.concatenate((-x[..., h:], x[..., :h]), axis=-1)
    return (x * c + rot * s).astype(f32)


def bf16_round(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even; NaN -> 0x7fc0) as uint16 bit patterns."""
    u = np.asarray(v, dtype=f32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FC0), r)


class Cache:
    """One layer's cache arrays in the C layout (see the module docstring), for `slots` slots of
    `ctx` positions (a multiple of 8)."""

    def __init__(self, slots: int, kv_heads: int, head_dim: int, ctx: int, dtype: str):
        if ctx % KTILE:
            raise ValueError(f"ctx must be a multiple of {KTILE}, got {ctx}")
        store = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.float16,
                 "int8": np.int8}[dtype]  # fmt: skip
        self.dtype, self.ctx, self.hd = dtype, ctx, head_dim
        self.k = np.zeros((slots, kv_heads, ctx // KTILE, head_dim, KTILE), dtype=store)
        self.v = np.zeros((slots, kv_heads, ctx, head_dim), dtype=store)
        self.ks = np.zeros((slots, kv_heads, ctx), dtype=f32) if dtype == "int8" else None
        self.vs = np.zeros((slots, kv_heads, ctx), dtype=f32) if dtype == "int8" else None

    def _encode(self, v: np.ndarray, step):
        if self.dtype == "float32":
            return v
        if self.dtype == "bfloat16":
            return bf16_round(v)
        if self.dtype == "float16":
            return v.astype(np.float16)  # round to nearest even
        return np.clip(np.rint(v / step), -127, 127).astype(np.int8)

    def _decode(self, codes: np.ndarray, step) -> np.ndarray:
        if self.dtype == "bfloat16":
            return (codes.astype(np.uint32) << 16).view(f32)
        if self.dtype == "int8":
            return codes.astype(f32) * step
        return codes.astype(f32)

    def keys(self, slot: int, g: int, n: int) -> np.ndarray:
        """float32 [n, hd] keys of positions 0..n-1 (kv head g), as the C decodes them."""
        k = self.k[slot, g].transpose(0, 2, 1).reshape(-1, self.hd)[:n]  # tiles -> [pos, hd]
        st = None if self.ks is None else self.ks[slot, g, :n, None]
        return self._decode(k, st)

    def values(self, slot: int, g: int, n: int) -> np.ndarray:
        st = None if self.vs is None else self.vs[slot, g, :n, None]
        return self._decode(self.v[slot, g, :n], st)


@quiet_fp
def _step(v: np.ndarray) -> np.float32:
    m = np.abs(v).max() if v.size else f32(0.0)
    return f32(max(m, f32(1e-12)) / f32(127.0))


def kv_write(cache: Cache, k, v, slots, positions) -> None:
    """tfm_kv_write: k, v [B, Hkv, hd] float32 stored at (slots[b], positions[b])."""
    k, v = np.asarray(k, dtype=f32), np.asarray(v, dtype=f32)
    for b, (s, p) in enumerate(zip(slots, positions, strict=True)):
        for g in range(k.shape[1]):
            kst = vst = None
            if cache.dtype == "int8":
                kst, vst = _step(k[b, g]), _step(v[b, g])
                cache.ks[s, g, p], cache.vs[s, g, p] = kst, vst
            cache.k[s, g, p // KTILE, :, p % KTILE] = cache._encode(k[b, g], kst)
            cache.v[s, g, p] = cache._encode(v[b, g], vst)


def _prod(a: np.ndarray, b: np.ndarray, mantissa_bits: int | None) -> np.ndarray:
    """float32 products, or L-Mul ("int" mode) of float32 operands (mulfree.lmul)."""
    if mantissa_bits is None:
        return (a * b).astype(f32)
    import torch

    from mulfree.lmul.ops import lmul_forward

    ta, tb = torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b))
    ta, tb = torch.broadcast_tensors(ta, tb)
    return lmul_forward(ta.contiguous(), tb.contiguous(), mantissa_bits=mantissa_bits,
                        mode="int").numpy()  # fmt: skip


@quiet_fp
def softmax(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=f32)
    e = exp_poly(s - s.max())
    inv = f32(1.0) / _tree8(_lanes8(e, f32))
    return (e * inv).astype(f32)


@quiet_fp
def attend(cache: Cache, q, slots, positions, scaling: float, mantissa_bits: int | None = None):
    """tfm_attend: q [B, H, hd] of tokens at (slots[b], positions[b]) -> out [B, H, hd].
    mantissa_bits None: exact float32 products; else L-Mul with that many bits."""
    q = np.asarray(q, dtype=f32)
    B, H, hd = q.shape
    Hkv = cache.k.shape[1]
    G = H // Hkv
    out = np.empty_like(q)
    for b, (slot, pos) in enumerate(zip(slots, positions, strict=True)):
        n = int(pos) + 1
        for h in range(H):
            K, V = cache.keys(slot, h // G, n), cache.values(slot, h // G, n)  # [n, hd]
            prods = _prod(q[b, h][:, None], K.T, mantissa_bits)  # [hd, n]: q[d] k_j[d]
            acc = np.zeros(n, dtype=f32)
            for d in range(hd):  # scores: products summed d = 0, 1, ...
                acc = acc + prods[d]
            p = softmax(acc * f32(scaling))
            prods = _prod(p[:, None], V, mantissa_bits)  # [n, hd]: p_j v_j[d]
            o = np.zeros(hd, dtype=f32)
            for j in range(n):  # outputs: summed over positions j = 0, 1, ...
                o = o + prods[j]
            out[b, h] = o
    return out


@quiet_fp
def glu(gu, w, eps, act: str = "relu2"):
    """tfm_glu on rows gu [B, 2I] = [gate | up]: act(gate) * up, then w's RMSNorm (w None: none)."""
    gu = np.asarray(gu, dtype=f32)
    I = gu.shape[1] // 2
    g, u = gu[:, :I], gu[:, I:]
    if act == "relu2":
        r = np.where(g > 0, g, f32(0.0)).astype(f32)
        a = r * r
    elif act == "silu":
        a = g / (f32(1.0) + exp_poly(-g))
    else:
        raise ValueError(f"act must be one of {', '.join(ACTS)}, not {act!r}")
    o = (a * u).astype(f32)
    if w is None:
        return o
    _, out = norm(o, None, w, eps)
    return out


@quiet_fp
def head_i8(x, codes, step):
    """tfm_head_i8: x [B, D] float32, codes int8 [V, D], step float32 [V] -> logits [B, V].
    Per row: s = 127 / max(absmax, 1e-5), q = clamp(rint(x s), +-127); acc = codes . q exactly
    (integers); logit = (float32(acc) / s) * step."""
    x = np.asarray(x, dtype=f32)
    m = np.abs(x).max(axis=1)
    s = (f32(127.0) / np.maximum(m, f32(1e-5))).astype(f32)  # [B]
    q = np.clip(np.rint(x * s[:, None]), -127, 127).astype(np.int64)  # [B, D]
    acc = q @ np.asarray(codes, dtype=np.int64).T  # [B, V], exact
    return ((acc.astype(f32) / s[:, None]) * np.asarray(step, dtype=f32)).astype(f32)
