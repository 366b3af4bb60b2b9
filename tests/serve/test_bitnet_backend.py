"""`mulfree serve` on a packed BitNet model: the BitNet backend runs the compiled transformer step
(engine.bitnet_plan) with one KV-cache slot per request.

Tolerance EXACT (tests/_tolerances.py) against the BitNetDecoder on the same plan: a request
stepped in a batch, or after others joined and left, gives the same bits as that request decoded
alone (rows of every stage and kernel call are independent; tests/engine/test_bitnet_plan.py).
"""

from __future__ import annotations

import pytest
import torch

from mulfree import kernels
from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer
from mulfree.engine.bitnet_decode import BitNetDecoder
from mulfree.engine.convert import ConvertConfig, convert
from mulfree.errors import MulfreeError
from mulfree.models.bitnet.synthetic import write_random_checkpoint
from mulfree.serve import ServeConfig
from mulfree.serve.backends import BitNetBackend, GenericBackend, load_backend
from tests.engine.conftest import SENTENCES
from tests.serve.conftest import make_server, request_json

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bitnet-serve")
    ckpt = write_random_checkpoint(root / "ckpt", seed=3)
    save_hf_tokenizer(train_bpe_tokenizer(SENTENCES, vocab_size=300), EOS_TOKEN, ckpt)
    convert(ConvertConfig(str(ckpt), str(root / "packed")))
    return root / "packed"


@pytest.fixture(scope="module")
def backend(packed_dir):
    return load_backend(packed_dir, max_context=64)


def _alone(packed_dir, prompt, tokens, **kw):
    """Logits of one request decoded on its own BitNetDecoder: prefill, then one step a token."""
    from mulfree.engine import load_packed

    dec = BitNetDecoder(load_packed(packed_dir), max_context=64, **kw)
    rows = [dec.prefill([prompt])[0].clone()]
    rows += [dec.step([t])[0].clone() for t in tokens]
    return torch.stack(rows)


def test_packed_bitnet_is_served_by_the_bitnet_backend(backend):
    assert isinstance(backend, BitNetBackend) and backend.kind == "bitnet"
    assert backend.weights == "packed" and backend.decoder().fused
    assert backend.max_context == 64


def test_requests_join_and_leave_with_the_same_bits_as_alone(backend, packed_dir):
    a, b = backend.encode("Ternary weights"), backend.encode("The quick brown fox")
    backend.reserve(4)
    sa, la = backend.start(a)
    sb, lb = backend.start(b)
    rows_a, rows_b = [la], [lb]
    for t in range(5):  # two requests stepping together, then b leaves and c joins
        states = [sa, sb] if t < 3 else [sa]
        out = backend.step(states, [7 + t] * len(states)).clone()  # valid until the next call
        rows_a.append(out[0])
        if t < 3:
            rows_b.append(out[1])
        if t == 2:
            backend.free(sb)
            sc, _ = backend.start(b)  # takes b's slot: its cache must start empty
            backend.free(sc)
    backend.free(sa)
    assert torch.equal(torch.stack(rows_a), _alone(packed_dir, a, [7, 8, 9, 10, 11]))
    assert torch.equal(torch.stack(rows_b), _alone(packed_dir, b, [7, 8, 9]))


def test_echo_logits_are_every_positions(backend, packed_dir):
    ids = backend.encode("The quick brown fox")
    state, rows = backend.start(ids, all_logits=True)
    backend.free(state)
    assert rows.shape == (len(ids), backend.vocab_size)
    assert torch.equal(rows, _alone(packed_dir, ids[:1], ids[1:]))


def test_lmul_attention_and_int8_cache(packed_dir):
    be = load_backend(packed_dir, max_context=64, lmul_bits=3, kv_dtype="int8")
    assert be.decoder().attention == "lmul" and be.decoder().kv_dtype == "int8"
    ids = be.encode("Ternary weights")
    be.reserve(1)
    state, logits = be.start(ids)
    out = be.step([state], [5])[0]
    be.free(state)
    ref = _alone(packed_dir, ids, [5], attention="lmul", mantissa_bits=3, kv_dtype="int8")
    assert torch.equal(torch.stack([logits, out]), ref)


def test_context_and_memory_bounds(backend, packed_dir):
    with pytest.raises(MulfreeError, match="max_context 64"):
        backend.start(list(range(3, 70)))
    # the KV arena is sized once for max_batch x max_context: what cannot fit is refused
    big = load_backend(packed_dir)  # max_context: the model's 256 positions
    with pytest.raises(MulfreeError, match="KV cache for .* requests x 256 tokens needs"):
        big.reserve(10**9)
    with pytest.raises(MulfreeError, match="max_context must be in"):
        load_backend(packed_dir, max_context=10**6)


def test_backend_choice_and_bad_options(packed_dir):
    assert isinstance(load_backend(packed_dir, kind="generic"), GenericBackend)
    with pytest.raises(MulfreeError, match="mmfree backend serves hgrn_bit"):
        load_backend(packed_dir, kind="mmfree")
    with pytest.raises(MulfreeError, match="kv_cache must be one of"):
        ServeConfig(model=str(packed_dir), kv_cache="int4")


def test_server_answers_and_refuses_what_wont_fit(backend):
    s = make_server(backend, max_batch=2)
    try:
        status, _, body = request_json(s.url + "/v1/completions", "POST",
                                       {"prompt": "The quick", "max_tokens": 4, "temperature": 0})  # fmt: skip
        assert status == 200 and 1 <= body["usage"]["completion_tokens"] <= 4
        # prompt + max_tokens beyond the 64-token context the KV arena holds (the server was
        # told 100,000): 400, one line of why
        status, _, body = request_json(s.url + "/v1/completions", "POST",
                                       {"prompt": "fox " * 80, "max_tokens": 4})  # fmt: skip
        assert status == 400 and "takes at most 63" in body["error"]["message"]
    finally:
        s.stop()
