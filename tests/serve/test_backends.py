"""Backends: batched MatMul-free decode steps equal single-request steps and a full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mulfree import kernels
from mulfree.engine.decode import Decoder
from mulfree.errors import MulfreeError
from mulfree.serve.backends import GenericBackend, LiteBackend, MatMulFreeBackend, make_backend
from mulfree.ternary.bitlinear import BitLinear
from tests._tolerances import EXACT, FP32_LOGITS, assert_argmax_agrees, assert_close_through_int8

# Batched vs single and cached vs full differ only by float32 summation order inside the matmuls
# (different batch shapes take different BLAS blockings): a few ulps of logits of size ~1.
LOGIT_ATOL = FP32_LOGITS.atol
# Packed weights: integer ternary products with per-token activation scales, so rows of a batch
# never interact and a batched step equals single steps bit for bit.
PACKED_ATOL = EXACT.atol


def test_auto_picks_the_batched_backend(backend, float_backend):
    assert isinstance(backend, MatMulFreeBackend)
    assert backend.eos_token_ids == frozenset({0})
    assert backend.weights == ("packed" if kernels.available() else "float")
    assert float_backend.weights == "float"


def test_packed_weights_follow_the_float_model(backend, float_backend):
    if backend.weights != "packed":
        pytest.skip("the compiled ternary kernels are not built")
    assert not any(isinstance(m, BitLinear) for m in backend.model.modules())
    ids = backend.encode("The quick brown fox jumps")
    _, packed = backend.start(ids)
    _, ref = float_backend.start(ids)
    # Same ternary arithmetic; only fp32 rounding differs, which can move an int8 activation
    # by one step near a rounding boundary: logits agree to a few percent of their spread.
    assert (packed - ref).abs().max() < 0.05 * ref.std()
    assert int(packed.argmax()) == int(ref.argmax())


def test_batched_step_equals_single_steps(any_backend):
    backend = any_backend
    prompts = ["Hello world", "The quick brown fox", "A"]
    tokens = [5, 17, 42]
    singles = []
    for p, t in zip(prompts, tokens, strict=True):
        st, _ = backend.start(backend.encode(p))
        # a step's logits are valid until the backend's next call (Backend.step): kept, copied
        singles.append(backend.step([st], [t])[0].clone())
        singles.append(backend.step([st], [t + 1])[0].clone())
    states = [backend.start(backend.encode(p))[0] for p in prompts]
    first = backend.step(states, tokens).clone()
    second = backend.step(states, [t + 1 for t in tokens])
    atol = PACKED_ATOL if backend.weights == "packed" else LOGIT_ATOL
    for i in range(3):
        torch.testing.assert_close(first[i], singles[2 * i], atol=atol, rtol=0)
        torch.testing.assert_close(second[i], singles[2 * i + 1], atol=atol, rtol=0)
    assert [s.length for s in states] == [len(backend.encode(p)) + 2 for p in prompts]


def test_cached_steps_equal_full_forward(any_backend):
    backend = any_backend
    ids = backend.encode("Ternary weights replace")
    st, logits = backend.start(ids[:3])
    rows = [logits]
    for t in ids[3:]:
        rows.append(backend.step([st], [t])[0].clone())  # valid until the next call
    with torch.inference_mode():
        full = backend.model(input_ids=torch.tensor([ids])).logits[0, 2:]
    if backend.weights != "packed":
        torch.testing.assert_close(torch.stack(rows), full, atol=LOGIT_ATOL, rtol=0)
        return
    # packed: steps run the engine's fused decode step, whose fused norms and exp round
    # differently from the model's forward (mulfree.engine.decode): a rounding difference can
    # move an int8 activation by one step, so logits are compared through int8 and tokens where
    # decidable (tests/_tolerances.py)
    assert isinstance(backend._decoder, Decoder)
    got = torch.stack(rows)
    assert_close_through_int8(got, full)
    assert_argmax_agrees(got, full)


def test_generic_backend_matches_a_full_forward(backend):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=backend.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    with pytest.raises(MulfreeError, match="packed ternary weights need an hgrn_bit model"):
        make_backend(LlamaForCausalLM(cfg), backend.tokenizer, "llama", weights="packed")
    llama = make_backend(LlamaForCausalLM(cfg), backend.tokenizer, "llama", weights="auto")
    assert isinstance(llama, GenericBackend) and llama.max_context == 128
    a, b = backend.encode("Hello world"), backend.encode("The quick brown fox jumps")
    sa, _ = llama.start(a)
    sb, _ = llama.start(b)
    step = llama.step([sa, sb], [7, 9])
    with torch.inference_mode():
        fa = llama.model(input_ids=torch.tensor([a + [7]])).logits[0, -1]
        fb = llama.model(input_ids=torch.tensor([b + [9]])).logits[0, -1]
    torch.testing.assert_close(step[0], fa, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(step[1], fb, atol=LOGIT_ATOL, rtol=0)


def test_load_backend_with_lmul_attention(backend, tmp_path):
    from mulfree.serve.backends import load_backend

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=backend.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    backend.tokenizer.save_pretrained(str(tmp_path))
    plain = load_backend(tmp_path)
    lmul = load_backend(tmp_path, lmul_bits=3, model_id="llama-lmul")
    assert isinstance(lmul, GenericBackend) and lmul.model_id == "llama-lmul"
    assert "lmul" in str(lmul.model.config._attn_implementation)
    ids = backend.encode("Hello world")
    s_plain, l_plain = plain.start(ids)
    s_lmul, l_lmul = lmul.start(ids)
    # L-Mul with 3 mantissa bits approximates the products: close to exact attention, not equal.
    assert not torch.equal(l_plain, l_lmul)
    torch.testing.assert_close(l_lmul, l_plain, atol=0.1, rtol=0.1)
    assert lmul.step([s_lmul], [5]).shape == (1, backend.vocab_size)


def test_packed_model_directory(model_dir, tmp_path):
    from mulfree.engine import convert
    from mulfree.serve.backends import load_backend

    out = tmp_path / "packed"
    convert(str(model_dir), str(out))  # tq1 ternary + int8 embeddings, tokenizer copied
    packed = load_backend(out, max_context=1000)
    # the torch-free engine serves a packed hgrn_bit dir when the compiled core is there
    want = LiteBackend if kernels.available() else MatMulFreeBackend
    assert isinstance(packed, want) and packed.weights == "packed"
    with pytest.raises(MulfreeError, match="stored packed"):
        load_backend(out, weights="float")
    ids = packed.encode("Hello world")
    s1, _ = packed.start(ids)
    s2, _ = packed.start(packed.encode("The quick"))
    s3, _ = packed.start(ids)
    single = packed.step([s1], [5]).clone()  # valid until the next call
    batched = packed.step([s2, s3], [7, 5])
    torch.testing.assert_close(batched[1], single[0], atol=PACKED_ATOL, rtol=0)


def test_detokenizer_rebuilds_the_text(backend):
    from mulfree.engine.detok import Detokenizer

    prompt = backend.encode("Hello")
    text = " world, ternary weights répondent ✓"
    ids = backend.encode(text)
    d = Detokenizer(backend, prompt)
    out = "".join(d.add(t) for t in ids) + d.flush()
    assert out == text
