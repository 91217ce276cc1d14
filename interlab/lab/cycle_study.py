"""What `05_cyclecontrast.ipynb` shows: pseudo-video clips, and one trained run's cycle.

The cycle of a query: its soft nearest neighbours among the cycle queue (entries of *other*
videos, shown as the images they came from, with their weights), then whether that soft
neighbour picks the query's own other frame out of the remaining queue (cycle-back rank 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from interlab.augment import to_float
from interlab.data import ImageSet
from interlab.lab.plots import show_image
from interlab.losses import soft_nearest_neighbour
from interlab.videos import PseudoVideoConfig, VideoIndex, frame_pairs, pseudo_videos


def plot_clips(images: torch.Tensor, config: PseudoVideoConfig, seed: int = 0) -> Figure:
    """One row per image: the T frames of its pseudo-video."""
    clips = pseudo_videos(images, config, torch.Generator().manual_seed(seed)).numpy()
    rows, frames = clips.shape[:2]
    fig, axes = plt.subplots(rows, frames, figsize=(1.3 * frames, 1.3 * rows), squeeze=False)
    for (row, frame), ax in np.ndenumerate(axes):
        ax.imshow(clips[row, frame])
        ax.set_axis_off()
        if row == 0:
            ax.set_title(f"frame {frame}", fontsize=8)
    fig.suptitle("pseudo-videos: a pan/zoom path with colour drift per image", fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class Cycle:
    """The cycle of some queries: top support neighbours (queue rows) and cycle-back ranks."""

    queries: torch.Tensor  # item indices
    neighbour_videos: torch.Tensor  # (Q, top) video (= image, for pseudo-videos) of each
    neighbour_weights: torch.Tensor  # (Q, top)
    back_rank: torch.Tensor  # (Q,) rank of the own other frame among the queue (1 = found)


@torch.no_grad()
def trace_cycles(
    method: Any, data: ImageSet, queries: torch.Tensor, top: int = 5, seed: int = 0
) -> Cycle:
    """Run the forward and backward step of a trained CycleContrast on fixed queries.

    Frames are unaugmented (the network's view at evaluation); the whole cycle queue is
    the support, entries of the query's own video excluded, as in training.
    """
    method.eval()
    generator = torch.Generator().manual_seed(seed)
    images = data.images[queries]
    if data.videos is None:
        frame_a, frame_b = frame_pairs(images, method.pseudo_video, generator)
    else:
        frame_a, frame_b = images, images  # real videos: the same frame stands in for b
    mean, std = method.augment.config.mean, method.augment.config.std
    _, y = method.embed(to_float(frame_a, mean, std))
    _, kc_b = method.key_embed(to_float(frame_b, mean, std))
    videos = queries if data.videos is None else data.videos[queries]
    own = method.cycle_videos.unsqueeze(0) == videos.unsqueeze(1)
    neighbour, weights = soft_nearest_neighbour(
        y, method.cycle_queue, method.options.temperature, own
    )
    best = weights.topk(top, dim=1)
    positive = (neighbour * kc_b).sum(dim=1, keepdim=True)
    others = (neighbour @ method.cycle_queue.T).masked_fill(own, float("-inf"))
    back_rank = 1 + (others > positive).sum(dim=1)
    return Cycle(queries, method.cycle_videos[best.indices], best.values, back_rank)


def plot_cycles(cycle: Cycle, data: ImageSet) -> Figure:
    """Each row: the query, then its top soft neighbours with weight and (if known) class."""
    rows, top = cycle.neighbour_videos.shape
    fig, axes = plt.subplots(rows, top + 1, figsize=(1.5 * (top + 1), 1.6 * rows), squeeze=False)
    first_frames = _first_frames(data)
    for row in range(rows):
        query = int(cycle.queries[row])  # a frame (or image) index
        title = f"query ({_class(data, query)})\ncycle-back rank {int(cycle.back_rank[row])}"
        show_image(axes[row, 0], data.images[query], title, fontsize=7)
        for col in range(top):
            video = int(cycle.neighbour_videos[row, col])
            ax = axes[row, col + 1]
            if video < 0:  # a queue slot never filled (random initial entry)
                ax.set_axis_off()
                continue
            image = int(first_frames[video])
            same = data.labels[query] >= 0 and bool(data.labels[image] == data.labels[query])
            weight = float(cycle.neighbour_weights[row, col])
            show_image(
                ax,
                data.images[image],
                f"w={weight:.3f}\n{_class(data, image)}",
                "green" if same else None,
                fontsize=7,
            )
    fig.suptitle("soft nearest neighbours among other videos (green: same class)", fontsize=10)
    fig.tight_layout()
    return fig


def _first_frames(data: ImageSet) -> torch.Tensor:
    """Video id -> the image that shows it (the image itself for pseudo-videos)."""
    if data.videos is None:
        return torch.arange(len(data))
    index = VideoIndex(data.videos)
    return index.order[index.starts]


def _class(data: ImageSet, image: int | torch.Tensor) -> str:
    value = int(data.labels[int(image)])
    return data.classes[value] if 0 <= value < len(data.classes) else "?"
