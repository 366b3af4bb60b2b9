"""The compiled BitNet step (engine.bitnet_plan, BitNetDecoder's default) against its spec, the
torch path (`fused=False`), and against transformers' own BitNetForCausalLM, on tiny random
official-layout checkpoints.

Tolerances: the compiled stages differ from torch's only by float rounding (their exp
polynomial, the RMS sum order, sequential attention sums) before int8 activation quantizers, so
logits are compared through int8 (tests/_tolerances.py: relative RMSE, argmax where decidable);
against transformers, greedy tokens where the top-2 gap is decidable. Between runs of the
compiled step itself everything is bit-exact (EXACT): rows of a kernel call and of every stage are
independent, so a prompt's chunked prefill equals stepping its tokens, and a slot stepped in a
batch equals the slot stepped alone.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import mulfree  # noqa: E402, F401
from mulfree import kernels  # noqa: E402
from mulfree.engine.bitnet_decode import BitNetDecoder  # noqa: E402
from mulfree.engine.bitnet_model import from_checkpoint  # noqa: E402
from mulfree.engine.core import SlotDecoder  # noqa: E402
from mulfree.errors import MulfreeError  # noqa: E402
from mulfree.models.bitnet.synthetic import write_random_checkpoint  # noqa: E402
from tests._tolerances import assert_argmax_agrees, assert_close_through_int8  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")

IDS = [1, 5, 7, 9, 33, 100, 7, 8, 250, 3, 61, 17]
PROMPT = 5


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bnp")
    return {v: write_random_checkpoint(root / v, variant=v, seed=5) for v in ("packed", "llama")}


@pytest.fixture(scope="module")
def model(ckpts):
    return from_checkpoint(ckpts["packed"])


def run(dec, prompt=IDS[:PROMPT], rest=IDS[PROMPT:]) -> torch.Tensor:
    out = [dec.prefill(torch.tensor([prompt])).clone()]
    out += [dec.step([t]).clone() for t in rest]
    return torch.cat(out)  # [1 + len(rest), V]


def assert_head_in_the_plan(m, got: torch.Tensor, **kw) -> None:
    """`got` (a fused decoder's run on m) against the torch path's through int8 rounding, and
    against the same plan's call loop bit for bit."""
    want = run(BitNetDecoder(m, fused=False, **kw))
    assert_close_through_int8(got, want)
    assert_argmax_agrees(got, want)
    loop = BitNetDecoder(m, **kw)
    loop.plan.use_plan_run = False
    torch.testing.assert_close(got, run(loop), atol=0, rtol=0)


@pytest.mark.parametrize("kv", ["float32", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("attention", ["exact", "lmul"])
def test_compiled_step_matches_torch_step(model, kv, attention):
    fused = BitNetDecoder(model, attention=attention, kv_dtype=kv)
    assert fused.fused
    want = run(BitNetDecoder(model, attention=attention, kv_dtype=kv, fused=False))
    got = run(fused)
    assert_close_through_int8(got, want, what=f"{attention} {kv}: ")
    assert_argmax_agrees(got, want)


@pytest.mark.parametrize("attention", ["exact", "lmul"])
def test_int8_head_in_the_plan(ckpts, attention):
    """An int8 head runs in the plan (tfm_head_i8: int8 activations, exact integer sums) where
    the torch path's head takes bf16 activations (torch's int8 kernel): the same logits
    through int8 rounding, and the plan runner equals its call loop bit for bit."""
    m = from_checkpoint(ckpts["packed"], embedding_format="int8", head_format="int8")
    dec = BitNetDecoder(m, attention=attention)
    assert dec.plan.w.head_i8 is not None
    got = run(dec)
    assert_head_in_the_plan(m, got, attention=attention)


@pytest.mark.parametrize("attention", ["exact", "lmul"])
def test_int4_head_in_the_plan(ckpts, attention):
    """An int4 head runs in the plan too (tfm_head_i4, csrc/mf_head.c): its logits are the
    stage's twin (engine/head_ref.py) on the step's final hidden state bit for bit, match the
    torch path's head (torch's int4 kernel on bf16 activations) through int8 rounding, and the
    plan runner equals its call loop bit for bit."""
    from mulfree.engine import head_ref

    m = from_checkpoint(ckpts["packed"], embedding_format="int8", head_format="int4")
    dec = BitNetDecoder(m, attention=attention)
    assert dec.plan.w.head_i4 is not None and dec.plan.w.head_i8 is None
    got = run(dec)
    codes, steps = dec.plan.w.head_i4
    twin = head_ref.head_i4(dec.hidden.numpy(), codes, steps)  # the last step's head
    torch.testing.assert_close(got[-1:], torch.from_numpy(twin), atol=0, rtol=0)
    assert_head_in_the_plan(m, got, attention=attention)


def test_bf16_head_in_the_plan(ckpts):
    """A bfloat16 head runs in the plan too (tfm_head_bf16): the twin's logits on the step's
    final hidden state bit for bit, the torch path's (bf16 GEMM on bf16-rounded activations)
    through int8 rounding, plan runner and call loop bit-equal."""
    from mulfree.engine import head_ref

    m = from_checkpoint(ckpts["packed"], embedding_format="bfloat16", head_format="bfloat16")
    dec = BitNetDecoder(m)
    assert dec.plan.w.head_bf16 is not None
    got = run(dec)
    twin = head_ref.head_bf16(dec.hidden.numpy(), dec.plan.w.head_bf16)
    torch.testing.assert_close(got[-1:], torch.from_numpy(twin), atol=0, rtol=0)
    assert_head_in_the_plan(m, got)


def test_int4_head_with_other_steps_runs_in_torch(ckpts):
    """Steps that are not bfloat16 values (not what quantize_head writes) are not what the
    stage reads: such a head runs after the plan in torch, as float heads do."""
    m = from_checkpoint(ckpts["packed"], embedding_format="int8", head_format="int4")
    with torch.no_grad():
        m.lm_head.weight_step.mul_(1.0 + 2**-12)
    dec = BitNetDecoder(m)
    assert dec.plan.w.head_i4 is None
    got = run(dec)
    want = run(BitNetDecoder(m, fused=False))
    assert_close_through_int8(got, want)


def test_llama_layout_silu_no_sub_norms(ckpts):
    """A 1.58-bit Llama-layout checkpoint: SiLU gate, no sub-norms (the o_proj kernel reads the
    attention output directly)."""
    m = from_checkpoint(ckpts["llama"])
    got = run(BitNetDecoder(m, kv_dtype="float32"))
    want = run(BitNetDecoder(m, kv_dtype="float32", fused=False))
    assert_close_through_int8(got, want)
    assert_argmax_agrees(got, want)


def test_greedy_tokens_equal_transformers(ckpts, model):
    """Greedy decoding on the compiled step against transformers' BitNetForCausalLM (its own
    modules, float32, eager attention) on the official-layout checkpoint: the same tokens
    wherever transformers' top-2 gap is wider than the through-int8 difference."""
    pytest.importorskip("accelerate")  # transformers' bitnet quantizer needs it to load
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(ckpts["packed"]), dtype=torch.float32)
    ref = torch.nn.Module.to(ref, torch.float32).eval()
    ref.config._attn_implementation = "eager"
    prompt, new = IDS[:4], 8
    with torch.no_grad():
        hf = ref.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
        hf_logits = ref(torch.tensor([prompt + hf])).logits[0, len(prompt) - 1 : -1]  # [new, V]
    dec = BitNetDecoder(model, kv_dtype="float32")
    mine = run(dec, prompt, hf[:-1])  # teacher-forced on transformers' tokens
    assert_close_through_int8(mine, hf_logits)
    top2 = hf_logits.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * (mine - hf_logits).abs().max()
    assert decided.sum() >= new // 2  # most steps are decidable at this size
    assert mine.argmax(-1)[decided].tolist() == torch.tensor(hf)[decided].tolist()


@pytest.mark.parametrize("kv", ["bfloat16", "int8"])
def test_prefill_equals_steps_bitwise(model, kv):
    """A prompt in one chunk (rows at positions 0..T-1) equals its tokens stepped one by one."""
    a = BitNetDecoder(model, kv_dtype=kv)
    la = a.prefill(torch.tensor([IDS])).clone()
    b = BitNetDecoder(model, kv_dtype=kv)
    b.prefill(torch.tensor([IDS[:1]]))
    for t in IDS[1:]:
        lb = b.step([t]).clone()
    torch.testing.assert_close(la, lb, atol=0, rtol=0)
    torch.testing.assert_close(a.hidden, b.hidden, atol=0, rtol=0)


@pytest.mark.parametrize("attention", ["exact", "lmul"])
def test_plan_runner_equals_the_call_loop(model, attention):
    """One plan_run call per pass runs the very calls of the list, in order: the same bits as
    calling them one by one from Python."""
    want = BitNetDecoder(model, attention=attention, kv_dtype="int8")
    want.plan.use_plan_run = False
    got = BitNetDecoder(model, attention=attention, kv_dtype="int8")
    torch.testing.assert_close(run(got), run(want), atol=0, rtol=0)


def test_prefill_in_chunks(model, monkeypatch):
    """A prompt longer than a chunk (chunks of 4 here) equals it in one chunk."""
    from mulfree.engine import bitnet_plan

    want = BitNetDecoder(model).prefill(torch.tensor([IDS])).clone()
    monkeypatch.setattr(bitnet_plan, "PREFILL_CHUNK", 4)
    got = BitNetDecoder(model).prefill(torch.tensor([IDS])).clone()
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_slots_added_and_freed(model):
    """SlotDecoder over the BitNet plan: slots in one batch equal each run alone, bit for bit
    (final hidden states: the torch head's float sums may block differently for [2, D] than
    for [1, D]); a freed slot reused by a new sequence starts clean; the arena grows keeping
    the live slots' caches."""
    plan = BitNetDecoder(model, kv_dtype="bfloat16").plan

    def alone(prompt, steps):
        p = type(plan)(plan.C, plan.w, threads=1, isas=_isas(plan), stage_isa=_stage(plan),
                       kv_dtype="bfloat16", attention="exact", mantissa_bits=None,
                       max_context=plan.max_context)  # fmt: skip
        one = SlotDecoder(p)
        s = one.alloc()
        one.prefill(s, prompt)
        out = [p.hidden[0].copy()]
        for t in steps:
            one.step([s], [t])
            out.append(p.hidden[0].copy())
        return out

    sd = SlotDecoder(plan)
    a = sd.alloc()
    sd.prefill(a, IDS[:3])
    ha = [plan.hidden[0].copy()]
    b = sd.alloc()  # the arena doubles: a's cache is kept
    assert sd.capacity == 2
    sd.prefill(b, IDS[2:8])
    hb = [plan.hidden[0].copy()]
    for ta, tb in ((11, 12), (13, 14)):
        sd.step([a, b], [ta, tb])
        ha.append(plan.hidden[0].copy())
        hb.append(plan.hidden[1].copy())
    sd.free(a)
    c = sd.alloc()  # a's slot, reused
    assert c == a
    sd.prefill(c, IDS[5:7])
    hc = [plan.hidden[0].copy()]
    sd.step([b, c], [15, 16])
    hc.append(plan.hidden[1].copy())
    for got, want in ((ha, alone(IDS[:3], [11, 13])), (hb, alone(IDS[2:8], [12, 14])),
                      (hc, alone(IDS[5:7], [16]))):  # fmt: skip
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def _isas(plan):
    names = {v: k for k, v in kernels.ISA_LEVELS.items()}
    return {f: names[lv] for f, lv in plan._levels.items()}


def _stage(plan):
    return {v: k for k, v in kernels.ISA_LEVELS.items()}[plan._stage]


def test_max_context_enforced(model):
    dec = BitNetDecoder(model, max_context=9)
    assert dec.fused
    dec.prefill(torch.tensor([IDS[:8]]))
    dec.step([1])
    with pytest.raises(MulfreeError, match="context full"):
        dec.step([2])
    sd = SlotDecoder(dec.plan)
    with pytest.raises(MulfreeError, match="context full"):
        sd.prefill(sd.alloc(), IDS[:10])
    # a reset starts over
    dec.reset(1)
    dec.prefill(torch.tensor([IDS[:9]]))


def test_fused_true_needs_a_supported_model(model):
    with pytest.raises(MulfreeError, match="fused=True"):
        BitNetDecoder(model, isa="torch", fused=True)
    assert not BitNetDecoder(model, isa="torch").fused


def test_step_energy_counts_on_the_torch_path(model):
    """step_energy counts the same step through the torch path and leaves the compiled state."""
    dec = BitNetDecoder(model)
    dec.prefill(torch.tensor([IDS[:4]]))
    e = dec.step_energy([3])
    assert e.total_pj > 0 and e.saving > 1
    assert dec.fused and dec.lengths == [4]
    want = BitNetDecoder(model)
    want.prefill(torch.tensor([IDS[:4]]))
    torch.testing.assert_close(dec.step([3]), want.step([3]), atol=0, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("table", ["int8", "int4", "bfloat16", "float16", "float32"])
def test_numpy_embedding_is_the_modules_lookup(ckpts, tmp_path, tied, table):
    """The plan's embedding lookup (NumPy on the module's buffers: no torch op, whose OpenMP
    pool would then spin on the team's cores) gives the module's rows bit for bit, and refuses
    ids out of range in one line."""
    from mulfree.engine.bitnet_plan import numpy_embedding
    from mulfree.models.bitnet.synthetic import TINY

    if tied:
        src = write_random_checkpoint(tmp_path / "tied", dict(TINY, tie_word_embeddings=True), seed=4)
        m = from_checkpoint(src, head_format=table)
    else:
        m = from_checkpoint(ckpts["packed"], embedding_format=table)
    emb, V, D = m.model.embed_tokens, m.config.vocab_size, m.config.hidden_size
    look = numpy_embedding(emb, V, D)
    assert look is not None
    ids = np.array([0, 5, V - 1, 5, 17], dtype=np.int64)
    with torch.no_grad():
        want = emb(torch.from_numpy(ids)).float().numpy()
    got = look(ids)
    assert got.dtype == np.float32 and got.shape == (5, D)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0
    for bad in ([V], [-1]):
        with pytest.raises(MulfreeError, match="out of range"):
            look(np.array(bad, dtype=np.int64))
