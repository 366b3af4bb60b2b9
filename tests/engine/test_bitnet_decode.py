"""The BitNet decoder's torch path (engine.bitnet_decode, `fused=False`) against its spec,
PackedBitNetForCausalLM's forward (transformers' modules on the same kernels), on a tiny random
official-layout checkpoint. The compiled step (the default) is tested in test_bitnet_plan.py.

Exact comparisons and why they hold: the decoder runs transformers' RMSNorm and RoPE formulas op
for op, the same kernel calls (fused q|k|v and gate|up calls equal separate ones: the kernel's
rescale is per row), and, against `apply_lmul_`'s attention, the same grouped products: L-Mul
sums are sequential by spec whatever the shapes; exact products are compared with the
`kind="exact", dtype="float32"` attention, which calls the same grouped float32 matmul. Final
hidden states are compared (the head's BLAS call has another shape in a full forward: [T, D]
instead of [1, D]), then the head on the same rows.
"""

import os

import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import mulfree  # noqa: E402
from mulfree.engine.bitnet_decode import BitNetDecoder  # noqa: E402
from mulfree.engine.bitnet_model import QuantizedHead, from_checkpoint  # noqa: E402
from mulfree.errors import MulfreeError  # noqa: E402
from mulfree.models.bitnet.synthetic import write_random_checkpoint  # noqa: E402
from tests._tolerances import assert_argmax_agrees, assert_close_through_int8  # noqa: E402

IDS = torch.tensor([[1, 5, 7, 9, 33, 100, 7, 8, 250, 3, 61, 17]])
PROMPT = 5

# Quantized vs float (habit 8): SQNR floors in dB of the logits, over the tiny model's steps,
# set below what was measured (bench_bitnet.py prints the measured values): bf16/fp16 caches
# round k and v once (2^-9 / 2^-12 relative); int8 caches step absmax / 127 per vector.
KV_SQNR_DB = {"bfloat16": 30.0, "float16": 30.0, "int8": 20.0}
HEAD_SQNR_DB = {"bfloat16": 35.0, "int8": 30.0, "int4": 12.0}


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum().clamp_min(1e-30)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("bn") / "ck", seed=5)


@pytest.fixture
def model(ckpt):
    m = from_checkpoint(ckpt)
    yield m
    from mulfree.attention import lmul_config_of, remove_lmul_

    if lmul_config_of(m) is not None:
        remove_lmul_(m)


def reference_hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model.model(IDS).last_hidden_state[0]  # [T, D] after the final norm


@pytest.mark.parametrize("block", [64, 2])
def test_lmul_decoder_equals_model(model, block):
    """Prefill (in blocks) and steps bit-equal to the model's forward with L-Mul attention."""
    mulfree.apply_lmul_(model, mulfree.LMulConfig(mantissa_bits=3))
    want = reference_hidden(model)
    dec = BitNetDecoder(
        model, attention="lmul", mantissa_bits=3, kv_dtype="float32", block=block, fused=False
    )
    logits = dec.prefill(IDS[:, :PROMPT])
    torch.testing.assert_close(dec.hidden, want[PROMPT - 1 : PROMPT], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.lm_head(want[PROMPT - 1 : PROMPT]), atol=0, rtol=0)
    for t in range(PROMPT, IDS.shape[1]):
        dec.step([int(IDS[0, t])])
        torch.testing.assert_close(dec.hidden, want[t : t + 1], atol=0, rtol=0)


@pytest.mark.parametrize("T,pos", [(1, 0), (1, 9), (4, 6)], ids=["first", "step", "block"])
def test_exact_attention_stage_within_fp32_bound(model, T, pos):
    """Exact attention alone (no int8 quantizer after it) against a float64 evaluation of the
    same formula. BLAS may order float32 sums differently for other strides (why the end-to-end
    exact comparison is the L-Mul one above, whose sums are sequential by spec): scores carry
    <= hd u sum|q k| scaling of error (u = 2^-24), which moves p by <= 2 ds relative, and the
    P.V sum adds (n + 2) u: |out - out64| <= ((n + 2) u + 2 ds) (|p| @ |V|)."""
    dec = BitNetDecoder(model, attention="exact", kv_dtype="float32", fused=False)
    g = torch.Generator().manual_seed(2)
    n, H, Hkv, hd = pos + T, dec.heads, dec.kv_heads, dec.head_dim
    k, v = torch.randn(n, Hkv, hd, generator=g) * 2, torch.randn(n, Hkv, hd, generator=g)
    dec.cache.write(0, 0, 0, k, v)
    q = torch.randn(T, H, hd, generator=g) * 2
    got = dec._attend(0, 0, q, pos).reshape(T, H, hd)
    kk = k.double().repeat_interleave(H // Hkv, dim=1)  # [n, H, hd], query head h -> h // G
    vv = v.double().repeat_interleave(H // Hkv, dim=1)
    scores = torch.einsum("thd,nhd->htn", q.double(), kk) * dec.scaling  # [H, T, n]
    causal = torch.arange(n)[None, :] > pos + torch.arange(T)[:, None]  # [T, n]
    p = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    want = torch.einsum("htn,nhd->thd", p, vv)
    u = 2.0**-24
    ds = (
        hd * u * float(torch.einsum("thd,nhd->htn", q.double().abs(), kk.abs()).max()) * dec.scaling
    )
    mag = torch.einsum("htn,nhd->thd", p, vv.abs())
    assert bool(((got.double() - want).abs() <= ((n + 2) * u + 2 * ds) * mag + 1e-30).all())


def test_exact_decoder_through_int8(model):
    """End to end with exact attention: logits against the model's forward through int8
    quantization (tests/_tolerances.py: relative RMSE, greedy choices where decidable)."""
    want = reference_hidden(model)
    with torch.no_grad():
        ref = model.lm_head(want)[PROMPT - 1 :]
    dec = BitNetDecoder(model, attention="exact", kv_dtype="float32", fused=False)
    got = [dec.prefill(IDS[:, :PROMPT]).clone()]
    got += [dec.step([int(t)]).clone() for t in IDS[0, PROMPT:]]
    got = torch.cat(got)
    assert_close_through_int8(got, ref)
    assert_argmax_agrees(got, ref)


def test_slots_are_independent(model):
    """Two sequences of different lengths in one decoder equal each decoded alone."""
    a, b = IDS[0, :4].tolist(), IDS[0, 2:9].tolist()
    dec = BitNetDecoder(model, kv_dtype="float32", fused=False)
    dec.prefill([a, b])
    both = [dec.hidden.clone()]
    dec.step([11, 12])
    both.append(dec.hidden.clone())
    for row, (p, nxt) in enumerate(((a, 11), (b, 12))):
        one = BitNetDecoder(model, kv_dtype="float32", fused=False)
        one.prefill(p)
        torch.testing.assert_close(one.hidden[0], both[0][row], atol=0, rtol=0)
        one.step([nxt])
        torch.testing.assert_close(one.hidden[0], both[1][row], atol=0, rtol=0)


@pytest.mark.parametrize("kv", ["bfloat16", "float16", "int8"])
def test_kv_cache_accuracy(model, kv):
    def run(dtype):
        dec = BitNetDecoder(model, kv_dtype=dtype, fused=False)
        out = [dec.prefill(IDS[:, :PROMPT]).clone()]
        out += [dec.step([int(t)]).clone() for t in IDS[0, PROMPT:]]
        return torch.cat(out)

    ref, got = run("float32"), run(kv)
    assert sqnr_db(ref, got) >= KV_SQNR_DB[kv]


def test_max_context(model):
    for fused in (False, None):  # the torch path and the compiled step (when the core is built)
        dec = BitNetDecoder(model, max_context=6, fused=fused)
        dec.prefill(IDS[:, :5])
        dec.step([3])
        with pytest.raises(MulfreeError, match="context full"):
            dec.step([4])
    with pytest.raises(MulfreeError, match="max_context"):
        BitNetDecoder(model, max_context=10**6)
    with pytest.raises(MulfreeError, match="max_context"):
        BitNetDecoder(model, max_context=4).prefill(IDS[:, :5])


def test_bad_options(model):
    for kw, match in ((dict(attention="fp8"), "attention"), (dict(kv_dtype="int4"), "kv cache"),
                      (dict(attention="lmul", mantissa_bits=99), "mantissa")):  # fmt: skip
        with pytest.raises(MulfreeError, match=match):
            BitNetDecoder(model, **kw)


@pytest.mark.parametrize("fmt", ["int8", "int4", "bfloat16"])
def test_head_fast_path_within_bound(fmt):
    """The fast head kernels against QuantizedHead.reference (float32 sums of bf16-rounded
    inputs times the decoded table): they round the output to bfloat16 (2^-9 relative, so
    2^-8 allows one more ulp of the bf16 grid) and sum in their own order (K 2^-24 of the sum
    of |terms|). V = 300 is not a multiple of 16: the int4 kernel's padded rows are cut off."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 64, generator=g)
    head = QuantizedHead.from_float(w, fmt)
    x = torch.randn(3, 64, generator=g)
    got, want = head(x), head.reference(x)
    mag = x.to(torch.bfloat16).float().abs() @ head.dequantize().abs().T
    bound = 2**-8 * want.abs() + 64 * 2**-24 * mag
    assert bool(((got - want).abs() <= bound).all())


@pytest.mark.parametrize("fmt", ["bfloat16", "int8", "int4"])
def test_head_accuracy_vs_float(model, fmt):
    """The head's quantization error on the model's own final hidden states (SQNR floor)."""
    h = reference_hidden(model)
    w = model.lm_head.dequantize()
    with torch.no_grad():
        ref = h @ w.T
        got = QuantizedHead.from_float(w, fmt)(h)
    assert sqnr_db(ref, got) >= HEAD_SQNR_DB[fmt]


def test_hf_generate_batched_left_padded(model):
    """transformers' generate on the packed model, two prompts left-padded in one batch: the
    padded batch's logits at every generated position equal (through int8) the decoder's on
    each prompt alone, teacher-forced on the generated tokens."""
    a, b = IDS[0, :3].tolist(), IDS[0, 3:10].tolist()
    pad, new = 0, 4
    ids = torch.tensor([[pad] * (len(b) - len(a)) + a, b])
    mask = (torch.arange(len(b))[None, :] >= torch.tensor([[len(b) - len(a)], [0]])).long()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                         pad_token_id=pad, eos_token_id=None)  # fmt: skip
    assert out.shape == (2, len(b) + new) and torch.equal(out[:, : len(b)], ids)
    full = torch.cat([mask, torch.ones(2, new, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        batch_logits = model(out, attention_mask=full).logits[:, len(b) - 1 : -1]  # [2, new, V]
    for row, p in enumerate((a, b)):
        dec = BitNetDecoder(model, kv_dtype="float32")
        mine = [dec.prefill(p).clone()]
        mine += [dec.step([int(t)]).clone() for t in out[row, len(b) : -1]]
        mine = torch.cat(mine)
        assert_close_through_int8(batch_logits[row], mine)
        assert_argmax_agrees(batch_logits[row], mine)
        # and generate's greedy picks are the decoder's wherever decidable
        picks = out[row, len(b) :]
        top2 = mine.topk(2, dim=-1).values
        decided = (top2[:, 0] - top2[:, 1]) > 2 * (batch_logits[row] - mine).abs().max()
        assert torch.equal(picks[decided], mine.argmax(-1)[decided])
