"""Frozen features of a whole image set: the one extraction loop evaluation and methods share.

InterCLR embeds its training set for k-means with it, evaluation embeds train and test sets
for kNN and probes, the studies embed query images: each as the network trained (the run's
precision policy), in eval mode, L2-normalised, batch by batch into one preallocated tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from interlab.augment import CIFAR10_MEAN, CIFAR10_STD, check_uint8_images, to_float
from interlab.data.shards import ShardImages
from interlab.devices import Precision, full_precision

# Defaults for callers without an augmentation config; callers that have one pass its
# mean/std so features see images normalised exactly like training did.
DEFAULT_MEAN: tuple[float, float, float] = CIFAR10_MEAN
DEFAULT_STD: tuple[float, float, float] = CIFAR10_STD


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    batch_size: int = 512,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    device: torch.device | str | None = None,
    progress: bool = True,
    precision: Precision | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """L2-normalised features (N, D) of uint8 NHWC `images`, computed on `device`, stored as
    `dtype` (float16 halves an ImageNet-sized kNN memory; see `evaluation_dtype`).

    `device` defaults to the backbone's; the backbone must already live there (moving it
    would silently change the caller's model). The backbone runs in eval mode and every
    submodule gets its previous train/eval mode back afterwards. `precision` is the run's
    policy (autocast, memory format), so features are computed as the network trained;
    None = fp32.
    """
    if not isinstance(images, ShardImages):
        check_uint8_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _compute_device(backbone, device)
    precision = precision or full_precision(device)
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    try:
        with eager_only():
            return _features_in_batches(
                backbone, images, batch_size, mean, std, device, precision, progress, dtype
            )
    finally:
        for module, training in modes:
            module.training = training


def eager_only() -> AbstractContextManager:
    """Networks compiled for the training step run eagerly here: evaluation (eval-mode BN, a
    last batch of another size) would otherwise compile them again for every such change."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def features_as_trained(method: Any, network: nn.Module, images: Tensor) -> Tensor:
    """`network`'s features of `images` as `method` sees them: its augmentation's mean and
    std, its precision policy; quiet (the callers embed small sets or many times)."""
    aug = method.augment.config
    return extract_features(
        network, images, mean=aug.mean, std=aug.std, progress=False, precision=method.precision
    )


def _features_in_batches(
    backbone: nn.Module,
    images: Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    precision: Precision,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fill a preallocated (N, D) tensor batch by batch (no N-sized concatenation copy)."""
    features: Tensor | None = None
    count = images.shape[0]
    for start in tqdm(
        range(0, count, batch_size), desc="features", leave=False, disable=not progress
    ):
        batch = to_float(_uint8_batch(images, start, start + batch_size, device), mean, std)
        with precision.autocast():
            output = backbone(precision.images(batch))
        output = F.normalize(output.float().flatten(1), dim=1)
        if features is None:
            features = torch.empty(count, output.shape[1], device=device, dtype=dtype)
        features[start : start + output.shape[0]] = output
    return features


def evaluation_dtype(images: Tensor | ShardImages) -> torch.dtype:
    """Evaluation features of a streamed set (ImageNet-sized) are kept as float16 on the GPU:
    1.28M x 2048 is 5 GB instead of 10; in-memory sets keep float32. CPUs compute half
    matmuls slowly, so streamed sets evaluated there keep float32 too."""
    streamed_on_gpu = isinstance(images, ShardImages) and images.device.type == "cuda"
    return torch.float16 if streamed_on_gpu else torch.float32


def _uint8_batch(
    images: Tensor | ShardImages, start: int, stop: int, device: torch.device
) -> Tensor:
    """Rows start:stop on `device`: a slice of an in-memory set, or decoded from shards."""
    if isinstance(images, ShardImages):
        return images.batch(start, stop).to(device, non_blocking=True)
    return images[start:stop].to(device, non_blocking=True)


def _compute_device(backbone: nn.Module, device: torch.device | str | None) -> torch.device:
    """The requested device, else the backbone's; a backbone elsewhere is a caller error."""
    first = next(iter(backbone.parameters()), None)
    model_device = first.device if first is not None else torch.device("cpu")
    if device is None:
        return model_device
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if first is not None and model_device != device:
        raise ValueError(f"backbone is on {model_device} but device={device}; move it there first")
    return device
