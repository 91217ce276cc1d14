"""Frozen-feature evaluation: weighted kNN and a linear probe on `interlab.features`' output.

Features are computed once per evaluation and kept on one device; kNN and the probe then
work on those tensors only (no image passes), which keeps evaluation cheap enough to run
every few epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlab.data import ImageSet
from interlab.devices import Precision
from interlab.features import DEFAULT_MEAN, DEFAULT_STD, evaluation_dtype, extract_features


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> Tensor:
    """Weighted kNN labels (MoCo CIFAR-10 protocol) for each test row, as int64 (M,).

    Inputs are L2-normalised, so similarity is a dot product; each of the top-k neighbours
    votes for its class with weight exp(sim / temperature). Test rows are processed in
    chunks so the (chunk, N) similarity matrix bounds memory: by default as many rows as
    keep it under 2^27 entries (1024 rows for CIFAR's 50k, 104 for ImageNet's 1.28M).
    """
    train_labels = _as_label_tensor(train_labels, train_features.device, "train_labels")
    _check_knn_inputs(train_features, train_labels, test_features, num_classes, k, temperature)
    if chunk_size is None:
        chunk_size = knn_chunk_rows(len(train_features))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    predictions = [
        _knn_chunk(train_features, train_labels, chunk, num_classes, k, temperature)
        for chunk in test_features.split(chunk_size)
    ]
    return torch.cat(predictions)


KNN_CHUNK_ENTRIES = 2**27  # similarity entries per chunk: 256 MB in fp16, 512 MB in fp32


def knn_chunk_rows(memory_size: int, max_rows: int = 1024) -> int:
    """Test rows per kNN chunk for a memory of `memory_size` features."""
    return max(1, min(max_rows, KNN_CHUNK_ENTRIES // max(1, memory_size)))


def _knn_chunk(
    train_features: Tensor,
    train_labels: Tensor,
    test_chunk: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> Tensor:
    similarity = test_chunk.to(train_features.dtype) @ train_features.T
    top_similarity, top_index = similarity.topk(k, dim=1)
    # Half-precision features get float32 weights; float64 inputs keep their precision.
    top_similarity = top_similarity.to(torch.promote_types(top_similarity.dtype, torch.float32))
    # Shifting by the row maximum rescales a row's weights uniformly (argmax unchanged) and
    # keeps exp() finite for small temperatures, where exp(1 / 0.01) overflows float32.
    weights = torch.exp((top_similarity - top_similarity[:, :1]) / temperature)
    scores = weights.new_zeros(test_chunk.shape[0], num_classes)
    scores.scatter_add_(1, train_labels[top_index], weights)
    return scores.argmax(dim=1)


def _check_knn_inputs(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> None:
    _check_feature_pair(train_features, train_labels, test_features, num_classes)
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(
            f"k={k} must be between 1 and the number of train rows ({train_features.shape[0]})"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_feature_pair(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int
) -> None:
    """Shapes agree, labels are class indices below num_classes."""
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be 2-D (N, D); got train {tuple(train_features.shape)}, "
            f"test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"feature dims differ: train D={train_features.shape[1]}, test D={test_features.shape[1]}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels has shape {tuple(train_labels.shape)}; expected "
            f"({train_features.shape[0]},) to match train_features"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_label_range(train_labels, num_classes, "train_labels")


def _check_label_range(labels: Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} span [{int(labels.min())}, {int(labels.max())}]; "
            f"expected class indices in [0, {num_classes - 1}]"
        )


def _as_label_tensor(labels: Tensor | np.ndarray, device: torch.device, name: str) -> Tensor:
    """int64 labels on `device`; accepts a tensor or a numpy array (an ImageSet may hold either)."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    return labels.to(device=device, dtype=torch.long)


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Fraction of test rows whose weighted-kNN label is right."""
    predictions = knn_predict(
        train_features, train_labels, test_features, num_classes, k=k, temperature=temperature
    )
    return _top1(predictions, test_labels, "test_labels")


def protocol_key(k: int, temperature: float) -> str:
    """The metrics key of a kNN figure under an extra (k, temperature) protocol."""
    return f"knn_top1_k{k}_t{temperature:g}"


def knn_scores(
    networks: dict[str, nn.Module],
    memory_images: Tensor,
    memory_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    protocols: Sequence[tuple[int, float]] = (),
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    device: torch.device | str | None = None,
    precision: Precision | None = None,
) -> dict[str, float]:
    """kNN top-1 of each named network's features: `knn_top1<name>` under (k, temperature).

    `networks` maps a key suffix to a network, e.g. {"": backbone, "_head": embedder}
    gives `knn_top1` and `knn_top1_head`. Each extra (k, t) of `protocols` is run on the
    first network too (`knn_top1_k20_t0.07`): a published figure's own protocol. Features
    are extracted once per network; k is capped at the memory size.
    """
    scores: dict[str, float] = {}
    for position, (suffix, network) in enumerate(networks.items()):
        memory, test = (
            extract_features(
                network, images, mean=mean, std=std, device=device, progress=False,
                precision=precision, dtype=evaluation_dtype(images),
            )
            for images in (memory_images, test_images)
        )  # fmt: skip
        runs = [(f"knn_top1{suffix}", k, temperature)]
        if position == 0:
            runs += [(protocol_key(pk, pt), pk, pt) for pk, pt in protocols]
        for key, run_k, run_t in runs:
            scores[key] = knn_top1(
                memory, memory_labels, test, test_labels, num_classes,
                k=min(run_k, len(memory)), temperature=run_t,
            )  # fmt: skip
    return scores


def _top1(predictions: Tensor, labels: Tensor | np.ndarray, name: str) -> float:
    labels = _as_label_tensor(labels, predictions.device, name)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)}; expected {tuple(predictions.shape)} "
            "(one label per test row)"
        )
    return (predictions == labels).float().mean().item()


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Test top-1 fraction of a logistic regression trained on frozen features.

    Features are standardised with train statistics (probe hyper-parameters then transfer
    across backbones); the classifier starts at zero (the problem is convex, so no random
    init is needed) and trains with mini-batch Adam, L2 `weight_decay` and a cosine learning
    rate, all on the features' device.
    """
    device = train_features.device
    train_labels = _as_label_tensor(train_labels, device, "train_labels")
    _check_feature_pair(train_features, train_labels, test_features, num_classes)
    _check_probe_settings(epochs, lr, weight_decay, batch_size)
    train_x, test_x = _standardise(train_features.float(), test_features.float().to(device))
    weight, bias = _fit_logistic(
        train_x, train_labels, num_classes, epochs, lr, weight_decay, batch_size, seed
    )
    with torch.no_grad():
        predictions = (test_x @ weight.T + bias).argmax(dim=1)
    return _top1(predictions, test_labels, "test_labels")


def _check_probe_settings(epochs: int, lr: float, weight_decay: float, batch_size: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-mean unit-variance columns by train statistics; constant columns are only centred."""
    mean = train.mean(dim=0)
    std = train.std(dim=0) if train.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _fit_logistic(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by mini-batch Adam; returns (weight, bias)."""
    device = features.device
    weight = torch.zeros(num_classes, features.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator(device=device).manual_seed(seed)
    count = features.shape[0]
    steps_per_epoch = math.ceil(count / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator, device=device)
        for index in order.split(batch_size):
            optimizer.param_groups[0]["lr"] = (
                lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            )
            loss = F.cross_entropy(features[index] @ weight.T + bias, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return weight.detach(), bias.detach()


def evaluate_backbone(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    knn: bool = True,
    linear: bool = False,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    precision: Precision | None = None,
) -> dict[str, float]:
    """Extract features once, then report {"knn_top1", "linear_top1"} (those requested)."""
    if not (knn or linear):
        raise ValueError("knn and linear are both False; expected at least one evaluation")
    train, test = (
        extract_features(
            backbone,
            images,
            batch_size,
            mean,
            std,
            device,
            precision=precision,
            dtype=evaluation_dtype(images),
        )
        for images in (train_images, test_images)
    )
    scores: dict[str, float] = {}
    if knn:
        scores["knn_top1"] = knn_top1(
            train, train_labels, test, test_labels, num_classes, k=k, temperature=temperature
        )
    if linear:
        scores["linear_top1"] = linear_probe(train, train_labels, test, test_labels, num_classes)
    return scores


def evaluate_method(
    method: Any,
    memory_set: ImageSet,
    test_set: ImageSet,
    knn: bool = True,
    linear: bool = False,
    k: int = 200,
    temperature: float = 0.1,
    protocols: Sequence[tuple[int, float]] = (),
    device: torch.device | str | None = None,
    embedding: bool = True,
) -> dict[str, float]:
    """The one evaluation of a method (trained or not): what training logs, `interlab eval`,
    the quickstart's untrained baseline and the sweeps' final probe all call.

    kNN gives `knn_top1` (backbone), `knn_top1_head` (the embedding, where the method has
    one, unless `embedding=False`) and each extra protocol; `linear` adds `linear_top1` (backbone). Images are
    normalised with the method's augmentation statistics and run under its precision policy.
    """
    if not (knn or linear):
        raise ValueError("knn and linear are both False; expected at least one evaluation")
    aug = method.augment.config
    shared = {"mean": aug.mean, "std": aug.std, "device": device, "precision": method.precision}
    sets = (memory_set.images, memory_set.labels, test_set.images, test_set.labels)
    scores: dict[str, float] = {}
    if knn:
        networks = {"": method.backbone}
        if embedding and method.embedder is not None:
            networks["_head"] = method.embedder
        scores.update(
            knn_scores(
                networks, *sets, memory_set.num_classes, k=k, temperature=temperature,
                protocols=protocols, **shared,
            )
        )  # fmt: skip
    if linear:
        scores.update(
            evaluate_backbone(
                method.backbone, *sets, memory_set.num_classes, knn=False, linear=True, **shared
            )
        )
    return scores
