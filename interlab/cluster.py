"""k-means with two interchangeable backends, and cluster-quality scores against true labels.

`kmeans(features, k)` runs faiss (CPU, or GPU when faiss-gpu is importable) or a pure-torch
Lloyd's algorithm on the features' device. Both start from the same seeds: k-means++ up to
k = 1024 (random starts often put two seeds in one blob), random points above (k sequential
seeding steps would then cost more than the clustering). The torch path is the one measured on GPUs here;
both give the same clustering on well-separated data. Scores (`nmi`, `ari`, `purity`) are
scikit-learn's, over the points whose true label is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from torch import Tensor

BACKENDS = ("auto", "torch", "faiss")
KMEANS_PP_MAX_K = 1024  # k-means++ seeding up to this k, random seeding (as faiss) above
DISTANCE_CHUNK = 32768  # rows per (chunk, K) similarity block: bounds memory at ImageNet scale


@dataclass
class KMeansResult:
    labels: Tensor  # (N,) int64, on the features' device
    centroids: Tensor  # (K, D) float32, on the features' device
    backend: str


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def check_kmeans_inputs(features: Tensor, k: int) -> None:
    """Clear errors before any work: shape, k in range, finite values."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D); got shape {tuple(features.shape)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"number of clusters must be a positive integer; got {k!r}")
    if k > len(features):
        raise ValueError(f"asked for k={k} clusters but there are only {len(features)} points")
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise ValueError(f"features contain non-finite values ({bad} rows with NaN/inf)")


def kmeans(
    features: Tensor,
    k: int,
    iterations: int = 20,
    seed: int = 0,
    backend: str = "auto",
) -> KMeansResult:
    """Euclidean k-means of (N, D) features into `k` non-empty clusters.

    `backend="auto"` uses the torch implementation on CUDA tensors (faiss-gpu is not assumed)
    and faiss on CPU when it is installed, else torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; valid: {', '.join(BACKENDS)}")
    check_kmeans_inputs(features, k)
    if backend == "auto":
        use_faiss = features.device.type == "cpu" and faiss_available()
        backend = "faiss" if use_faiss else "torch"
    if backend == "faiss":
        return _faiss_kmeans(features, k, iterations, seed)
    return _torch_kmeans(features.float(), k, iterations, seed)


def _faiss_kmeans(features: Tensor, k: int, iterations: int, seed: int) -> KMeansResult:
    if not faiss_available():
        raise ValueError(
            "backend='faiss' asked for, but faiss is not installed (pip install faiss-cpu)"
        )
    import faiss

    data = np.ascontiguousarray(features.detach().float().cpu().numpy())
    n, d = data.shape
    use_gpu = features.device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
    # faiss silently subsamples to max_points_per_centroid * k points unless told otherwise.
    model = faiss.Kmeans(
        d,
        k,
        niter=iterations,
        seed=seed,
        gpu=use_gpu,
        max_points_per_centroid=math.ceil(n / k) + 1,
        min_points_per_centroid=1,
        verbose=False,
    )
    start = initial_centroids(features.float(), k, seed)
    model.train(data, init_centroids=np.ascontiguousarray(start.cpu().numpy()))
    _, assigned = model.index.search(data, 1)
    labels = torch.from_numpy(assigned[:, 0].astype(np.int64)).to(features.device)
    centroids = torch.from_numpy(model.centroids).to(features.device)
    return KMeansResult(labels, centroids, "faiss")


def nearest_centroid(features: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Index of, and squared distance to, each row's nearest centroid (chunked, no N x K copy)."""
    half_norms = 0.5 * (centroids * centroids).sum(dim=1)
    labels, distances = [], []
    for chunk in features.split(DISTANCE_CHUNK):
        # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2); |x|^2 is added back for the distance.
        scores = chunk @ centroids.T - half_norms
        best, index = scores.max(dim=1)
        labels.append(index)
        distances.append(((chunk * chunk).sum(dim=1) - 2 * best).clamp_min(0))
    return torch.cat(labels), torch.cat(distances)


def member_means(features: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster mean (K, D) and size (K,); empty clusters get a zero mean."""
    sums = torch.zeros(k, features.shape[1], device=features.device, dtype=features.dtype)
    sums.index_add_(0, labels, features)
    sizes = torch.bincount(labels, minlength=k)
    return sums / sizes.clamp_min(1).unsqueeze(1).to(features.dtype), sizes


def initial_centroids(features: Tensor, k: int, seed: int) -> Tensor:
    """Both backends start from the same seeds: k-means++ up to KMEANS_PP_MAX_K, else random.

    The random draws come from a CPU generator, so a seed picks the same starting points on
    every device (a CUDA generator's stream differs from the CPU's)."""
    generator = torch.Generator().manual_seed(seed)
    if k <= KMEANS_PP_MAX_K:
        return kmeans_plus_plus(features, k, generator)
    start = torch.randperm(len(features), generator=generator)[:k].to(features.device)
    return features[start].clone()


def _torch_kmeans(features: Tensor, k: int, iterations: int, seed: int) -> KMeansResult:
    centroids = initial_centroids(features, k, seed)
    labels, distances = nearest_centroid(features, centroids)
    for _ in range(iterations):
        means, sizes = member_means(features, labels, k)
        centroids = torch.where(sizes.unsqueeze(1) > 0, means, centroids)
        centroids = _reseed_empty(features, centroids, sizes, distances)
        labels, distances = nearest_centroid(features, centroids)
    centroids = _reseed_empty(features, centroids, torch.bincount(labels, minlength=k), distances)
    labels, _ = nearest_centroid(features, centroids)
    return KMeansResult(labels, centroids, "torch")


def kmeans_plus_plus(features: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2.

    Each draw inverts the cumulative weights at a uniform number taken up front from the CPU
    `generator`: the same choice on any device, and no host synchronisation per centre."""
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64).to(features.device)
    first = (uniforms[0] * len(features)).long().clamp_max(len(features) - 1)
    centroids = [features[first]]
    nearest = ((features - centroids[0]) ** 2).sum(dim=1)
    for step in range(1, k):
        weights = nearest.clamp_min(0).double()
        total = weights.sum()
        # every point already on a centre: draw uniformly instead
        weights = torch.where(total > 0, weights, torch.ones_like(weights))
        cumulative = weights.cumsum(0)
        target = uniforms[step] * cumulative[-1]
        chosen = torch.searchsorted(cumulative, target.unsqueeze(0), right=True)[0]
        chosen = chosen.clamp_max(len(features) - 1)
        centroids.append(features[chosen])
        nearest = torch.minimum(nearest, ((features - features[chosen]) ** 2).sum(dim=1))
    return torch.stack(centroids).clone()


def _reseed_empty(features: Tensor, centroids: Tensor, sizes: Tensor, distances: Tensor) -> Tensor:
    """Move each empty cluster's centroid onto one of the worst-fitted points (deterministic)."""
    empty = torch.nonzero(sizes == 0).flatten()
    if len(empty) == 0:
        return centroids
    worst = distances.topk(len(empty)).indices
    centroids = centroids.clone()
    centroids[empty] = features[worst]
    return centroids


# ---- cluster quality against ground truth ---------------------------------------------------


def _labelled_pairs(
    true_labels: Tensor | np.ndarray, cluster_labels: Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both labelings as numpy on the CPU, keeping only points whose true label is known (>= 0)."""
    truth = np.asarray(torch.as_tensor(true_labels).cpu(), dtype=np.int64)
    found = np.asarray(torch.as_tensor(cluster_labels).cpu(), dtype=np.int64)
    if truth.shape != found.shape or truth.ndim != 1:
        raise ValueError(
            f"label arrays must be 1-d and equal length; got {truth.shape}, {found.shape}"
        )
    known = truth >= 0
    if not known.any():
        raise ValueError("no point has a known true label")
    return truth[known], found[known]


def nmi(true_labels: Tensor | np.ndarray, cluster_labels: Tensor | np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default)."""
    truth, found = _labelled_pairs(true_labels, cluster_labels)
    return float(normalized_mutual_info_score(truth, found, average_method="arithmetic"))


def ari(true_labels: Tensor | np.ndarray, cluster_labels: Tensor | np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie)."""
    truth, found = _labelled_pairs(true_labels, cluster_labels)
    return float(adjusted_rand_score(truth, found))


def purity(true_labels: Tensor | np.ndarray, cluster_labels: Tensor | np.ndarray) -> float:
    """Share of points whose cluster's majority class is their own class."""
    table = contingency_matrix(*_labelled_pairs(true_labels, cluster_labels))
    return float(table.max(axis=0).sum() / table.sum())


def cluster_scores(
    true_labels: Tensor | np.ndarray, cluster_labels: Tensor | np.ndarray
) -> dict[str, float]:
    """NMI, ARI and purity in one dict (the keys logged per epoch)."""
    return {
        "nmi": nmi(true_labels, cluster_labels),
        "ari": ari(true_labels, cluster_labels),
        "purity": purity(true_labels, cluster_labels),
    }
