"""The completed OpenAI API: logprobs / echo, n > 1, lists of prompts, penalties and logit_bias,
unsupported fields refused by name, the shared defaults, /openapi.json."""

from __future__ import annotations

import json

import pytest
import torch

from mulfree.engine.generate import GenerateConfig
from mulfree.engine.sampler import SamplerConfig, SamplingParams
from mulfree.serve.protocol import CompletionRequest, parse
from tests.serve.conftest import request, request_json

PROMPT = "The quick brown fox"


def post(s, body, path="/v1/completions"):
    status, _, out = request_json(s.url + path, "POST", body)
    assert status == 200, out
    return out


def _prompt_logprobs(backend, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from the backend's own prefill (the oracle)."""
    with backend.lock:
        _, logits = backend.start(ids, all_logits=True)  # [T, V]
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_logprobs_are_the_models_prompt_log_likelihoods(server):
    ids = server.backend.encode(PROMPT)
    out = post(server, {"prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": 1,
                        "temperature": 0})  # fmt: skip
    (choice,) = out["choices"]
    lp = choice["logprobs"]
    assert choice["text"].startswith(PROMPT)
    n = len(ids) + 1  # the prompt's tokens, then the one generated
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    # the same float32 rows of the same prefill: equal, not close
    assert lp["token_logprobs"][1:-1] == _prompt_logprobs(server.backend, ids)
    assert "".join(lp["tokens"][: len(ids)]) == server.backend.tokenizer.decode(ids)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for value, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        # top 2 + the token itself, keyed by text (byte tokens that decode alike share a key)
        assert 1 <= len(top) <= 3 and max(top.values()) >= value
    # the greedy token is its position's most likely one (lm-eval's is_greedy test)
    assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())


def test_lists_of_prompts_and_n_choices_equal_single_requests(server):
    base = {"max_tokens": 6, "temperature": 1.0, "seed": 9, "ignore_eos": True}
    prompts = ["Hello world", "Ternary weights"]
    out = post(server, {**base, "prompt": prompts, "n": 2})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    for j, p in enumerate(prompts):
        for k in range(2):
            alone = post(server, {**base, "prompt": p, "seed": 9 + k})["choices"][0]["text"]
            assert out["choices"][2 * j + k]["text"] == alone
    n_prompt = sum(len(server.backend.encode(p)) for p in prompts)
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 24,
                            "total_tokens": n_prompt + 24}  # fmt: skip


def test_lists_of_token_id_prompts(server):
    out = post(server, {"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 2, "echo": True,
                        "ignore_eos": True})  # fmt: skip
    texts = [c["text"] for c in out["choices"]]
    decode = server.backend.decode
    assert texts[0].startswith(decode([5, 6, 7])) and texts[1].startswith(decode([8, 9]))
    assert out["usage"]["prompt_tokens"] == 5


def test_streaming_n_choices_reassemble_to_the_full_response(server):
    body = {"prompt": "Hello", "max_tokens": 8, "seed": 4, "n": 3, "ignore_eos": True,
            "logprobs": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    full = post(server, body)
    status, _, raw = request(server.url + "/v1/completions", "POST", {**body, "stream": True})
    assert status == 200
    texts, lps, usage = {}, {}, None
    for line in raw.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        usage = ev.get("usage") or usage
        for c in ev["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["logprobs"]:
                lps.setdefault(c["index"], []).extend(c["logprobs"]["token_logprobs"])
    for c in full["choices"]:
        assert texts[c["index"]] == c["text"]
        assert lps[c["index"]] == c["logprobs"]["token_logprobs"]
    assert usage == full["usage"]


def test_logit_bias_and_penalties_steer_greedy_decoding(server):
    base = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    forced = post(server, {**base, "logit_bias": {"42": 100}, "logprobs": 0})["choices"][0]
    token = server.backend.tokenizer.decode([42], skip_special_tokens=False)
    assert forced["logprobs"]["tokens"] == [token] * 8
    # frequency_penalty 2 takes 2 off per occurrence in the last 64 tokens: after ~49 the
    # +100 bias no longer beats the random model's other logits (|logit| << 10)
    long = {**base, "max_tokens": 60, "logit_bias": {"42": 100}, "logprobs": 0}
    pen = post(server, {**long, "frequency_penalty": 2})["choices"][0]["logprobs"]["tokens"]
    assert 40 <= pen.count(token) < 60 and pen[:40] == [token] * 40
    assert post(server, long)["choices"][0]["logprobs"]["tokens"] == [token] * 60


def test_chat_logprobs_and_echo(server):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    out = post(server, {"messages": msgs, "max_tokens": 4, "temperature": 0, "logprobs": True,
                        "top_logprobs": 3, "echo": True, "ignore_eos": True},
               "/v1/chat/completions")  # fmt: skip
    c = out["choices"][0]
    assert c["message"]["content"].startswith("Hello")
    content = c["logprobs"]["content"]
    assert len(content) == 4
    for e in content:
        assert len(e["top_logprobs"]) == 3 and e["bytes"] == list(e["token"].encode())
        assert e["logprob"] == e["top_logprobs"][0]["logprob"]  # greedy: the top one
    err = request_json(server.url + "/v1/chat/completions", "POST",
                       {"messages": msgs, "top_logprobs": 2})[2]["error"]  # fmt: skip
    assert err["param"] == "top_logprobs"


UNSUPPORTED = [
    ("/v1/completions", {"prompt": "hi", "suffix": "x"}, "suffix"),
    ("/v1/completions", {"prompt": "hi", "best_of": 2}, "best_of"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": []},
     "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "parallel_tool_calls": False}, "parallel_tool_calls"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
     "messages"),
]  # fmt: skip


@pytest.mark.parametrize("path, body, field", UNSUPPORTED, ids=[u[2] + u[0][3:] for u in UNSUPPORTED])
def test_unsupported_fields_are_refused_by_name(server, path, body, field):
    status, _, out = request_json(server.url + path, "POST", body)
    assert status == 400 and out["error"]["param"] == field
    assert field in out["error"]["message"] or "tool_calls" in out["error"]["message"]


def test_text_response_format_and_user_are_accepted(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": {"type": "text"}, "user": "someone"}  # fmt: skip
    assert post(server, body, "/v1/chat/completions")["choices"]


def test_one_set_of_defaults_for_cli_server_and_page(server):
    d = SamplerConfig()
    assert (d.temperature, d.top_k, d.top_p, d.min_p) == (0.8, 40, 0.95, 0.05)  # llama.cpp's
    assert GenerateConfig(prompt="x").sampler == d
    got = server.state.checks.params(parse(CompletionRequest, {"prompt": "x"}))
    assert got == SamplingParams.defaults() and got.sampler_config() == d
    page = request(server.url + "/")[2].decode()
    assert f'id="temperature" type="number" value="{d.temperature}"' in page
    assert f'id="top_p" type="number" value="{d.top_p}"' in page
    assert f'id="max_tokens" type="number" value="{server.state.config.default_max_tokens}"' in page


def test_openapi_schema_comes_from_the_request_models(server):
    status, _, doc = request_json(server.url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    assert schemas["CompletionRequest"]["additionalProperties"] is False
    for name in ("logprobs", "echo", "n", "logit_bias", "presence_penalty", "min_p"):
        assert name in schemas["CompletionRequest"]["properties"], name
    ref = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    assert ref["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")


def test_chat_stream_carries_the_logprobs_of_every_token(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
            "logprobs": True, "top_logprobs": 1, "ignore_eos": True}  # fmt: skip
    full = post(server, body, "/v1/chat/completions")["choices"][0]
    status, _, raw = request(server.url + "/v1/chat/completions", "POST", {**body, "stream": True})
    assert status == 200
    got, text = [], ""
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                text += c["delta"].get("content") or ""
                if c["logprobs"]:
                    got += c["logprobs"]["content"]
    assert text == full["message"]["content"] and got == full["logprobs"]["content"]
    assert len(got) == 6


def test_echo_logprobs_on_the_torch_free_backend():
    """The packed engine's LiteBackend gives every prompt position's logits by decode steps:
    the same rows as feeding the prompt one token at a time through its own step."""
    from mulfree.engine.generate import bundled_packed
    from mulfree.serve import load_backend
    from mulfree.serve.backends import LiteBackend
    from tests.serve.conftest import make_server

    packed = bundled_packed()
    if packed is None:
        pytest.skip("no bundled packed model")
    b = load_backend(packed)
    if not isinstance(b, LiteBackend):
        pytest.skip("the torch-free backend is not used here (no compiled core)")
    ids = b.encode("ROMEO: what say you")
    st, first = b.start(ids[:1])
    rows = [first]
    for t in ids[1:]:
        rows.append(b.step([st], [t])[0].clone())  # valid until the next call
    b.free(st)
    lp = torch.log_softmax(torch.stack(rows).float(), -1)
    want = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
    with make_server(b) as s:
        out = post(s, {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1,
                       "temperature": 0})  # fmt: skip
    assert out["choices"][0]["logprobs"]["token_logprobs"][1:-1] == want
