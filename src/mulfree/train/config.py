"""The training configuration: one typed dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mulfree.errors import MulfreeError

# Fields that may differ between a checkpoint and the run that resumes it without changing what
# is computed: logging, scheduling of side outputs, and how a global batch is cut into
# micro-batches (the data stream and the loss average are defined on the global batch).
# The corpus paths and tokenizer may be spelled differently (a moved folder): what they
# produce is checked instead, by the data fingerprint and the tokenizer saved in the run.
# Everything else must match, or the resumed run would not continue the same training.
RESUME_MAY_CHANGE = frozenset(
    {
        "data",
        "out_dir",
        "tokenizer",
        "resume",
        "progress",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_sequences",
        "micro_batch_size",
        "device",
        "fsdp",
        "num_threads",
        # Energy and scheduling change when and whether steps run, never what a step computes.
        "energy_budget_wh",
        "carbon_budget_g",
        "power_cap_w",
        "grid_intensity",
        "carbon_forecast",
        "deadline",
        "exit_between_windows",
        "meter",
        "cpu_tdp_w",
        "powercap_root",
    }
)


@dataclass
class TrainConfig:
    """Everything `train()` needs. Batch sizes count sequences of `seq_len` tokens.

    `batch_size` is the global batch per optimizer step, whatever the number of processes;
    each process runs `batch_size / (micro_batch_size * world_size)` accumulation micro-steps.
    """

    data: list[str]  # text files, folders, .jsonl files
    out_dir: str
    model: str  # a preset name (see `mulfree.train.models.available_models()`) or a config path
    text_field: str = "text"  # the JSONL field holding a document
    tokenizer: str | None = None  # a tokenizer.json (or folder holding one); None: train a BPE
    vocab_size: int = 4096  # size of the BPE trained when no tokenizer is given
    eos_token: str | None = None  # end-of-text token name; None: the usual names are tried
    seq_len: int = 256
    batch_size: int = 16
    micro_batch_size: int | None = None  # None: the whole per-process share at once
    max_steps: int = 1000
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    # The MatMul-free recipe halves the learning rate at the midpoint of training.
    # None: on for MatMul-free (`hgrn_bit`) models, off otherwise.
    lr_halve_at_midpoint: bool | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    bf16: bool = False  # bf16 autocast for forward/backward; weights and optimizer stay fp32
    seed: int = 0
    val_fraction: float = 0.05
    eval_every: int = 200  # steps; 0: only at the end
    eval_sequences: int = 256  # held-out sequences per evaluation (the first ones); 0: all
    checkpoint_every: int = 200  # steps; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    log_every: int = 10
    resume: bool = False
    fsdp: bool = False  # shard parameters with FSDP2 instead of replicating them with DDP
    device: str = "auto"  # "cpu", "cuda", or "auto" (cuda when available)
    num_threads: int | None = None  # torch intra-op threads; None: torch's default
    progress: bool = True
    # --- energy (mulfree.train.energy): budgets over the whole run, across --resume ---
    energy_budget_wh: float | None = None  # stop (with a checkpoint) before exceeding it
    carbon_budget_g: float | None = None  # same, in gCO2e; needs grid_intensity or a forecast
    power_cap_w: float | None = None  # keep the mean measured power under it (duty cycling)
    grid_intensity: str | None = None  # gCO2e/kWh, a country code, or a series file
    carbon_forecast: str | None = None  # run only in its lowest-intensity windows
    deadline: str | None = None  # ISO 8601: the forecast windows must end by then
    exit_between_windows: bool = False  # return at a window's end instead of sleeping
    meter: str = "auto"  # auto | rapl | nvml | tdp (mulfree.energy.meter)
    cpu_tdp_w: float | None = None  # for the tdp estimate when the CPU is not in the table
    powercap_root: str = "/sys/class/powercap"
    extra: dict[str, Any] = field(default_factory=dict)  # model config overrides

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(p) for p in self.data]
        self.betas = tuple(float(b) for b in self.betas)
        if not self.data:
            raise MulfreeError("no corpus given: pass at least one file or folder with --data")
        if not self.out_dir:
            raise MulfreeError("an output folder is required (--out)")
        if not self.model:
            raise MulfreeError("a model is required (--model)")
        if not self.text_field:
            raise MulfreeError("--text-field must not be empty")

        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if (
                not isinstance(v, int)
                or isinstance(v, bool)
                or v < 0
                or (v == 0 and not allow_zero)
            ):
                kind = "a non-negative" if allow_zero else "a positive"
                raise MulfreeError(f"{name} must be {kind} integer, got {v!r}")

        for name in ("seq_len", "batch_size", "max_steps", "log_every", "keep_checkpoints"):
            positive(name)
        for name in ("warmup_steps", "eval_every", "eval_sequences", "checkpoint_every", "seed"):
            positive(name, allow_zero=True)
        if self.micro_batch_size is not None:
            positive("micro_batch_size")
            if self.batch_size % self.micro_batch_size:
                raise MulfreeError(
                    f"batch_size {self.batch_size} is not a multiple of "
                    f"micro_batch_size {self.micro_batch_size}"
                )
        if self.num_threads is not None:
            positive("num_threads")
        if self.seq_len < 2:
            raise MulfreeError("seq_len must be at least 2 (one input and one target)")
        if self.vocab_size < 257:
            raise MulfreeError("vocab_size must be at least 257 (256 bytes + end-of-text)")
        for name in ("lr", "adam_eps"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise MulfreeError(f"{name} must be a positive number, got {v!r}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise MulfreeError(f"{name} must be a non-negative number, got {v!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise MulfreeError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise MulfreeError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.val_fraction < 1:
            raise MulfreeError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.warmup_steps > self.max_steps:
            raise MulfreeError(
                f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise MulfreeError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("energy_budget_wh", "carbon_budget_g", "power_cap_w", "cpu_tdp_w"):
            v = getattr(self, name)
            if v is not None and not (
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            ):
                raise MulfreeError(f"{name} must be a positive number, got {v!r}")
        if self.deadline is not None and not self.carbon_forecast:
            raise MulfreeError("--deadline needs --carbon-forecast")
        if self.exit_between_windows and not self.carbon_forecast:
            raise MulfreeError("--exit-between-windows needs --carbon-forecast")
        if not isinstance(self.extra, dict):
            raise MulfreeError("extra (model config overrides) must be a mapping")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MulfreeError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**d)

    def recipe_differences(self, other: TrainConfig) -> list[str]:
        """Fields (outside RESUME_MAY_CHANGE) whose values differ between two configs."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]]
