"""The augmentation itself: `Augment`, `multi_crop` and the unaugmented `to_float`.

`Augment.apply` chains the kernels in torchvision's order — crop + resize + flip (one pair of
GEMMs, with the /255 folded in), ColorJitter, GaussianBlur, then RandomGrayscale + Normalize
(one colour matrix) — on float32 images in [0, 1] until the final normalisation. Flip and
blur commute with the per-pixel colour ops (and with each other: the Gaussian is symmetric,
the padding is reflect), so folding the flip into the crop changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from interlab.augment.checks import check_size, check_uint8_images
from interlab.augment.colour import color_jitter, gray_and_normalise, normalise_constants
from interlab.augment.config import CIFAR10_MEAN, CIFAR10_STD, HUE, AugmentConfig, float_tuple
from interlab.augment.exact import exact
from interlab.augment.params import AugmentParams, check_params, sample_params
from interlab.augment.spatial import blur, blur_kernel_size, crop_matrices, separable


class Augment:
    """Callable: images uint8 (B, H, W, 3) -> float32 (B, 3, S, S), normalised, channels_last."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        if config is None:
            config = AugmentConfig()
        if not isinstance(config, AugmentConfig):
            raise ValueError(f"config must be an AugmentConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"Augment({self.config!r})"

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None
    ) -> Tensor:
        """`sizes` (B, 2): each image's own (h, w) in a padded batch of images of several
        sizes (streamed shards); each crop is drawn inside its own image."""
        check_uint8_images(images)
        b, h, w, _ = images.shape
        return self.apply(images, self.sample_params(b, h, w, images.device, generator, sizes))

    def sample_params(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        sizes: Tensor | None = None,
    ) -> AugmentParams:
        """Draw every sample's parameters with one uniform draw from `generator` (global RNG if
        None); `sizes` (B, 2) are the images' own sizes inside a padded batch."""
        return sample_params(self.config, batch, height, width, device, generator, sizes)

    @exact
    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """The recipe with fixed parameters: deterministic, equal to torchvision op by op."""
        check_uint8_images(images)
        b, h, w, _ = images.shape
        check_params(params, b)
        cfg = self.config
        size = cfg.size
        wy, wx = crop_matrices(params.boxes, h, w, size, flip=params.flip)
        x = separable(_uint8_to_planar(images), wy * (1.0 / 255.0), wx)  # (B, 3, S, S)
        planes = x.view(b, 3, size * size)
        if cfg.jitter_p > 0 and any(v > 0 for v in cfg.jitter):
            planes = color_jitter(planes, params, use_hue=cfg.jitter[HUE] > 0)
        if cfg.blur_p > 0:
            blurred = blur(planes.view(b, 3, size, size), params.blur_sigma, blur_kernel_size(size))
            planes = blurred.view(b, 3, size * size)
        out = gray_and_normalise(planes, params.gray, cfg.mean, cfg.std).view(b, 3, size, size)
        return out.contiguous(memory_format=torch.channels_last)


def multi_crop(
    images: Tensor,
    global_config: AugmentConfig,
    n_global: int,
    local_config: AugmentConfig | None = None,
    n_local: int = 0,
    generator: torch.Generator | None = None,
    sizes: Tensor | None = None,
) -> list[Tensor]:
    """n_global views with global_config, then n_local views with local_config.

    Views of one kind are augmented as one big batch (fewer, larger kernels); each sample of
    each view still draws its own parameters. `sizes`: the images' own sizes in a padded batch.
    """
    check_uint8_images(images)
    if not isinstance(global_config, AugmentConfig):
        raise ValueError(f"global_config must be an AugmentConfig, got {global_config!r}")
    for name, n in (("n_global", n_global), ("n_local", n_local)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if n_local > 0 and not isinstance(local_config, AugmentConfig):
        raise ValueError(
            f"local_config must be an AugmentConfig when n_local > 0 (n_local={n_local}),"
            f" got {local_config!r}"
        )
    views: list[Tensor] = []
    for config, n in ((global_config, n_global), (local_config, n_local)):
        if n > 0:
            repeated = None if sizes is None else sizes.repeat(n, 1)
            batch = Augment(config)(images.repeat(n, 1, 1, 1), generator, repeated)
            views.extend(batch.chunk(n, dim=0))
    return views


@exact
def to_float(
    images: Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    size: int | None = None,
) -> Tensor:
    """No augmentation: uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W), channels_last.

    With `size`, the whole image is resized to size x size (bilinear, antialiased) first.
    """
    check_uint8_images(images)
    mean, std = float_tuple("mean", mean), float_tuple("std", std)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must have 3 values (std > 0), got mean={mean}, std={std}")
    b, h, w, _ = images.shape
    mean_t, std_t, _ = normalise_constants(mean, std, images.device)
    mean_t, std_t = mean_t.view(1, 3, 1, 1), std_t.view(1, 3, 1, 1)
    if size is None or (size == h and size == w):
        # The permuted uint8 batch is channels_last; the float ops keep that memory format.
        return images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    check_size(size)
    whole = torch.zeros(b, 4, dtype=torch.int64, device=images.device)
    whole[:, 2], whole[:, 3] = h, w
    wy, wx = crop_matrices(whole, h, w, size)
    x = separable(_uint8_to_planar(images), wy * (1.0 / 255.0), wx).sub_(mean_t).div_(std_t)
    return x.contiguous(memory_format=torch.channels_last)


def _uint8_to_planar(images: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) contiguous, in one conversion kernel."""
    return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
