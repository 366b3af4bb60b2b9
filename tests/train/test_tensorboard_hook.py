"""Training metrics also go to TensorBoard when it is installed (the JSONL file stays)."""

from __future__ import annotations

import pytest

from mulfree.train.metrics import MetricsLog


def test_metrics_reach_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step, loss in ((10, 3.5), (20, 2.25)):
        log.append({"step": step, "loss": loss, "lr": 1e-3, "kind": "train", "bf16": False})
    assert [r["loss"] for r in log.read()] == [3.5, 2.25]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr"}  # numbers only, not text or flags
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(10, 3.5), (20, 2.25)]


def test_tensorboard_off_writes_only_the_jsonl(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=False)
    log.append({"step": 1, "loss": 1.0})
    assert not (tmp_path / "tensorboard").exists() and log.read() == [{"step": 1, "loss": 1.0}]
