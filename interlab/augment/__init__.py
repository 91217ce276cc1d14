"""Batched, per-sample random augmentation on the images' own device (GPU or CPU).

The MoCo v2 "aug+" recipe with torchvision's semantics, for a whole uint8 batch at once:
RandomResizedCrop -> RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(GaussianBlur, p)
-> RandomHorizontalFlip -> Normalize, every sample drawing its own parameters. It stays fast
without Python loops over samples (about 160 small kernels per call, whatever the batch size)
and makes no host syncs.

Modules, in the order a call runs through them:

* `config`   -- AugmentConfig, the recipe's settings, validated at construction;
* `params`   -- AugmentParams and the single uniform draw that fills them;
* `spatial`  -- crop + resize (+ flip) and Gaussian blur as per-sample matrix products;
* `colour`   -- ColorJitter, grayscale and Normalize as per-sample colour matrices;
* `pipeline` -- Augment, multi_crop and to_float, which chain the kernels;
* `checks`, `exact` -- shared argument checks and the full-float32 guard of the kernels.
"""

from __future__ import annotations

from interlab.augment.checks import check_uint8_images
from interlab.augment.colour import GRAY_WEIGHTS
from interlab.augment.config import (
    BRIGHTNESS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentConfig,
)
from interlab.augment.params import AugmentParams
from interlab.augment.pipeline import Augment, multi_crop, to_float
from interlab.augment.spatial import blur_kernel_size, resized_crop

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
    "blur_kernel_size",
    "check_uint8_images",
    "multi_crop",
    "resized_crop",
    "to_float",
]
