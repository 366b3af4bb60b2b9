import math

import pytest

from mulfree.errors import MulfreeError
from mulfree.train import TrainConfig, lr_at

BASE = dict(data=["corpus"], out_dir="out", model="m")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_steps": -3}, "max_steps must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"grad_clip": -1.0}, "grad_clip must be a non-negative number"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"warmup_steps": 20, "max_steps": 10}, "warmup_steps .20. exceeds max_steps .10."),
        ({"batch_size": 8, "micro_batch_size": 3}, "not a multiple of micro_batch_size 3"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio must be in"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
        ({"vocab_size": 100}, "vocab_size must be at least 257"),
        ({"data": []}, "no corpus given"),
        ({"model": ""}, "a model is required"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_invalid_config_is_rejected(override, message):
    with pytest.raises(MulfreeError, match=message):
        TrainConfig(**{**BASE, **override})


def test_config_dict_round_trip_and_recipe_differences():
    c = TrainConfig(**BASE, betas=(0.8, 0.9), extra={"hidden_size": 64})
    d = c.to_dict()
    assert TrainConfig.from_dict(d) == c
    other = TrainConfig(**{**BASE, "lr": 1e-4, "log_every": 3, "micro_batch_size": 4})
    assert c.recipe_differences(other) == ["lr", "betas", "extra"]
    with pytest.raises(MulfreeError, match="unknown training config field"):
        TrainConfig.from_dict({**d, "bogus": 1})


def test_lr_schedule_warmup_cosine_and_midpoint_halving():
    c = TrainConfig(**BASE, lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    plain = [lr_at(s, c, False) for s in range(110)]
    halved = [lr_at(s, c, True) for s in range(110)]
    assert plain[0] == pytest.approx(0.1) and plain[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(plain[9:], plain[10:], strict=False))  # cosine decays
    assert plain[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert plain[-1] > 0.1 and lr_at(110, c, False) == pytest.approx(0.1)
    assert halved[:55] == plain[:55]
    assert halved[55:] == [x * 0.5 for x in plain[55:]]  # halved from the midpoint on
