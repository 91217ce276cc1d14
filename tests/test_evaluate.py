from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from interlab.augment import to_float
from interlab.evaluate import evaluate_backbone, knn_predict, knn_top1, linear_probe
from interlab.features import extract_features
from interlab.nets import ConvNet


def _clustered_features(
    count: int, num_classes: int, dim: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors scattered around one random centre per class (continuous: no ties)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(count) % num_classes
    points = centres[labels] + noise * torch.randn(count, dim, generator=generator)
    return F.normalize(points.double(), dim=1), labels


def _sklearn_knn(train, train_labels, test, k: int, temperature: float) -> np.ndarray:
    classifier = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", weights=lambda d: np.exp((1 - d) / temperature)
    )
    classifier.fit(train.numpy(), train_labels.numpy())
    return classifier.predict(test.numpy())


@pytest.mark.parametrize(("k", "temperature"), [(15, 0.1), (40, 0.5), (1, 0.07)])
def test_knn_predict_matches_sklearn_weighted_cosine_knn(k: int, temperature: float):
    train, train_labels = _clustered_features(400, 5, 16, noise=2.0, seed=0)
    test, test_labels = _clustered_features(300, 5, 16, noise=2.0, seed=1)

    ours = knn_predict(train, train_labels, test, num_classes=5, k=k, temperature=temperature)
    expected = _sklearn_knn(train, train_labels, test, k, temperature)

    assert ours.dtype == torch.int64 and ours.shape == (300,)
    np.testing.assert_array_equal(ours.numpy(), expected)
    accuracy = (ours == test_labels).double().mean().item()
    assert 0.6 < accuracy < 0.9  # clusters overlap: many neighbourhoods are mixed


def test_knn_weights_let_a_close_neighbour_outvote_two_far_ones():
    # Test point e0: one class-0 neighbour at cosine 0.99, two class-1 neighbours at 0.5.
    train = torch.tensor(
        [[0.99, math.sqrt(1 - 0.99**2)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)]]
    )
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    # weights exp(9.9)=19930 vs 2*exp(5)=297 at t=0.1; at t=10: exp(.099)=1.10 vs 2*exp(.05)=2.10
    assert knn_predict(train, labels, test, 2, k=3, temperature=0.1).tolist() == [0]
    assert knn_predict(train, labels, test, 2, k=3, temperature=10.0).tolist() == [1]
    assert knn_predict(train, labels, test, 2, k=1).tolist() == [0]


def test_knn_small_temperature_does_not_overflow():
    train, labels = _clustered_features(50, 3, 8, noise=0.5, seed=2)
    predictions = knn_predict(train.float(), labels, train.float(), 3, k=5, temperature=0.005)
    assert torch.equal(predictions, labels)  # each point is its own nearest neighbour


def test_knn_chunk_size_does_not_change_predictions():
    train, train_labels = _clustered_features(200, 4, 8, noise=1.0, seed=3)
    test, _ = _clustered_features(77, 4, 8, noise=1.0, seed=4)
    train, test = train.float(), test.float()
    reference = knn_predict(train, train_labels, test, 4, k=20, chunk_size=10_000)
    for chunk_size in (1, 8, 76):
        assert torch.equal(
            knn_predict(train, train_labels, test, 4, k=20, chunk_size=chunk_size), reference
        )


def test_knn_chunks_bound_the_similarity_matrix_at_imagenet_scale(monkeypatch):
    """The default chunk keeps (rows x N) under 2^27 entries: CIFAR keeps 1024 rows,
    ImageNet's 1.28M gets 104, and the automatic chunk predicts as one big chunk does."""
    from interlab import evaluate

    assert evaluate.knn_chunk_rows(50_000) == 1024
    assert evaluate.knn_chunk_rows(1_281_167) == 104
    assert evaluate.knn_chunk_rows(10**12) == 1
    seen = []
    real_chunk = evaluate._knn_chunk
    monkeypatch.setattr(evaluate, "KNN_CHUNK_ENTRIES", 64 * 10)  # 10 rows per chunk of 64
    monkeypatch.setattr(
        evaluate, "_knn_chunk", lambda *a: seen.append(a[2].shape[0]) or real_chunk(*a)
    )
    generator = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(64, 8, generator=generator), dim=1)
    labels = torch.randint(0, 4, (64,), generator=generator)
    test = F.normalize(torch.randn(25, 8, generator=generator), dim=1)
    automatic = evaluate.knn_predict(train, labels, test, 4, k=5)
    assert seen == [10, 10, 5]
    assert torch.equal(automatic, evaluate.knn_predict(train, labels, test, 4, k=5, chunk_size=25))


def test_knn_rejects_k_larger_than_train_set_and_bad_labels():
    train, labels = _clustered_features(30, 3, 4, noise=1.0, seed=5)
    with pytest.raises(ValueError, match=r"k=31.*30"):
        knn_predict(train, labels, train, 3, k=31)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(train, labels + 1, train, 3, k=5)
    with pytest.raises(ValueError, match="feature dims"):
        knn_predict(train, labels, train[:, :2], 3, k=5)


def test_knn_top1_is_the_fraction_of_correct_predictions():
    train, train_labels = _clustered_features(300, 3, 8, noise=1.5, seed=6)
    test, test_labels = _clustered_features(100, 3, 8, noise=1.5, seed=7)
    predictions = knn_predict(train, train_labels, test, 3, k=10)
    expected = (predictions == test_labels).double().mean().item()
    assert knn_top1(train, train_labels, test, test_labels.numpy(), 3, k=10) == pytest.approx(
        expected
    )


def _gaussian_classes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """5 overlapping Gaussian classes in 20-D with unequal feature scales and offsets."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(5, 20, generator=torch.Generator().manual_seed(123)) * 0.6
    scales = torch.linspace(0.1, 10, 20)
    labels = torch.arange(count) % 5
    features = means[labels] + torch.randn(count, 20, generator=generator)
    return features * scales + 3.0, labels


def test_linear_probe_matches_sklearn_logistic_regression():
    train, train_labels = _gaussian_classes(1500, seed=0)
    test, test_labels = _gaussian_classes(1500, seed=1)
    scaler = StandardScaler().fit(train.numpy())
    sklearn_model = LogisticRegression(max_iter=1000).fit(
        scaler.transform(train.numpy()), train_labels.numpy()
    )
    sklearn_top1 = sklearn_model.score(scaler.transform(test.numpy()), test_labels.numpy())

    ours = linear_probe(train, train_labels, test, test_labels, num_classes=5, epochs=30)

    assert 0.5 < sklearn_top1 < 0.95  # well above chance (0.2), not trivially separable
    assert abs(ours - sklearn_top1) <= 0.02


def test_linear_probe_is_deterministic_for_a_seed():
    train, train_labels = _gaussian_classes(300, seed=2)
    test, test_labels = _gaussian_classes(300, seed=3)
    first = linear_probe(train, train_labels, test, test_labels, 5, epochs=5, seed=1)
    assert linear_probe(train, train_labels, test, test_labels, 5, epochs=5, seed=1) == first


def test_linear_probe_rejects_bad_settings():
    train, labels = _gaussian_classes(20, seed=4)
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(train, labels, train, labels, 5, epochs=0)
    with pytest.raises(ValueError, match="test_labels"):
        linear_probe(train, labels, train, labels[:10], 5, epochs=1)


class _MeanColour(nn.Module):
    """Backbone whose features are the per-channel image means plus a constant: easy to check."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 0.0, 0.0, 1.0]))
        self.bn = nn.BatchNorm1d(4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = images.mean(dim=(2, 3))
        return self.bn(torch.cat([pooled, torch.zeros_like(pooled[:, :1])], dim=1) + self.bias)


def _coloured_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c images are brightest in channel c, with pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    images = torch.randint(0, 120, (count, 8, 8, 3), generator=generator)
    images[torch.arange(count), :, :, labels] += 120
    return images.to(torch.uint8), labels


def test_extract_features_restores_modes_and_returns_unit_rows():
    backbone = ConvNet(widths=(8, 16), strides=(2, 2))
    backbone.train()
    backbone.features[0].eval()  # mixed modes must come back exactly
    running_mean = backbone.features[1][1].running_mean.clone()
    images, _ = _coloured_images(10, seed=0)

    features = extract_features(backbone, images, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3)

    assert features.dtype == torch.float32 and features.shape == (10, 16)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(10))
    assert backbone.training and not backbone.features[0].training
    assert backbone.features[1].training
    assert torch.equal(backbone.features[1][1].running_mean, running_mean)  # ran in eval mode


def test_extract_features_equals_eval_forward_and_is_deterministic():
    backbone = ConvNet(widths=(8, 16), strides=(2, 2))
    images, _ = _coloured_images(11, seed=1)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    with torch.no_grad():
        expected = F.normalize(backbone.eval()(to_float(images, mean, std)), dim=1)
    backbone.train()

    first = extract_features(backbone, images, batch_size=3, mean=mean, std=std)
    second = extract_features(backbone, images, batch_size=512, mean=mean, std=std)

    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-6)


def test_extract_features_rejects_float_images_and_foreign_device():
    backbone = ConvNet(widths=(4,), strides=(1,))
    with pytest.raises(ValueError, match=r"uint8.*\(N, H, W, 3\)"):
        extract_features(backbone, torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match="uint8"):
        extract_features(backbone, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="backbone is on cpu"):
        extract_features(backbone, torch.zeros(2, 8, 8, 3, dtype=torch.uint8), device="meta")


def test_evaluate_backbone_scores_a_separating_backbone_near_perfect():
    train_images, train_labels = _coloured_images(90, seed=2)
    test_images, test_labels = _coloured_images(30, seed=3)
    backbone = _MeanColour()
    with torch.no_grad():
        backbone.bn.running_var.fill_(1.0)

    scores = evaluate_backbone(
        backbone,
        train_images,
        train_labels,
        test_images,
        test_labels,
        3,
        knn=True,
        linear=True,
        k=10,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )

    assert set(scores) == {"knn_top1", "linear_top1"}
    assert scores["knn_top1"] == 1.0
    assert scores["linear_top1"] == 1.0


def test_evaluate_backbone_returns_requested_fractions():
    train_images, train_labels = _coloured_images(40, seed=4)
    test_images, test_labels = _coloured_images(20, seed=5)
    backbone = ConvNet(widths=(8, 16), strides=(2, 2))
    knn_only = evaluate_backbone(
        backbone, train_images, train_labels, test_images, test_labels, 3, k=5
    )
    assert set(knn_only) == {"knn_top1"}
    assert 0.0 <= knn_only["knn_top1"] <= 1.0
    # Scores are multiples of 1/20 (20 test images).
    assert knn_only["knn_top1"] * 20 == pytest.approx(round(knn_only["knn_top1"] * 20))
    with pytest.raises(ValueError, match="knn and linear"):
        evaluate_backbone(
            backbone, train_images, train_labels, test_images, test_labels, 3, knn=False
        )
