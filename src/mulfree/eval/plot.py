"""A PNG of the accuracy table: one group of bars per task, one bar per run, ± one standard
error (the ± of the Markdown tables: the items' sample standard deviation / sqrt(n))."""

from __future__ import annotations

from pathlib import Path

from mulfree.errors import MulfreeError

METRIC = "acc"


def accuracy_png(runs: list[dict], path: str | Path, *, metric: str = METRIC) -> Path:
    """Draw `metric` (acc or acc_norm) of every task in `runs` (results dicts) into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mulfree._io import save_figure
    from mulfree.eval.harness import run_label

    tasks = list(dict.fromkeys(t for r in runs for t, m in r.get("tasks", {}).items()
                               if metric in m))  # fmt: skip
    if not tasks:
        raise MulfreeError(f"no task with {metric!r} in the results: nothing to plot")
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(tasks) * max(1, len(runs)) ** 0.5), 3.6))
    for j, run in enumerate(runs):
        xs, ys, es = [], [], []
        for i, t in enumerate(tasks):
            m = run.get("tasks", {}).get(t)
            if m and metric in m:
                se = m.get(metric + "_stderr")
                xs.append(i + (j - (len(runs) - 1) / 2) * width)
                ys.append(100 * m[metric])
                es.append(100 * se if se is not None and se == se else 0.0)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=run_label(run))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(f"{metric} (%) ± 1 s.e.")
    ax.set_ylim(0, 100)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    save_figure(fig, path)  # closes it
    return path
