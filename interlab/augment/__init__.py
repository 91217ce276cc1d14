"""Batched, per-sample random augmentation on the images' own device (GPU or CPU).

The implementation lives in `interlab.augment.pipeline`; this package re-exports its public
names so `from interlab.augment import X` keeps working.
"""

from __future__ import annotations

from interlab.augment.pipeline import (
    BRIGHTNESS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CONTRAST,
    GRAY_WEIGHTS,
    HUE,
    SATURATION,
    Augment,
    AugmentConfig,
    AugmentParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    hflip,
    multi_crop,
    resized_crop,
    rgb_to_grayscale,
    to_float,
)

__all__ = [
    "BRIGHTNESS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CONTRAST",
    "GRAY_WEIGHTS",
    "HUE",
    "SATURATION",
    "Augment",
    "AugmentConfig",
    "AugmentParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "gaussian_blur",
    "hflip",
    "multi_crop",
    "resized_crop",
    "rgb_to_grayscale",
    "to_float",
]
