"""Solutions of the exercises of lesson margins (filled in by `solutions=True`)."""

from __future__ import annotations

import torch


def cosine_margin(cosine, margin):
    """Exercise 6.1: the additive cosine margin, cos(theta) - m."""
    return cosine - margin


def arc_margin(cosine, margin):
    """Exercise 6.2: the angular margin, cos(theta + m) with theta = arccos(cosine)."""
    return torch.cos(torch.acos(cosine) + margin)


def positive_probability(positive, negatives, temperature, margin):
    """Exercise 6.3: softmax over [cos - m, negatives] / t, the positive's entry."""
    logits = torch.cat([(positive - margin).unsqueeze(1), negatives], dim=1) / temperature
    return logits.softmax(dim=1)[:, 0]
