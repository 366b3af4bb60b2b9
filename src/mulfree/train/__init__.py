"""Training: `train(TrainConfig(...))` is what `mulfree train` runs.

    from mulfree.train import TrainConfig, train
    res = train(TrainConfig(data=["corpus/"], out_dir="runs/a", model="mmfree-tiny", max_steps=500))
    res.model_dir  # AutoModelForCausalLM.from_pretrained(res.model_dir) loads it

Same from the shell: `mulfree train --data corpus/ --out runs/a --model mmfree-tiny
--max-steps 500`; continue a killed run with `mulfree train --out runs/a --resume`; on N
processes: `torchrun --no-python --nproc_per_node N mulfree train ...` (DDP; `--fsdp` shards).
"""

from mulfree.train.config import TrainConfig
from mulfree.train.loop import TrainResult, evaluate, lr_at, train
from mulfree.train.models import available_models

__all__ = ["TrainConfig", "TrainResult", "available_models", "evaluate", "lr_at", "train"]
