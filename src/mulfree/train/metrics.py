"""Training metrics: one JSON object per line, and a PNG plot of the loss curves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL file of records, each with a `step` (optimizer steps completed).

    When TensorBoard is installed (`pip install tensorboard`), every numeric field of a record
    also goes to TensorBoard event files in `tensorboard/` beside the JSONL file
    (`tensorboard --logdir RUN/tensorboard`); the JSONL file stays the record of the run."""

    def __init__(self, path: str | Path, *, tensorboard: bool = True):
        self.path = Path(path)
        self._tb = None if tensorboard else False  # None: not opened yet; False: off

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a killed run may have logged steps its checkpoint lacks,
        and the resumed run will log them again."""
        if not self.path.is_file():
            return
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self._to_tensorboard(record)

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: the JSONL file only
                self._tb = False
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        if self._tb is False or "step" not in record:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._tb.add_scalar(key, value, record["step"])
        self._tb.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write carries nothing worth keeping
        return out


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Plot train loss (and held-out loss) against tokens seen; returns the PNG path."""
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; the file is the output
    import matplotlib.pyplot as plt

    # Records with measured energy get a second panel: the same loss against Wh spent.
    by_wh = [(r["energy_wh"], r["loss"]) for r in records if "loss" in r and "energy_wh" in r]
    if by_wh:
        fig, (ax, ax_wh) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
        ax_wh.plot(*zip(*by_wh, strict=True), lw=1.2, color="tab:green")
        meter = next(r.get("meter", "") for r in records if "energy_wh" in r)
        ax_wh.set_xlabel(f"energy spent (Wh, {meter})")
        ax_wh.set_ylabel("train cross-entropy (nats/token)")
        ax_wh.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="held-out", lw=1.5, ms=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
