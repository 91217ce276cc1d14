"""k-means backends against scikit-learn and each other; cluster scores against scikit-learn.

Only the tests that need faiss skip without it: the torch k-means and the scores always run.
"""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from interlab import cluster
from interlab.cluster import ari, cluster_scores, faiss_available, kmeans, nmi, purity

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


@pytest.fixture(scope="module")
def blobs():
    points, truth = make_blobs(
        n_samples=1500, centers=8, n_features=16, cluster_std=0.6, random_state=3
    )
    return torch.from_numpy(points).float(), truth


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_backends_recover_separated_blobs_like_sklearn(blobs, backend):
    points, truth = blobs
    result = kmeans(points, 8, iterations=30, seed=0, backend=backend)
    reference = KMeans(n_clusters=8, n_init=10, random_state=0).fit_predict(points.numpy())
    assert result.backend == backend
    assert result.labels.shape == (1500,) and result.centroids.shape == (8, 16)
    assert nmi(truth, result.labels) > 0.95
    assert normalized_mutual_info_score(reference, result.labels.numpy()) > 0.95
    assert torch.bincount(result.labels, minlength=8).min() > 0


@needs_faiss
def test_torch_and_faiss_agree(blobs):
    points, _ = blobs
    by_torch = kmeans(points, 8, seed=1, backend="torch").labels
    by_faiss = kmeans(points, 8, seed=1, backend="faiss").labels
    assert normalized_mutual_info_score(by_torch.numpy(), by_faiss.numpy()) > 0.95


def test_torch_labels_are_the_nearest_centroids(blobs):
    points, _ = blobs
    result = kmeans(points, 8, seed=2, backend="torch")
    expected = torch.cdist(points, result.centroids).argmin(dim=1)
    assert torch.equal(result.labels, expected)


def test_torch_kmeans_never_leaves_a_cluster_empty():
    # 40 points on 5 spots, asked for 12 clusters: random starts collide, empties get reseeded.
    spots = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 10
    points = spots.repeat_interleave(8, dim=0) + 0.01 * torch.randn(40, 4)
    result = kmeans(points, 12, seed=0, backend="torch")
    assert torch.bincount(result.labels, minlength=12).min() >= 1


@needs_faiss
def test_faiss_uses_every_point(monkeypatch, blobs):
    """faiss subsamples to max_points_per_centroid * k unless told otherwise."""
    import faiss

    seen = {}
    original = faiss.Kmeans

    def spy(d, k, **kwargs):
        seen.update(kwargs, k=k)
        return original(d, k, **kwargs)

    monkeypatch.setattr(faiss, "Kmeans", spy)
    points, _ = blobs
    kmeans(points, 4, backend="faiss")
    assert seen["max_points_per_centroid"] * seen["k"] >= len(points)


@needs_faiss
def test_auto_backend_prefers_faiss_on_cpu(blobs):
    assert kmeans(blobs[0], 8, backend="auto").backend == "faiss"


def test_without_faiss_auto_falls_back_to_torch_and_faiss_is_refused(monkeypatch, blobs):
    monkeypatch.setattr(cluster, "faiss_available", lambda: False)
    points, _ = blobs
    result = kmeans(points, 8, seed=2, backend="auto")
    assert result.backend == "torch"
    assert torch.equal(result.labels, kmeans(points, 8, seed=2, backend="torch").labels)
    with pytest.raises(ValueError, match="faiss is not installed"):
        kmeans(points, 8, backend="faiss")


def test_bad_inputs_are_named():
    points = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k=11 clusters but there are only 10 points"):
        kmeans(points, 11)
    points[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite values \\(1 rows"):
        kmeans(points, 2)
    with pytest.raises(ValueError, match="unknown k-means backend 'sk'"):
        kmeans(torch.randn(10, 3), 2, backend="sk")
    with pytest.raises(ValueError, match="features must be \\(N, D\\)"):
        kmeans(torch.randn(10), 2)


def test_scores_match_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = rng.integers(0, 10, 500)
        found = np.where(rng.random(500) < 0.6, truth, rng.integers(0, 30, 500))
        assert nmi(truth, found) == pytest.approx(
            normalized_mutual_info_score(truth, found), abs=1e-9
        )
        assert ari(truth, found) == pytest.approx(adjusted_rand_score(truth, found), abs=1e-9)


def test_purity_by_hand_and_unknown_labels_ignored():
    truth = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    found = np.array([5, 5, 7, 7, 7, 9, 5, 9])
    # clusters 5: {0,0} -> 2, 7: {0,1,1} -> 2, 9: {2} -> 1; 5 of the 6 labelled points.
    assert purity(truth, found) == pytest.approx(5 / 6)
    assert set(cluster_scores(truth, found)) == {"nmi", "ari", "purity"}
    assert nmi(truth[:6], truth[:6]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no point has a known true label"):
        purity(np.array([-1, -1]), np.array([0, 1]))


def test_nearest_centroid_chunks_match_one_block(monkeypatch):
    points, centroids = torch.randn(1000, 8), torch.randn(7, 8)
    whole, _ = cluster.nearest_centroid(points, centroids)
    monkeypatch.setattr(cluster, "DISTANCE_CHUNK", 64)
    chunked, distances = cluster.nearest_centroid(points, centroids)
    assert torch.equal(whole, chunked)
    expected = torch.cdist(points, centroids).min(dim=1).values ** 2
    assert torch.allclose(distances, expected, atol=1e-4)


def test_kmeans_plus_plus_draws_the_second_centre_in_proportion_to_squared_distance():
    """Four points on a line, the first centre forced onto 0: the second is drawn with
    probability D(x)^2 / sum D^2 = (0, 1, 4, 9) / 14; a point already a centre never again."""
    points = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    counts = torch.zeros(4)
    draws = 0
    for seed in range(4000):
        centres = cluster.kmeans_plus_plus(points, 2, torch.Generator().manual_seed(seed))
        if centres[0, 0] == 0.0:
            counts[int(centres[1, 0])] += 1
            draws += 1
    assert draws > 700  # the first centre is uniform: about a quarter of the seeds
    expected = torch.tensor([0.0, 1.0, 4.0, 9.0]) / 14
    assert counts[0] == 0
    assert torch.allclose(counts / draws, expected, atol=0.04)


def test_a_seed_picks_its_starting_points_from_a_cpu_generator(monkeypatch):
    """CUDA generators give other streams than the CPU's: seeding must not use the features'
    device generator, or the same seed clusters differently on a GPU."""
    made_on = []
    real_generator = torch.Generator

    def recording_generator(*args, **kwargs):
        made_on.append(kwargs.get("device", args[0] if args else None))
        return real_generator(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", recording_generator)
    points = torch.randn(300, 4, generator=real_generator().manual_seed(0))
    cluster.initial_centroids(points, 5, seed=1)
    assert made_on == [None]  # the default (CPU) generator, whatever the features' device
