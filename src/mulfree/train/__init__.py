"""Training: `train(TrainConfig(...))` is what `mulfree train` runs."""

from mulfree.train.config import TrainConfig
from mulfree.train.loop import TrainResult, evaluate, lr_at, train
from mulfree.train.models import available_models

__all__ = ["TrainConfig", "TrainResult", "available_models", "evaluate", "lr_at", "train"]
