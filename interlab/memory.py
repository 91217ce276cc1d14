"""A memory bank of one feature per training image, with k-means pseudo-labels kept fresh.

InterCLR reads positives and negatives from this bank. It holds L2-normalised features,
their cluster labels and the cluster centroids, all on the training device, plus a
per-cluster index (image indices sorted by label, with each cluster's start offset) so a
positive can be drawn for the whole batch with one gather.

Label maintenance follows the original InterCLR code:

- online: each step the batch's updated features are re-assigned to the nearest centroid
  (dot product with the unnormalised centroid, as the original); `fix_small_clusters` then
  dissolves clusters below `min_cluster` and refills each emptied slot by splitting the
  largest cluster in two, so K is fixed; `refresh_centroids` recomputes every centroid.
- offline: features change every step but labels only when the whole bank is re-clustered.

Every rank of a distributed run applies the same gathered updates in the same order, so the
banks stay identical without broadcasting the bank each step (the original's bottleneck).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed import broadcast

from interlab.cluster import member_means
from interlab.distributed import is_distributed

SPLIT_ITERATIONS = 20


class MemoryBank(nn.Module):
    """Features (N, D), labels (N,), centroids (K, D) and the sorted-label index, as buffers."""

    def __init__(self, size: int, dim: int, num_clusters: int, momentum: float = 1.0) -> None:
        super().__init__()
        if num_clusters < 1 or num_clusters > size:
            raise ValueError(
                f"num_clusters must be in [1, {size}] (the bank size); got {num_clusters}"
            )
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"bank momentum must be in (0, 1]; got {momentum}")
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        # Derived from `labels` (rebuilt after loading): members sorted by cluster.
        self.register_buffer("members", torch.arange(size), persistent=False)
        self.register_buffer(
            "starts", torch.zeros(num_clusters + 1, dtype=torch.long), persistent=False
        )
        self.register_buffer("position", torch.arange(size), persistent=False)

    @property
    def size(self) -> int:
        return len(self.features)

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    def cluster_sizes(self) -> Tensor:
        return self.starts[1:] - self.starts[:-1]

    # ---- set-up --------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, features: Tensor, labels: Tensor) -> None:
        """Fill the bank from a full clustering; centroids are the member means (not normalised)."""
        if features.shape != self.features.shape:
            raise ValueError(
                f"expected features {tuple(self.features.shape)}; got {tuple(features.shape)}"
            )
        self.features.copy_(F.normalize(features.float(), dim=1))
        self.assign_all(labels)
        self.refresh_centroids()
        self.ready.fill_(True)

    @torch.no_grad()
    def assign_all(self, labels: Tensor) -> None:
        """Replace every label (an offline re-clustering); features are kept."""
        if labels.shape != self.labels.shape:
            raise ValueError(f"expected {self.size} labels; got shape {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= self.num_clusters:
            raise ValueError(
                f"labels must lie in [0, {self.num_clusters}); got {int(labels.min())}..{int(labels.max())}"
            )
        self.labels.copy_(labels)
        self.rebuild_index()

    @torch.no_grad()
    def rebuild_index(self) -> None:
        """Sort image indices by label: cluster c's members are members[starts[c]:starts[c+1]]."""
        self.members.copy_(torch.argsort(self.labels, stable=True))
        self.position[self.members] = torch.arange(self.size, device=self.labels.device)
        sizes = torch.bincount(self.labels, minlength=self.num_clusters)
        self.starts[1:] = torch.cumsum(sizes, dim=0)
        self.starts[0] = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.rebuild_index()

    # ---- per-step updates -------------------------------------------------------------------
    @torch.no_grad()
    def update(self, indices: Tensor, keys: Tensor, relabel: bool) -> Tensor:
        """Write this step's key features; with `relabel` re-assign them to the nearest centroid.

        Returns the fraction of the batch whose label changed (0 when not relabelling).
        """
        keys = F.normalize(keys.float(), dim=1)
        if self.momentum < 1.0:
            keys = F.normalize(
                (1 - self.momentum) * self.features[indices] + self.momentum * keys, dim=1
            )
        self.features[indices] = keys
        if not relabel:
            return torch.zeros((), device=keys.device)
        new_labels = (keys @ self.centroids.T).argmax(dim=1)
        changed = (new_labels != self.labels[indices]).float().mean()
        self.labels[indices] = new_labels
        self.rebuild_index()
        return changed

    @torch.no_grad()
    def refresh_centroids(self) -> None:
        """Every centroid becomes the mean of its members; an empty cluster keeps its old one."""
        means, sizes = member_means(self.features, self.labels, self.num_clusters)
        self.centroids.copy_(torch.where(sizes.unsqueeze(1) > 0, means, self.centroids))

    @torch.no_grad()
    def fix_small_clusters(self, min_cluster: int) -> int:
        """Dissolve clusters under `min_cluster` members; refill each by splitting the largest.

        Members of small clusters move to their nearest remaining centroid (one masked
        argmax). Each emptied cluster then takes half of the currently largest cluster; this
        loop is over emptied clusters (usually none), never over images. Returns how many
        clusters were refilled.
        """
        sizes = torch.bincount(self.labels, minlength=self.num_clusters)
        small = sizes < min_cluster
        if not bool(small.any()):
            return 0
        moving = small[self.labels]
        scores = self.features[moving] @ self.centroids.T
        scores[:, small] = float("-inf")
        self.labels[moving] = scores.argmax(dim=1)
        for empty in torch.nonzero(small).flatten().tolist():
            self._split_largest_into(empty, min_cluster)
        self.rebuild_index()
        return int(small.sum())

    @torch.no_grad()
    def agree_across_ranks(self) -> None:
        """Give every rank rank 0's centroids and labels (called after each centroid refresh).

        Means on CUDA are summed with atomics (`index_add_`), so two ranks can differ in the
        last bits and later break a near-tie differently. Everything else in the maintenance
        is deterministic given equal inputs, so one broadcast per refresh keeps ranks equal.
        """
        if not is_distributed():
            return
        broadcast(self.centroids, src=0)
        broadcast(self.labels, src=0)
        self.rebuild_index()

    def _split_largest_into(self, empty: int, min_cluster: int) -> None:
        sizes = torch.bincount(self.labels, minlength=self.num_clusters)
        largest = int(sizes.argmax())
        members = torch.nonzero(self.labels == largest).flatten()
        second_half = split_in_two(self.features[members], min_cluster)
        self.labels[members[second_half]] = empty
        for cluster, rows in ((largest, members[~second_half]), (empty, members[second_half])):
            self.centroids[cluster] = self.features[rows].mean(dim=0)


def split_in_two(features: Tensor, min_side: int) -> Tensor:
    """Boolean mask of the second half of a 2-means split of (M, D) features.

    Deterministic (seeded by the two points farthest apart along the first principal
    direction) so every rank splits alike. If 2-means leaves a side under `min_side`, the
    members are cut at the median of that direction instead, which keeps both halves large.
    """
    centred = features - features.mean(dim=0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    projection = centred @ direction
    centres = features[torch.stack([projection.argmin(), projection.argmax()])]
    second = projection > 0
    for _ in range(SPLIT_ITERATIONS):
        second = ((features - centres[1]) ** 2).sum(1) < ((features - centres[0]) ** 2).sum(1)
        if second.all() or not second.any():
            break
        centres = torch.stack([features[~second].mean(0), features[second].mean(0)])
    smaller = int(min(second.sum(), (~second).sum()))
    if smaller < min(min_side, len(features) // 2):
        order = projection.argsort()
        second = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        second[order[len(features) // 2 :]] = True
    return second
