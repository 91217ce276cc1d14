"""Solutions of the exercises of lesson first_model (filled in by `solutions=True`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict_by_hand(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> Tensor:
    """Exercise 3.1: weighted kNN on cosine similarity, one class per test row."""
    train = F.normalize(train_features, dim=1)
    test = F.normalize(test_features, dim=1)
    similarity = test @ train.T  # (M, N) cosine similarities
    top_similarity, top_index = similarity.topk(k, dim=1)
    weights = torch.exp(top_similarity / temperature)  # closer neighbours weigh more
    votes = torch.zeros(len(test), num_classes)
    votes.scatter_add_(1, train_labels[top_index], weights)
    return votes.argmax(dim=1)


def momentum_update_by_hand(key_weight: Tensor, query_weight: Tensor, momentum: float) -> Tensor:
    """Exercise 3.2: the key encoder keeps m of itself and takes (1 - m) of the query encoder."""
    return momentum * key_weight + (1 - momentum) * query_weight


QUEUE_STEPS = 4096 // 256  # exercise 3.3: each step pushes one batch out of the queue
