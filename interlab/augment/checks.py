"""Argument checks shared by the augmentation and the evaluation entry points.

Each check looks at types and shapes only, never at values on the device, so calling one in
the training loop costs no host sync; the message names what arrived instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_uint8_images(images: object) -> None:
    """Accept only a non-empty uint8 batch (N, H, W, 3), the layout every image set holds."""
    if (
        not isinstance(images, Tensor)
        or images.dtype != torch.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or 0 in images.shape
    ):
        raise ValueError(
            f"images must be a non-empty uint8 tensor (N, H, W, 3), got {_describe(images)}"
        )


def check_float_images(x: object, name: str = "x") -> None:
    """Accept only float32 (B, 3, H, W): the planar layout the kernels compute in."""
    if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must be a float32 tensor (B, 3, H, W) in [0, 1], got {_describe(x)}"
        )


def check_size(size: object) -> None:
    """An output side must be a positive int (bool is not an int here)."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")


def _describe(value: object) -> str:
    """dtype and shape of a tensor, else the type's name: enough to see what went wrong."""
    if isinstance(value, Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__
