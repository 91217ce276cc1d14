"""Figures shared by notebooks and reports (matplotlib, no interactivity needed)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def plot_training_curves(
    metrics: list[dict[str, Any]], title: str = "", untrained_knn: float | None = None
) -> Figure:
    """Loss, learning rate and kNN top-1 per epoch from a run's metrics.jsonl records.

    `untrained_knn` draws the same network's accuracy before training as the line to beat.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    epochs = [m["epoch"] for m in metrics]
    axes[0].plot(epochs, [m["loss"] for m in metrics], marker=".")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    axes[1].plot(epochs, [m["lr"] for m in metrics], marker=".")
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="schedule (end of epoch)")
    evaluated = [m for m in metrics if "knn_top1" in m]
    axes[2].plot(
        [m["epoch"] for m in evaluated], [100 * m["knn_top1"] for m in evaluated], marker="o"
    )
    if untrained_knn is not None:
        axes[2].axhline(100 * untrained_knn, color="gray", linestyle="--", label="untrained")
        axes[2].legend()
    axes[2].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN accuracy (k=200)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
