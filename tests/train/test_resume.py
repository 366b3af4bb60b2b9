"""A run killed with SIGKILL after a checkpoint and resumed ends bit-identical to an unbroken run."""

import json
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from .helpers import cli_env, run_cli, write_corpus, write_tiny_llama

STEPS = 40


def _args(corpus, model, out):
    return [
        "train", "--data", str(corpus), "--model", str(model), "--out", str(out),
        "--vocab-size", "300", "--seq-len", "32", "--batch-size", "8", "--micro-batch-size", "4",
        "--max-steps", str(STEPS), "--warmup-steps", "4", "--checkpoint-every", "5",
        "--eval-every", "20", "--eval-sequences", "8", "--log-every", "3", "--no-progress",
    ]  # fmt: skip


def _train_losses(out):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    model = write_tiny_llama(tmp_path / "llama")
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    r = run_cli(*_args(corpus, model, ref))
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "mulfree.cli", *_args(corpus, model, killed)],
        env=cli_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    first = killed / "checkpoints" / "step_00000010" / "trainer_state.json"
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {err}"
    assert not (killed / "model").exists()
    steps_done = max(int(p.name[5:]) for p in (killed / "checkpoints").glob("step_*"))
    assert 10 <= steps_done < STEPS

    # Resume with no settings but --out: the rest comes from the checkpoint.
    r = run_cli("train", "--out", str(killed), "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr

    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    last = f"step_{STEPS:08d}"
    oa = load_file(str(ref / "checkpoints" / last / "optimizer.safetensors"))
    ob = load_file(str(killed / "checkpoints" / last / "optimizer.safetensors"))
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=0, atol=0, msg=k)
    # The log holds every step once, with the unbroken run's exact losses.
    assert _train_losses(killed) == _train_losses(ref)
    assert not list((killed / "checkpoints").glob(".tmp-*"))
