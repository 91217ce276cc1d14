"""Positive and negative sampling from a clustered memory bank, one vectorised call per batch.

Positives come from the query's own cluster; negatives never do. The negative strategies
are the ones InterCLR studies:

- `random`: uniform over every bank entry outside the query's cluster (with replacement);
- `hard`: the `count` most similar entries outside the cluster, most similar first;
- `semihard`: `count` drawn uniformly without replacement from the `pool` most similar
  entries outside the cluster (a large neighbourhood, not the nearest few);
- `semieasy`: the same from the `pool` least similar entries outside the cluster.

If one cluster covers nearly the whole bank (an untrained network, offline labels) a query
may have fewer entries outside its cluster than asked for; `hard` and the pools then fill
up with cluster-mates rather than fail mid-run (the false-negative rate shows it).

The original code takes its pool over the whole bank and then redraws same-cluster picks;
here the cluster is masked before the pool is taken, so the pool always holds `pool` valid
entries (at most one cluster's worth of entries differs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from interlab.memory import MemoryBank

NEGATIVE_STRATEGIES = ("random", "hard", "semihard", "semieasy")


def sample_positives(
    bank: MemoryBank,
    indices: Tensor,
    generator: torch.Generator | None = None,
    exclude_self: bool = False,
) -> Tensor:
    """One bank index per query, uniform over the query's cluster (by its current label).

    With `exclude_self` the query's own entry is never drawn (the original code may draw it);
    a query alone in its cluster then gets itself back.
    """
    cluster = bank.labels[indices]
    start = bank.starts[cluster]
    size = bank.starts[cluster + 1] - start
    draw = uniform((len(indices),), generator, indices.device)
    if not exclude_self:
        return bank.members[start + (draw * size).long().clamp_max(size - 1)]
    others = (size - 1).clamp_min(1)
    offset = (draw * others).long().clamp_max(others - 1)
    own = bank.position[indices] - start
    offset = torch.where((offset >= own) & (size > 1), offset + 1, offset)
    return bank.members[start + offset]


def sample_negatives(
    bank: MemoryBank,
    queries: Tensor,
    indices: Tensor,
    strategy: str,
    count: int,
    pool: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, count) bank indices of negatives for each query, none from the query's cluster.

    `queries` are the L2-normalised query embeddings (B, D); similarities to the whole bank
    decide the hard, semi-hard and semi-easy picks.
    """
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(
            f"unknown negative sampling {strategy!r}; valid: {', '.join(NEGATIVE_STRATEGIES)}"
        )
    check_counts(bank, count, pool, strategy)
    clusters = bank.labels[indices]
    if strategy == "random":
        return _uniform_outside_cluster(bank, clusters, count, generator)
    similarity = queries.detach().float() @ bank.features.T
    same_cluster = bank.labels.unsqueeze(0) == clusters.unsqueeze(1)
    if strategy == "semieasy":
        similarity = -similarity  # least similar first
    similarity = similarity.masked_fill(same_cluster, float("-inf"))
    if strategy == "hard":
        return similarity.topk(count, dim=1).indices
    candidates = similarity.topk(pool, dim=1)
    valid = torch.isfinite(candidates.values)
    return _draw_without_replacement(candidates.indices, valid, count, generator)


def check_counts(bank: MemoryBank, count: int, pool: int, strategy: str) -> None:
    """Counts must fit the bank: a clear error instead of a silent, short or repeated draw."""
    if count < 1:
        raise ValueError(f"num_negatives must be >= 1; got {count}")
    if count >= bank.size:
        raise ValueError(
            f"num_negatives={count} must be smaller than the bank ({bank.size} entries)"
        )
    if strategy in ("semihard", "semieasy"):
        if pool >= bank.size:
            raise ValueError(f"pool={pool} must be smaller than the bank ({bank.size} entries)")
        if count > pool:
            raise ValueError(f"num_negatives={count} exceeds the {strategy} pool={pool}")


def _uniform_outside_cluster(
    bank: MemoryBank, clusters: Tensor, count: int, generator: torch.Generator | None
) -> Tensor:
    """Uniform draws over the sorted bank with the query's cluster block cut out."""
    start = bank.starts[clusters].unsqueeze(1)
    size = (bank.starts[clusters + 1] - bank.starts[clusters]).unsqueeze(1)
    draw = uniform((len(clusters), count), generator, clusters.device)
    offset = (draw * (bank.size - size)).long().clamp_max(bank.size - size - 1)
    offset = torch.where(offset >= start, offset + size, offset)
    return bank.members[offset]


def uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """U[0, 1) in float64: float32's 2^-24 grid would favour some of 1.28M entries by ~8%."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _draw_without_replacement(
    candidates: Tensor, valid: Tensor, count: int, generator: torch.Generator | None
) -> Tensor:
    """`count` distinct valid columns of each row of `candidates`, uniformly (random keys, top-k).

    Invalid columns (same-cluster entries that filled a pool the cluster nearly covers) are
    only taken when a row has fewer than `count` valid ones.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = keys.masked_fill(~valid, -1.0)
    return candidates.gather(1, keys.topk(count, dim=1).indices)


def false_negative_share(labels: Tensor, indices: Tensor, negatives: Tensor) -> Tensor:
    """Share of (B, K) sampled negatives whose true class is their query's (known labels only).

    `labels` must live where the negatives were drawn (the bank's device): a step must not
    copy the training set's labels, so a table left behind on another device is named here.
    """
    for name, tensor in (("indices", indices), ("negatives", negatives)):
        if tensor.device != labels.device:
            raise ValueError(
                f"labels are on {labels.device} but the {name} on {tensor.device}; keep the "
                "true labels on the bank's device"
            )
    own, theirs = labels[indices].unsqueeze(1), labels[negatives]
    known = (own >= 0) & (theirs >= 0)
    return ((theirs == own) & known).sum() / known.sum().clamp_min(1)
