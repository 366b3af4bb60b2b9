"""Two processes (torchrun, gloo, CPU) at the same global batch train like one process."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests._tolerances import TRAIN_LOSS, TRAIN_WEIGHT

from .helpers import cli_env, run_cli, write_corpus, write_tiny_llama

# 1 vs 2 processes: the 2-process gradient is the average of two half-batch means, the
# 1-process one the mean of the whole batch; same terms, different fp32 summation order (and
# different matmul blocking for batch 4 vs 8). Seen: |Δloss| ≤ 1e-6 and |Δweight| ≤ 7e-6 after
# 10 steps at lr 3e-3; the bounds leave ~10x headroom.
LOSS_RTOL, WEIGHT_ATOL = TRAIN_LOSS.rtol, TRAIN_WEIGHT.atol


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return write_corpus(root / "corpus"), write_tiny_llama(root / "llama")


def _args(inputs, out, *extra):
    corpus, model = inputs
    return [
        "train", "--data", str(corpus), "--model", str(model), "--out", str(out),
        "--vocab-size", "300", "--seq-len", "32", "--batch-size", "8", "--max-steps", "10",
        "--warmup-steps", "2", "--lr", "3e-3", "--checkpoint-every", "5", "--eval-every", "5",
        "--log-every", "1", "--no-progress", *extra,
    ]  # fmt: skip


def _torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mulfree.cli", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(1), timeout=300)


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def _assert_same_training(a, b, atol):
    ra, rb = _records(a), _records(b)
    assert [(r["step"], "loss" in r) for r in ra] == [(r["step"], "loss" in r) for r in rb]
    la = [r.get("loss", r.get("val_loss")) for r in ra]
    lb = [r.get("loss", r.get("val_loss")) for r in rb]
    assert lb == pytest.approx(la, rel=LOSS_RTOL)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    r = run_cli(*_args(inputs, out))
    assert r.returncode == 0, r.stderr
    return out


def test_two_process_ddp_matches_one_process(inputs, one_process, tmp_path):
    out = tmp_path / "ddp"
    r = _torchrun(*_args(inputs, out))
    assert r.returncode == 0, r.stderr
    assert "2 process(es) x 1 micro-step(s) of 4" in r.stdout
    assert r.stdout.count("model: ") == 1  # one summary, from rank 0
    assert sorted(p.name for p in (out / "checkpoints" / "step_00000010").iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "rng_rank0.safetensors",
        "rng_rank1.safetensors", "trainer_state.json",
    ]  # fmt: skip
    _assert_same_training(one_process, out, WEIGHT_ATOL)


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process_and_resumes_exactly(inputs, one_process, tmp_path):
    out = tmp_path / "fsdp"
    r = _torchrun(*_args(inputs, out, "--fsdp"))
    assert r.returncode == 0, r.stderr
    _assert_same_training(one_process, out, WEIGHT_ATOL)
    # Resume the sharded run from its step-5 checkpoint: it must end exactly where it did.
    again = tmp_path / "fsdp-resumed"
    shutil.copytree(out, again)
    shutil.rmtree(again / "checkpoints" / "step_00000010")
    shutil.rmtree(again / "model")
    r = _torchrun("train", "--out", str(again), "--resume", "--no-progress", "--fsdp")
    assert r.returncode == 0, r.stderr
    _assert_same_training(out, again, atol=0)


def test_energy_budget_stops_every_rank_at_one_step_then_resumes(inputs, one_process, tmp_path):
    """Under torchrun the budget decision is rank 0's, broadcast: both ranks stop after the same
    step (no rank left waiting in a collective), one checkpoint is written, every rank exits 0 (a
    non-zero status would make torchrun print a failure traceback), and --resume finishes the run
    where an unbroken one ends. The meter is the labelled TDP estimate (this machine may
    have no counter), with a budget so small that the first step already reaches it."""
    out = tmp_path / "budget"
    r = _torchrun(*_args(inputs, out, "--meter", "tdp", "--cpu-tdp", "100",
                         "--energy-budget", "1e-6"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("energy budget of 1e-06 Wh reached at step 1") == 1, r.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]
    assert not (out / "model").exists()
    r = _torchrun("train", "--out", str(out), "--resume", "--no-progress", "--energy-budget", "1e3")
    assert r.returncode == 0, r.stderr
    _assert_same_training(one_process, out, WEIGHT_ATOL)
