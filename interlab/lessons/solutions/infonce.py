"""Solutions of the exercises of lesson infonce (filled in by `solutions=True`)."""

from __future__ import annotations

import torch


def info_nce_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """2.1: mean over the rows of -log softmax(logits / t)[positive], positive in column 0."""
    scaled = logits / temperature
    log_probs = scaled - torch.logsumexp(scaled, dim=1, keepdim=True)
    return -log_probs[:, 0].mean()


def negative_weights(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """2.2: each negative's softmax probability (over the whole row) divided by t."""
    probs = torch.softmax(logits / temperature, dim=1)
    return probs[:, 1:] / temperature


def highest_half_temperature(cosine_row: torch.Tensor) -> float:
    """2.3: bisection on t for share(t) = 1/2, where share is the hardest negative's part of
    the negatives' softmax weight (it falls as t rises, from 1 towards 1/K)."""
    negatives = torch.as_tensor(cosine_row, dtype=torch.float64)[1:]

    def share(t: float) -> float:
        return float(torch.softmax(negatives / t, dim=0).max())

    low, high = 1e-3, 5.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if share(middle) > 0.5 else (low, middle)
    return low
