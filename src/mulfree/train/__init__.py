"""Training: `train(TrainConfig(...))` is what `mulfree train` runs.

    from mulfree.train import TrainConfig, train
    res = train(TrainConfig(data=["corpus/"], out_dir="runs/a", model="mmfree-tiny", max_steps=500))
    res.model_dir  # AutoModelForCausalLM.from_pretrained(res.model_dir) loads it

Same from the shell: `mulfree train --data corpus/ --out runs/a --model mmfree-tiny
--max-steps 500`; continue a killed run with `mulfree train --out runs/a --resume`; on N
processes: `torchrun --no-python --nproc_per_node N mulfree train ...` (DDP; `--fsdp` shards).
"""

from mulfree._lazy import attach

_NAMES = {
    "TrainConfig": "mulfree.train.config",
    "TrainResult": "mulfree.train.loop",
    "evaluate": "mulfree.train.loop",
    "lr_at": "mulfree.train.loop",
    "train": "mulfree.train.loop",
    "available_models": "mulfree.train.models",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = ["TrainConfig", "TrainResult", "available_models", "evaluate", "lr_at", "train"]
