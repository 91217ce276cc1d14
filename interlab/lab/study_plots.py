"""A study's per-epoch curves, drawn from its records: one panel per figure, one line per arm
(the mean over seeds), so a flat kNN can be told apart from labels that never meant much."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed
import matplotlib.pyplot as plt
import numpy as np

from interlab.lab.study_report import current_records

CURVES = ("knn_top1", "purity", "nmi", "label_change_ratio", "pn_gap")


def mean_curves(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs where every seed of the arm logged `key`, and the mean over seeds there."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        for record in row["per_epoch"]:
            if record.get(key) is not None:
                by_epoch[record["epoch"]].append(float(record[key]))
    epochs = sorted(e for e, values in by_epoch.items() if len(values) == len(rows))
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def plot_study_curves(
    records: list[dict[str, Any]], path: Path, keys: tuple[str, ...] = CURVES
) -> Path | None:
    """Write the curves to `path` (PNG); None when no record holds any of `keys`."""
    arms = current_records(records)
    shown = [k for k in keys if any(mean_curves(rows, k)[0] for rows in arms.values())]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
    for ax, key in zip(axes[0], shown, strict=True):
        for arm, rows in arms.items():
            epochs, values = mean_curves(rows, key)
            if epochs:
                ax.plot(epochs, values, marker=".", label=f"{arm} (n={len(rows)})")
        ax.set(xlabel="epoch", title=key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
