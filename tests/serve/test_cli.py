"""`mulfree serve`: bad options give one line and exit 2; a real subprocess serves and stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from mulfree.cli import main
from tests.serve.conftest import need_serve_extra, request_json


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "/no/such/dir"], "model directory not found"),
        (["serve", "{model}", "--max-batch", "0"], "max_batch must be a positive integer"),
        (["serve", "{model}", "--timeout", "0"], "request_timeout_s must be > 0"),
        (["serve", "{model}", "--backend", "generic", "--max-context", "-1"], "max_context"),
    ],
    ids=["missing-dir", "zero-batch", "zero-timeout", "negative-context"],
)
def test_bad_options(model_dir, capsys, argv, message):
    rc = main([a.replace("{model}", str(model_dir)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_lmul_is_refused_for_matmul_free_models(model_dir, capsys):
    assert main(["serve", str(model_dir), "--lmul", "3"]) == 2
    assert "hgrn_bit has no attention" in capsys.readouterr().err


def test_serve_subprocess(model_dir):
    need_serve_extra()
    env = {**os.environ, "MULFREE_API_KEY": "k1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mulfree.cli",
            "serve",
            str(model_dir),
            "--port",
            "0",
            "--log-level",
            "warning",
            "--energy-table",
            "none",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+) \(API key required\)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(1)
        assert request_json(url + "/health")[0] == 200
        assert request_json(url + "/v1/models")[0] == 401
        status, _, body = request_json(
            url + "/v1/completions",
            "POST",
            {"model": model_dir.name, "prompt": "Hello", "max_tokens": 4},
            {"Authorization": "Bearer k1"},
        )
        assert status == 200 and body["model"] == model_dir.name, json.dumps(body)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    # Ctrl-C: uvicorn shuts down gracefully, then the CLI reports the interrupt (exit 130).
    assert rc == 130


def test_no_model_and_nothing_bundled(monkeypatch, capsys):
    import mulfree.engine.generate

    monkeypatch.setattr(mulfree.engine.generate, "bundled_model", lambda: None)
    assert main(["serve"]) == 2
    assert "no model given and no bundled model" in capsys.readouterr().err
