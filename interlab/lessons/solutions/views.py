"""Solutions of the exercises of lesson views (filled in by `solutions=True`)."""

from __future__ import annotations

from typing import Any

import torch

from interlab.augment import AugmentConfig


def crop_fraction(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1.1: a box (top, left, box height, box width) keeps box area / image area."""
    return boxes[:, 2].double() * boxes[:, 3].double() / (height * width)


# 1.2: crops of at least 90% of the image and nothing else: the two views are nearly equal.
weak_config = AugmentConfig(scale=(0.9, 1.0), jitter_p=0.0, gray_p=0.0, flip_p=0.0)


def best_min_crop_area(curve: dict[str, Any]) -> float:
    """1.3: the crop sweep's run (colour recipe on) with the highest kNN top-1."""
    crop_sweep = [run for run in curve["runs"] if run["colour"]]
    return max(crop_sweep, key=lambda run: run["knn_top1"])["min_crop_area"]
