"""ClusterExplorer: the memory bank's pseudo-label clusters in 2-D, epoch by epoch.

A UMAP of the bank features of one saved snapshot, coloured by pseudo-label or by true
class, with NMI / ARI / purity; pick a cluster to see its member images, size, majority class
and purity; slide over the saved epochs. Each epoch's UMAP is cached beside the snapshots
and initialised from, then rotated onto (orthogonal Procrustes), the previous epoch's map,
so points move only as much as the features do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from interlab.cluster import cluster_scores
from interlab.lab.explore.display import redraw, show_with_static
from interlab.lab.plots import class_name, show_image
from interlab.snapshots import SNAPSHOT_DIR, list_snapshots, load_snapshot


def procrustes_onto(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Rotate / reflect and shift `moving` (N, 2) to best match `fixed` (least squares)."""
    moving_centre, fixed_centre = moving.mean(0), fixed.mean(0)
    u, _, vt = np.linalg.svd((moving - moving_centre).T @ (fixed - fixed_centre))
    return (moving - moving_centre) @ (u @ vt) + fixed_centre


def umap_2d(features: np.ndarray, init: np.ndarray | None, seed: int = 0) -> np.ndarray:
    import umap

    model = umap.UMAP(
        n_components=2, random_state=seed, init=init if init is not None else "spectral"
    )
    return model.fit_transform(features.astype(np.float32)).astype(np.float32)


class ClusterExplorer:
    """Explore a run's bank snapshots (`run_dir` holds `snapshots/epoch_NNNN.npz`)."""

    def __init__(
        self,
        run_dir: str | Path,
        images: torch.Tensor,
        labels: torch.Tensor,
        members_shown: int = 16,
        classes: Sequence[str] | None = None,
    ) -> None:
        """`classes` names the labels (an ImageSet's `classes`) in titles and messages."""
        import ipywidgets as widgets

        self.run_dir, self.images, self.labels = Path(run_dir), images, labels.cpu().numpy()
        self.members_shown = members_shown
        self.classes = list(classes) if classes is not None else None
        self.message = widgets.HTML()
        self.output = widgets.Output()
        try:
            self.epochs = list(list_snapshots(self.run_dir))
        except ValueError as error:  # a clear message in the widget, not a traceback
            self.epochs = []
            self.message.value = f"<span style='color:#b00'>{error}</span>"
            self.widget = widgets.VBox([self.message])
            return
        self.epoch = widgets.SelectionSlider(
            options=self.epochs, value=self.epochs[-1], description="epoch"
        )
        self.colour = widgets.ToggleButtons(
            options=["pseudo-label", "true class"], description="colour"
        )
        self.cluster = widgets.Dropdown(options=[], description="cluster")
        for control in (self.epoch, self.colour, self.cluster):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.epoch, self.colour, self.cluster]), self.message, self.output]
        )
        self.set_epoch_options()
        self.update()

    # ---- data -----------------------------------------------------------------------------
    def snapshot(self, epoch: int) -> dict[str, np.ndarray]:
        snapshot = load_snapshot(self.run_dir, epoch)
        if len(snapshot["labels"]) != len(self.images):
            raise ValueError(
                f"snapshot has {len(snapshot['labels'])} entries; got {len(self.images)} images"
            )
        return snapshot

    def embedding(self, epoch: int) -> np.ndarray:
        """The epoch's 2-D map, from the disk cache or fitted (aligned to the epoch before)."""
        cache = self.run_dir / SNAPSHOT_DIR / f"umap_epoch_{epoch:04d}.npy"
        if cache.exists():
            return np.load(cache)
        position = self.epochs.index(epoch)
        previous = self.embedding(self.epochs[position - 1]) if position > 0 else None
        for _ in tqdm([epoch], desc=f"UMAP of epoch {epoch}", leave=False):
            points = umap_2d(self.snapshot(epoch)["features"], previous)
        if previous is not None:
            points = procrustes_onto(points, previous)
        np.save(cache, points)
        return points

    def cluster_summary(self, labels: np.ndarray, cluster: int) -> dict[str, Any]:
        """Members, size, majority true class and purity of one pseudo-label cluster."""
        members = np.flatnonzero(labels == cluster)
        known = self.labels[members][self.labels[members] >= 0]
        majority = int(np.bincount(known).argmax()) if len(known) else -1
        purity = float((known == majority).mean()) if len(known) else float("nan")
        # A seeded random sample, not the first members: on a class-sorted data set those
        # would all show one class whatever the cluster's purity.
        rng = np.random.default_rng(cluster)
        shown = np.sort(rng.permutation(members)[: self.members_shown])
        return {
            "members": members,
            "shown": shown,
            "size": len(members),
            "majority": majority,
            "purity": purity,
        }

    # ---- view -------------------------------------------------------------------------------
    def set_epoch_options(self) -> None:
        labels = self.snapshot(self.epoch.value)["labels"]
        sizes = np.bincount(labels)
        options = [(f"{c} ({sizes[c]} images)", int(c)) for c in np.argsort(-sizes) if sizes[c] > 0]
        self.cluster.options = options
        self.cluster.value = options[0][1]

    def update(self) -> None:
        if getattr(self, "_updating", False):  # options changed inside an update: one redraw
            return
        self._updating = True
        try:
            self._update()
        finally:
            self._updating = False

    def _update(self) -> None:
        try:
            labels = self.snapshot(self.epoch.value)["labels"]
            if self.cluster.value not in set(labels.tolist()):
                self.set_epoch_options()
            scores = cluster_scores(self.labels, labels) if (self.labels >= 0).any() else {}
        except ValueError as error:
            self.message.value = f"<span style='color:#b00'>{error}</span>"
            return
        self.current = {
            "epoch": self.epoch.value,
            "labels": labels,
            **self.cluster_summary(labels, self.cluster.value),
        }
        scores_text = ", ".join(f"{k.upper()} {v:.3f}" for k, v in scores.items())
        self.message.value = (
            f"epoch {self.epoch.value}: {scores_text} | cluster {self.cluster.value}: "
            f"{self.current['size']} images, majority {class_name(self.classes, self.current['majority'])}, "
            f"purity {self.current['purity']:.2f}"
        )
        redraw(self.output, self.figure)

    def figure(self) -> Figure:
        points = self.embedding(self.current["epoch"])
        colours = self.current["labels"] if self.colour.value == "pseudo-label" else self.labels
        fig = plt.figure(figsize=(12, 4.6))
        scatter = fig.add_axes([0.03, 0.05, 0.42, 0.85])
        scatter.scatter(points[:, 0], points[:, 1], c=colours % 20, cmap="tab20", s=3, alpha=0.7)
        chosen = self.current["members"]
        scatter.scatter(
            points[chosen, 0],
            points[chosen, 1],
            facecolors="none",
            edgecolors="k",
            s=14,
            linewidths=0.6,
        )
        scatter.set(
            xticks=[],
            yticks=[],
            title=f"bank at epoch {self.current['epoch']}, coloured by {self.colour.value}",
        )
        side = int(np.ceil(np.sqrt(self.members_shown)))
        for k, index in enumerate(self.current["shown"]):
            ax = fig.add_axes([0.5 + (k % side) * 0.12, 0.72 - (k // side) * 0.22, 0.11, 0.19])
            show_image(ax, self.images[index], class_name(self.classes, self.labels[index]))
        return fig

    def show(self) -> None:
        show_with_static(self.widget, [self.figure] if self.epochs else [])
