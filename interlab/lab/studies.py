"""What the study notebooks read from their sweep: finished runs, and figures by epoch.

The three InterCLR notebooks (`01_pseudo_labels`, `02_negative_sampling`,
`03_decision_boundary`) read a sweep folder if it holds finished runs and otherwise run the
small form of their grid first (`ensure_sweep`); `interlab.lab.probes` then looks inside one
trained run's memory bank.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from interlab.lab.experiment import check_training_run
from interlab.lab.grids import load_sweep
from interlab.lab.paths import grid_path, in_project
from interlab.lab.report import collect_runs, write_report
from interlab.lab.sweep import run_sweep


def ensure_sweep(grid: str, sweep_dir: str | Path, small: bool = True, workers: int = 1) -> Path:
    """Use the sweep folder's finished runs, or run the grid (small form by default) first.

    A relative `sweep_dir` is taken from the repository root, so JupyterLab (which starts
    kernels in notebooks/) and papermill runs find the same folder. Returns the absolute path.
    """
    sweep_dir = in_project(sweep_dir)
    try:
        done = [r for r in collect_runs(sweep_dir) if r["state"] == "done"]
    except ValueError:
        done = []
    if not done:
        sweep = load_sweep(grid_path(grid), small=small, check_run=check_training_run)
        run_sweep(sweep, sweep_dir, workers=workers)
    write_report(sweep_dir)
    return sweep_dir


def epoch_series(sweep_dir: str | Path, key: str) -> dict[str, dict[int, float]]:
    """Per setting, the mean over seeds of a per-epoch figure (e.g. nmi, knn_top1)."""
    import json

    series: dict[str, dict[int, list[float]]] = {}
    for row in collect_runs(sweep_dir):
        if row["state"] != "done":
            continue
        metrics = json.loads((Path(sweep_dir) / row["run"] / "metrics.json").read_text())
        for record in metrics.get("per_epoch", []):
            if key in record:
                series.setdefault(row["setting"], {}).setdefault(record["epoch"], []).append(
                    record[key]
                )
    return {s: {e: float(np.mean(v)) for e, v in sorted(by.items())} for s, by in series.items()}


def plot_epoch_series(
    sweep_dir: str | Path, keys: list[str], titles: list[str] | None = None
) -> Figure:
    """One panel per figure, one line per setting."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.4), squeeze=False)
    for ax, key, title in zip(axes[0], keys, titles or keys, strict=True):
        for setting, by_epoch in epoch_series(sweep_dir, key).items():
            ax.plot(list(by_epoch), list(by_epoch.values()), marker=".", label=setting)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
