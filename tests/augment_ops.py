"""Batched single-op equivalents of torchvision.transforms.v2.functional, for the tests.

Each wraps one kernel of `interlab.augment` (the very code the pipeline runs) behind
torchvision's signature, so tests/test_augment.py can check every kernel against its
torchvision op image by image. The library never needs them, hence they live here. Unlike
`Augment`, they check argument values, which syncs the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from interlab.augment.checks import check_float_images
from interlab.augment.colour import blend_matrices, blend_pass, eye3, gray_weights, shift_hue
from interlab.augment.config import BRIGHTNESS, CONTRAST, SATURATION
from interlab.augment.exact import exact
from interlab.augment.spatial import blur, blur_kernel_size


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_brightness: clamp(x * factor), factor per sample (B,) or scalar."""
    return _blend_op(x, factor, BRIGHTNESS)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_contrast: blend with the mean of each sample's grayscale image."""
    return _blend_op(x, factor, CONTRAST)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_saturation: blend each pixel with its own gray value."""
    return _blend_op(x, factor, SATURATION)


@exact
def adjust_hue(x: Tensor, hue_factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_hue: shift each sample's hue by hue_factor in [-0.5, 0.5] turns."""
    check_float_images(x)
    delta = _per_sample(hue_factor, x.shape[0], x.device, "hue_factor")
    _check_range(delta, "hue_factor", -0.5, 0.5)
    return shift_hue(_planes(x), delta).view(x.shape)


@exact
def rgb_to_grayscale(x: Tensor) -> Tensor:
    """TF.rgb_to_grayscale(x, num_output_channels=3): the gray value in all 3 channels."""
    check_float_images(x)
    gray = torch.matmul(gray_weights(x.device), _planes(x))  # (B, N)
    return gray.unsqueeze(1).expand(-1, 3, -1).reshape(x.shape)


@exact
def gaussian_blur(x: Tensor, sigma: Tensor | float, kernel_size: int | None = None) -> Tensor:
    """Batched TF.gaussian_blur(img, [k, k], [sigma, sigma]) with a per-sample sigma (0 = none).

    kernel_size defaults to blur_kernel_size(min(H, W)): odd, about 10% of the side, >= 3.
    """
    check_float_images(x)
    b, _, h, w = x.shape
    k = blur_kernel_size(min(h, w)) if kernel_size is None else kernel_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if k // 2 >= min(h, w):
        raise ValueError(f"kernel_size {k} is too large for reflect padding of {h}x{w} images")
    sigma = _per_sample(sigma, b, x.device, "sigma")
    _check_range(sigma, "sigma", 0.0, math.inf)
    return blur(x, sigma, k)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the samples whose `mask` entry is True (batched RandomHorizontalFlip)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {got}")
    if (
        not isinstance(mask, Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != (x.shape[0],)
    ):
        got = (
            f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        )
        raise ValueError(f"mask must be a bool tensor ({x.shape[0]},), got {got}")
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


@exact
def _blend_op(x: Tensor, factor: Tensor | float, op: int) -> Tensor:
    """One of ColorJitter's blends for every sample: a batch of one-op colour matrices."""
    check_float_images(x)
    factor = _per_sample(factor, x.shape[0], x.device, "factor")
    _check_range(factor, "factor", 0.0, math.inf)
    is_saturation = torch.full_like(factor, float(op == SATURATION))
    is_contrast = torch.full_like(factor, float(op == CONTRAST))
    matrices = blend_matrices(
        factor, is_saturation, is_contrast, gray_weights(x.device), eye3(x.device)
    )
    return blend_pass(_planes(x), *matrices).view(x.shape)


def _planes(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 3, H*W), the layout of the colour kernels."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w)


def _per_sample(value: Tensor | float, batch: int, device: torch.device, name: str) -> Tensor:
    """A scalar or a (B,) tensor as float32 (B,) on `device`."""
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(batch)
        if tuple(value.shape) != (batch,):
            raise ValueError(
                f"{name} must be a scalar or have shape ({batch},), got {tuple(value.shape)}"
            )
        return value.to(device=device, dtype=torch.float32)
    return torch.full((batch,), float(value), device=device, dtype=torch.float32)


def _check_range(values: Tensor, name: str, low: float, high: float) -> None:
    """All values within [low, high] (a host sync, fine for these test-side ops)."""
    bad = ~((values >= low) & (values <= high))
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {values[bad][:8].tolist()}")
