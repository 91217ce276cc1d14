"""Solutions of the exercises of lesson clusters (filled in by `solutions=True`)."""

from __future__ import annotations

import numpy as np


def purity_by_hand(true_labels, cluster_labels) -> float:
    """Exercise 4.1: each cluster counts its most common true class; divide by all images."""
    true_labels, cluster_labels = np.asarray(true_labels), np.asarray(cluster_labels)
    majority_members = 0
    for cluster in np.unique(cluster_labels):
        members = true_labels[cluster_labels == cluster]
        majority_members += np.bincount(members).max()
    return majority_members / len(true_labels)


def label_change_ratio_by_hand(before, after) -> float:
    """Exercise 4.2: the share of images whose pseudo-label is not what it was."""
    return float((np.asarray(before) != np.asarray(after)).mean())


def false_negative_share_by_hand(true_labels, pseudo_labels, queries, negatives) -> float:
    """Exercise 4.3: negatives of the query's true class, over all sampled negatives."""
    own = true_labels[queries].unsqueeze(1)  # (B, 1): each query's true class
    same_class = true_labels[negatives] == own  # (B, K); pseudo-labels never match here
    return float(same_class.float().mean())
