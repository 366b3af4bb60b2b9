"""A real server on a loopback port: the openai client, concurrency, back-pressure, disconnects,
timeouts, bad input, API keys, metrics."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.serve.conftest import (
    MODEL_ID,
    make_server,
    open_stream,
    request,
    request_json,
    wait_idle,
)

openai = pytest.importorskip("openai", reason="the openai client is not installed")


def client(s, **kw):
    return openai.OpenAI(
        base_url=s.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw
    )


def complete(s, seed, n=24, prompt="Hello world"):
    r = client(s).completions.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=n,
        seed=seed,
        temperature=1.0,
        top_p=0.9,
        extra_body={"ignore_eos": True},
    )
    return r.choices[0].text, r


def test_openai_client_completes(server):
    text, r = complete(server, seed=3)
    assert r.object == "text_completion" and r.model == MODEL_ID
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens == len(server.backend.encode("Hello world"))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24
    assert text


def test_openai_client_streams_the_same_text(server):
    text, _ = complete(server, seed=5)
    stream = client(server).completions.create(
        model=MODEL_ID,
        prompt="Hello world",
        max_tokens=24,
        seed=5,
        temperature=1.0,
        top_p=0.9,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.text)
            reasons.append(c.finish_reason)
    assert "".join(pieces) == text
    assert reasons[-1] == "length" and usage.completion_tokens == 24


def test_chat_stream_and_simple_template(server):
    c = client(server)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = c.chat.completions.create(
        model=MODEL_ID, messages=msgs, max_tokens=10, seed=1, extra_body={"ignore_eos": True}
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    # The tokenizer has no chat template: "role: content\n" lines, then "assistant:".
    expected = server.backend.encode("system: Be brief.\nuser: hi\nassistant:")
    assert r.usage.prompt_tokens == len(expected)
    stream = c.chat.completions.create(
        model=MODEL_ID,
        messages=msgs,
        max_tokens=10,
        seed=1,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert streamed == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_the_text(server):
    text, _ = complete(server, seed=11, n=40)
    cut = text[5:7]  # a stop string that occurs in the unconstrained output
    r = client(server).completions.create(
        model=MODEL_ID,
        prompt="Hello world",
        max_tokens=40,
        seed=11,
        temperature=1.0,
        top_p=0.9,
        stop=[cut],
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].text == text[: text.index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_greedy_is_deterministic_without_seed(server):
    c = client(server)
    a = c.completions.create(model=MODEL_ID, prompt="fox", max_tokens=12, temperature=0)
    b = c.completions.create(model=MODEL_ID, prompt="fox", max_tokens=12, temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_concurrent_clients_get_their_single_request_text(server):
    seeds = list(range(100, 108))
    alone = {s: complete(server, s, prompt=f"Hello {s}")[0] for s in seeds}
    steps_before = server.state.metrics.decode_steps
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(
            zip(
                seeds,
                pool.map(lambda s: complete(server, s, prompt=f"Hello {s}")[0], seeds),
                strict=True,
            )
        )
    assert together == alone
    assert len(set(alone.values())) == len(seeds)  # independent outputs
    # They decoded together: fewer steps than tokens (8 requests x 23 decode steps each alone).
    assert server.state.metrics.decode_steps - steps_before < len(seeds) * 23
    wait_idle(server)


def test_models_health_metrics_page(server):
    status, _, body = request_json(server.url + "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == [MODEL_ID]
    assert request_json(server.url + f"/v1/models/{MODEL_ID}")[2]["id"] == MODEL_ID
    assert request_json(server.url + "/v1/models/other")[0] == 404
    status, _, health = request_json(server.url + "/health")
    assert status == 200 and health["status"] == "ok" and health["backend"] == "mmfree"
    complete(server, seed=1, n=4)
    status, hdrs, raw = request(server.url + "/metrics")
    text = raw.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    for name in (
        "mulfree_generated_tokens_total",
        "mulfree_prompt_tokens_total",
        "mulfree_tokens_per_second",
        "mulfree_energy_per_token_picojoules",
        "mulfree_energy_estimated_joules_total",
    ):
        assert values[name] > 0, name
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}  # parses, or raises
    ok = [x for x in fams["mulfree_http_requests"].samples
          if x.labels == {"endpoint": "/v1/completions", "code": "200"}]  # fmt: skip
    assert ok and ok[0].value >= 1
    for name in ("mulfree_time_to_first_token_seconds", "mulfree_time_per_output_token_seconds"):
        assert fams[name].type == "histogram"
        got = {x.name.rsplit("_", 1)[-1]: x.value for x in fams[name].samples
               if x.labels.get("le") in (None, "+Inf")}  # fmt: skip
        assert got["count"] >= 1 and got["bucket"] == got["count"] and got["sum"] > 0, name
    status, hdrs, raw = request(server.url + "/")
    assert status == 200 and hdrs["content-type"].startswith("text/html")
    assert b'id="prompt"' in raw and json.dumps(MODEL_ID).encode() in raw


def _error(status_body, status):
    code, _, body = status_body
    assert code == status, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err
    return err


BAD = [
    ("malformed-json", b'{"prompt": "hi",', 400, "invalid_json"),
    ("json-not-object", b"[1, 2]", 400, "invalid_json"),
    ("unknown-model", {"model": "gpt-9", "prompt": "hi"}, 404, "model_not_found"),
    ("model-not-string", {"model": 3, "prompt": "hi"}, 400, None),
    ("negative-max-tokens", {"prompt": "hi", "max_tokens": -5}, 400, None),
    ("zero-max-tokens", {"prompt": "hi", "max_tokens": 0}, 400, None),
    ("huge-max-tokens", {"prompt": "hi", "max_tokens": 10**12}, 400, None),
    ("string-max-tokens", {"prompt": "hi", "max_tokens": "ten"}, 400, None),
    ("bool-max-tokens", {"prompt": "hi", "max_tokens": True}, 400, None),
    ("missing-prompt", {"max_tokens": 3}, 400, None),
    ("prompt-wrong-type", {"prompt": {"a": 1}}, 400, None),
    ("empty-prompt-list", {"prompt": []}, 400, None),
    ("too-many-prompts", {"prompt": ["a"] * 65}, 400, None),
    ("token-id-out-of-vocab", {"prompt": [1, 10**9]}, 400, None),
    ("temperature-too-high", {"prompt": "hi", "temperature": 5}, 400, None),
    ("temperature-nan", b'{"prompt": "hi", "temperature": NaN}', 400, None),
    ("top-p-zero", {"prompt": "hi", "top_p": 0}, 400, None),
    ("top-k-negative", {"prompt": "hi", "top_k": -3}, 400, None),
    ("seed-string", {"prompt": "hi", "seed": "x"}, 400, None),
    ("five-stops", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    ("empty-stop", {"prompt": "hi", "stop": [""]}, 400, None),
    ("n-zero", {"prompt": "hi", "n": 0}, 400, None),
    ("n-too-many", {"prompt": "hi", "n": 17}, 400, None),
    ("stream-not-bool", {"prompt": "hi", "stream": "yes"}, 400, None),
    ("logprobs-too-many", {"prompt": "hi", "logprobs": 21}, 400, None),
    ("logprobs-bool", {"prompt": "hi", "logprobs": True}, 400, None),
    ("echo-logprobs-stream", {"prompt": "hi", "echo": True, "logprobs": 1, "stream": True}, 400,
     None),
    ("presence-too-high", {"prompt": "hi", "presence_penalty": 3}, 400, None),
    ("repetition-zero", {"prompt": "hi", "repetition_penalty": 0}, 400, None),
    ("logit-bias-key", {"prompt": "hi", "logit_bias": {"x": 1}}, 400, None),
    ("logit-bias-range", {"prompt": "hi", "logit_bias": {"1": 101}}, 400, None),
    ("logit-bias-vocab", {"prompt": "hi", "logit_bias": {str(10**9): 1}}, 400, None),
    ("min-p-above-one", {"prompt": "hi", "min_p": 1.5}, 400, None),
]


@pytest.mark.parametrize("body, status, code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_completion_requests(server, body, status, code):
    err = _error(request_json(server.url + "/v1/completions", "POST", body), status)
    if code:
        assert err["code"] == code


BAD_CHAT = [
    ("no-messages", {}),
    ("empty-messages", {"messages": []}),
    ("bad-role", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("content-number", {"messages": [{"role": "user", "content": 5}]}),
    ("image-part", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    (
        "negative-max-completion-tokens",
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -1},
    ),
]


@pytest.mark.parametrize("body", [b[1] for b in BAD_CHAT], ids=[b[0] for b in BAD_CHAT])
def test_bad_chat_requests(server, body):
    _error(request_json(server.url + "/v1/chat/completions", "POST", body), 400)


def test_unknown_route_and_method(server):
    assert _error(request_json(server.url + "/v1/nothing"), 404)["code"] == "not_found"
    assert _error(request_json(server.url + "/v1/completions"), 405)["code"] == "method_not_allowed"


def test_long_prompts_and_bodies(backend):
    with make_server(backend, max_prompt_tokens=16, max_context=64, max_body_bytes=2000) as s:
        url = s.url + "/v1/completions"
        err = _error(request_json(url, "POST", {"prompt": "Hello world " * 20}), 400)
        assert err["code"] == "context_length_exceeded"
        err = _error(request_json(url, "POST", {"prompt": "Hello", "max_tokens": 63}), 400)
        assert err["code"] == "context_length_exceeded"
        err = _error(request_json(url, "POST", {"prompt": "x" * 5000}), 413)
        assert err["code"] == "request_too_large"
        # A chunked body without Content-Length is counted as it arrives.
        chunks = iter([b'{"prompt": "', b"y" * 3000, b'"}'])
        err = _error(request_json(url, "POST", chunks), 413)
        # A body far larger than the socket buffers: the client still reads the 413.
        err = _error(request_json(url, "POST", b"z" * 3_000_000), 413)
        # The server is fine afterwards: a valid request succeeds, no slot is held.
        status, _, body = request_json(url, "POST", {"prompt": "Hello", "max_tokens": 5})
        assert status == 200 and body["usage"]["completion_tokens"] <= 5
        wait_idle(s)


def test_429_when_full_and_slots_come_back(backend):
    with make_server(backend, max_batch=1, max_queue=1) as s:
        long = {"prompt": "Hello", "max_tokens": 40_000, "ignore_eos": True}
        a = open_stream(s, long)
        b = open_stream_queued(s, long)
        try:
            status, hdrs, body = request_json(
                s.url + "/v1/completions", "POST", {"prompt": "hi", "max_tokens": 2}
            )
            err = _error((status, hdrs, body), 429)
            assert err["code"] == "rate_limit_exceeded" and hdrs["retry-after"] == "1"
            assert s.state.scheduler.counts() == (1, 1)
        finally:
            a.close()
            b.close()
        wait_idle(s)
        status, _, _ = request_json(
            s.url + "/v1/completions", "POST", {"prompt": "hi", "max_tokens": 2}
        )
        assert status == 200
        assert s.state.metrics.finished["cancelled"] == 2


def open_stream_queued(s, body):
    """A streaming request that waits in the queue (no event arrives until it gets a place)."""
    import socket

    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection((s.host, s.port), timeout=10)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    t_end = time.monotonic() + 5
    while s.state.scheduler.counts()[1] < 1:
        assert time.monotonic() < t_end, "the second request was not queued"
        time.sleep(0.01)
    return sock


def test_disconnect_mid_stream_frees_the_slot(backend):
    with make_server(backend, max_batch=2, max_queue=0) as s:
        sock = open_stream(s, {"prompt": "Hello", "max_tokens": 40_000, "ignore_eos": True})
        assert s.state.scheduler.counts() == (1, 0)
        sock.close()
        assert wait_idle(s, timeout=2.0) < 2.0
        assert s.state.metrics.finished["cancelled"] == 1
        # The freed slot is usable at once, up to the full batch.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    lambda _: request_json(
                        s.url + "/v1/completions", "POST", {"prompt": "hi", "max_tokens": 3}
                    )[0],
                    range(2),
                )
            )
        assert results == [200, 200]


def test_disconnect_while_waiting_for_a_full_response(backend):
    import socket

    with make_server(backend) as s:
        data = json.dumps({"prompt": "Hello", "max_tokens": 40_000, "ignore_eos": True}).encode()
        sock = socket.create_connection((s.host, s.port), timeout=10)
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        t_end = time.monotonic() + 5
        while s.state.scheduler.counts()[0] < 1:
            assert time.monotonic() < t_end
            time.sleep(0.01)
        sock.close()
        wait_idle(s, timeout=3.0)
        assert s.state.metrics.finished["cancelled"] == 1


def test_timeouts(backend):
    with make_server(backend, request_timeout_s=0.5) as s:
        url = s.url + "/v1/completions"
        long = {"prompt": "Hello", "max_tokens": 40_000, "ignore_eos": True}
        err = _error(request_json(url, "POST", long), 408)
        assert err["code"] == "timeout"
        status, _, raw = request(url, "POST", {**long, "stream": True})
        events = [e[6:] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
        assert status == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "timeout"
        wait_idle(s)
        assert s.state.metrics.finished["timeout"] == 2


def test_model_failure_is_a_500_and_the_server_goes_on(backend, monkeypatch):
    with make_server(backend) as s:
        url = s.url + "/v1/completions"

        def broken_step(states, tokens):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(backend, "step", broken_step)
        err = _error(request_json(url, "POST", {"prompt": "Hello", "max_tokens": 5}), 500)
        assert err["code"] == "server_error" and "out of memory" in err["message"]
        monkeypatch.undo()
        wait_idle(s)
        status, _, body = request_json(url, "POST", {"prompt": "Hello", "max_tokens": 5})
        assert status == 200 and body["usage"]["completion_tokens"] <= 5


def test_api_key(backend):
    with make_server(backend, api_key="s3cret") as s:
        assert _error(request_json(s.url + "/v1/models"), 401)["code"] == "invalid_api_key"
        bad = {"Authorization": "Bearer nope"}
        assert _error(request_json(s.url + "/v1/models", headers=bad), 401)
        big = {"prompt": "x" * 900_000}  # read and dropped, so the 401 arrives intact
        assert _error(request_json(s.url + "/v1/completions", "POST", big, bad), 401)
        with pytest.raises(openai.AuthenticationError):
            client(s, api_key="wrong").completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
        r = client(s, api_key="s3cret").completions.create(
            model=MODEL_ID, prompt="hi", max_tokens=2
        )
        assert r.usage.completion_tokens <= 2
        assert request_json(s.url + "/health")[0] == 200  # health and metrics stay open
        assert request(s.url + "/metrics")[0] == 200


def test_no_slot_leaks_after_everything(server):
    wait_idle(server)
    status, _, body = request_json(
        server.url + "/v1/completions", "POST", {"prompt": "Hello", "max_tokens": 3}
    )
    assert status == 200
