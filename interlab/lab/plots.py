"""Figures shared by notebooks and reports (matplotlib, no interactivity needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def class_name(classes: Sequence[str] | None, label: int) -> str:
    """`cat` rather than `class 3`; the number only when the set has no names, `?` unknown."""
    label = int(label)
    if label < 0:
        return "?"
    if classes and label < len(classes):
        return str(classes[label])
    return f"class {label}"


def show_image(
    ax: Any, image: torch.Tensor, title: str, frame: str | None = None, fontsize: int = 8
) -> None:
    """A uint8 (H, W, 3) image in a tile without ticks; `frame` colours its border (a match)."""
    ax.imshow(np.asarray(image.cpu()))
    ax.set_title(title, fontsize=fontsize)
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame or "#ccc")
        spine.set_linewidth(3 if frame else 0.5)


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


def plot_setting_bars(lines: list[dict[str, Any]], key: str, label: str) -> Figure:
    """One bar per sweep setting: mean of `key` over seeds, std as the error bar."""
    shown = [line for line in lines if f"{key}_mean" in line]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(shown) + 2), 3.4))
    means = [100 * line[f"{key}_mean"] for line in shown]
    errors = [100 * line[f"{key}_std"] for line in shown]
    ax.bar(range(len(shown)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(shown)), [line["setting"] for line in shown], rotation=30, ha="right")
    low = min(m - e for m, e in zip(means, errors, strict=True))
    ax.set_ylim(max(0, low - 5), max(m + e for m, e in zip(means, errors, strict=True)) + 2)
    ax.set(ylabel=f"{label} (%)", title=f"{label}: mean ± std over seeds")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_setting_curves(rows: list[dict[str, Any]], label: str) -> Figure:
    """Per-epoch curves, one colour per setting, one line per seed."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    colours = {}
    for row in rows:
        if not row["curve"]:
            continue
        colour = colours.setdefault(row["setting"], f"C{len(colours) % 10}")
        epochs = sorted(row["curve"], key=int)
        first = row is next(r for r in rows if r["setting"] == row["setting"] and r["curve"])
        ax.plot(
            [int(e) for e in epochs],
            [100 * row["curve"][e] for e in epochs],
            color=colour,
            alpha=0.8,
            marker=".",
            label=row["setting"] if first else None,
        )
    ax.set(xlabel="epoch", ylabel=f"{label} (%)", title=f"{label} per epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
