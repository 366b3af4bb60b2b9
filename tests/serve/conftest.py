"""Fixtures: a tiny random MatMul-free model directory, its backend, and live servers on loopback."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from mulfree.serve import ServeConfig, ServerThread, load_backend
from tests.serve.helpers import make_model_dir

MODEL_ID = "tiny"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve") / MODEL_ID)


@pytest.fixture(scope="session")
def backend(model_dir):
    """What `mulfree serve` runs by default: packed ternary weights when the kernels are built."""
    return load_backend(model_dir, max_context=100_000)


@pytest.fixture(scope="session")
def float_backend(model_dir):
    return load_backend(model_dir, max_context=100_000, weights="float")


@pytest.fixture(params=["default", "float"])
def any_backend(request, backend, float_backend):
    return backend if request.param == "default" else float_backend


def need_serve_extra() -> None:
    for name in ("starlette", "uvicorn"):
        pytest.importorskip(name, reason="the serve extra (starlette, uvicorn) is not installed")


def make_server(backend, **overrides) -> ServerThread:
    """A started server on a free loopback port sharing the session's backend."""
    need_serve_extra()
    kw = dict(port=0, log_level="warning", max_tokens_limit=50_000, max_context=100_000)
    kw.update(overrides)
    energy = kw.pop("energy", False)
    return ServerThread(ServeConfig(**kw), backend, estimate_energy=energy).start()


@pytest.fixture(scope="module")
def server(backend):
    s = make_server(backend, energy=True)
    yield s
    s.stop()


# --- tiny HTTP helpers (stdlib only, so malformed requests can be sent as they are) -----------
def request(url, method="GET", body=None, headers=None, timeout=30):
    """(status, headers, body bytes) of one request."""
    # bytes and iterators of bytes (sent chunked) go as they are; anything else as JSON.
    raw = body is None or isinstance(body, bytes) or hasattr(body, "__next__")
    data = body if raw else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def request_json(url, method="GET", body=None, headers=None):
    status, hdrs, raw = request(url, method, body, headers)
    return status, hdrs, json.loads(raw)


def open_stream(s: ServerThread, body: dict) -> socket.socket:
    """Send a streaming completion over a raw socket; return it once the first event arrived."""
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection((s.host, s.port), timeout=10)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    got = b""
    while b"data: " not in got:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the first event: {got!r}"
        got += chunk
    return sock


def wait_idle(s: ServerThread, timeout=5.0) -> float:
    """Seconds until the server has no active or waiting request (fails after `timeout`)."""
    t0 = time.monotonic()
    while True:
        active, waiting = s.state.scheduler.counts()
        if active == 0 and waiting == 0:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"still {active} active, {waiting} waiting"
        time.sleep(0.01)
