"""Solutions of the exercises of lesson beyond (filled in by `solutions=True`)."""

from __future__ import annotations

import torch


def soft_neighbour(query, support, temperature):
    """Exercise 7.1: softmax(support . query / t) weights, their weighted mean, unit length."""
    weights = (support @ query / temperature).softmax(dim=0)
    neighbour = weights @ support
    return neighbour / neighbour.norm()


def cycle_back(neighbour, frames):
    """Exercise 7.2: the index of the frame most similar to the soft neighbour."""
    return int((frames @ neighbour).argmax())


def search_weights(local, feature_map):
    """Exercise 7.3: the cosine of the crop's feature with each position of the map."""
    positions = feature_map / feature_map.norm(dim=0, keepdim=True)
    return torch.einsum("c,chw->hw", local / local.norm(), positions)
