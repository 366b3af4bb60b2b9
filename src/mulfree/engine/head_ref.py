"""Readable NumPy twin of the int4 output-head stage in csrc/mf_head.c — its spec and oracle.

    head_i4    int4 table (a bfloat16 step per 32 entries) times int8 (absmax) activations
               (tfm_head_i4; the int8 head's twin is engine.bitnet_ref.head_i8)
    head_bf16  bfloat16 table times float32 activations (tfm_head_bf16)

It does what the C stage does, operation by operation in the same order and the same float32
precision, so the compiled stage equals it bit for bit at every ISA level
(tests/kernels/test_head_stages.py). The table is engine.bitnet_model.QuantizedHead's int4 layout
(csrc/mf_head.h): codes uint8 [V, 16 G] (G = ceil(D / 32); byte j of group g holds entries
32 g + 2 j (low nibble) and 32 g + 2 j + 1 (high), each as q + 8) and steps [V, G], given to
the stage as bfloat16 bit patterns (`bf16_steps`).
"""

from __future__ import annotations

import numpy as np

from mulfree.engine.decode_ref import quiet_fp

f32 = np.float32
GROUP = 32  # entries per step (MF_HEAD_I4_GROUP, engine.format.INT4_GROUP)

__all__ = ["head_i4", "head_bf16", "bf16_steps", "GROUP"]


def bf16_steps(step) -> np.ndarray | None:
    """float32 steps [V, G] as the bfloat16 bit patterns [V, G] uint16 the stage reads, or None
    when some step is not a bfloat16 value (QuantizedHead's always are: quantize_head rounds
    them), so that the stage computes with exactly the stored steps."""
    s = np.ascontiguousarray(step, dtype=f32)
    u = s.view(np.uint32)
    if (u & 0xFFFF).any():
        return None
    return (u >> 16).astype(np.uint16)


def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tfm_head_i8's activation quantizer: s = 127 / max(absmax, 1e-5), q = clamp(rint(x s))."""
    m = np.abs(x).max(axis=1)
    s = (f32(127.0) / np.maximum(m, f32(1e-5))).astype(f32)  # [B]
    q = np.clip(np.rint(x * s[:, None]), -127, 127).astype(np.int64)  # [B, D]
    return q, s


@quiet_fp
def head_i4(x, codes, step_bf16):
    """tfm_head_i4: x [B, D] float32, codes uint8 [V, 16 G], step_bf16 uint16 [V, G] -> logits
    [B, V] float32. Per row: q as head_i8 quantizes it (zero past D); per group g an exact
    integer acc_g = sum((code - 8) q); p_g = float32(acc_g) * step_g; lane j sums p_g for
    g = j, j + 8, ... in order from +0.0 (float32); logit = (((l0 + l1) + (l2 + l3)) +
    ((l4 + l5) + (l6 + l7))) / s."""
    x = np.asarray(x, dtype=f32)
    codes = np.asarray(codes, dtype=np.uint8)
    B, D = x.shape
    V, G = codes.shape[0], codes.shape[1] // 16
    q, s = _quantize(x)
    q = np.pad(q, ((0, 0), (0, G * GROUP - D)))  # [B, 32 G]: zeros past D
    w = np.stack((codes & 15, codes >> 4), axis=-1).reshape(V, G * GROUP).astype(np.int64) - 8
    acc = np.einsum("bgi,vgi->bvg", q.reshape(B, G, GROUP), w.reshape(V, G, GROUP))  # exact ints
    step = (np.asarray(step_bf16, dtype=np.uint16).astype(np.uint32) << 16).view(f32)  # [V, G]
    p = (acc.astype(f32) * step[None]).astype(f32)  # [B, V, G]
    lanes = np.zeros((8, B, V), dtype=f32)
    for g in range(G):  # lane g % 8, in order of g
        lanes[g % 8] = lanes[g % 8] + p[:, :, g]
    return (_tree8(lanes) / s[:, None]).astype(f32)


def _tree8(lanes):
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@quiet_fp
def head_bf16(x, w_bf16):
    """tfm_head_bf16: x [B, D] float32, w_bf16 uint16 [V, D] (bfloat16 bits) -> logits [B, V]
    float32. Lane j sums x[d] * w[v, d] for d = j, j + 8, ... in order from +0.0 (float32
    products and sums); logit = (((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)))."""
    x = np.asarray(x, dtype=f32)
    w = (np.asarray(w_bf16, dtype=np.uint16).astype(np.uint32) << 16).view(f32)  # [V, D]
    B, D = x.shape
    lanes = np.zeros((8, B, w.shape[0]), dtype=f32)
    for d in range(D):  # entry d into lane d % 8, in order (no padding: a -0.0 sum stays -0.0)
        lanes[d % 8] = lanes[d % 8] + (x[:, d, None] * w[None, :, d]).astype(f32)
    return _tree8(lanes).astype(f32)
