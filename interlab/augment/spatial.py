"""Spatial kernels: crop + resize (+ flip) and Gaussian blur as per-sample matrix products.

Both are separable, so a whole batch goes through ``Wy @ image @ Wx^T`` with per-sample
matrices (B, S, H) and (B, T, W): two batched GEMMs whatever the batch size, and no Python
loop over samples. The crop reproduces ``interpolate(mode="bilinear", antialias=True)``; the
blur reproduces ``TF.gaussian_blur`` with reflect padding. Flipping mirrors the rows of Wx.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from interlab.augment.checks import check_float_images, check_size
from interlab.augment.exact import exact


def separable(x: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
    """out[b, c] = wy[b] @ x[b, c] @ wx[b]^T: x (B, C, H, W), wy (B, S, H), wx (B, T, W)."""
    b, c, h, w = x.shape
    rows = torch.bmm(x.reshape(b, c * h, w), wx.transpose(1, 2))  # (B, C*H, T)
    return torch.matmul(wy.unsqueeze(1), rows.view(b, c, h, -1))  # (B, C, S, T)


# --------------------------------------------------------------------------------------------
# Crop + antialiased bilinear resize
# --------------------------------------------------------------------------------------------


def _resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(B, out, in) weights of "crop [start, start+length) then resize to out_size".

    Same filter as ``interpolate(mode="bilinear", antialias=True, align_corners=False)``: a
    triangle of half-width max(scale, 1) around each output centre, restricted to the crop and
    renormalised; for upscaling this is plain bilinear with edge clamping.
    """
    device = start.device
    scale = (length.to(torch.float32) / out_size).view(-1, 1, 1)
    centre = torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5
    local = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1)
    local = local - start.view(-1, 1, 1)
    inside = (local >= 0) & (local < length.view(-1, 1, 1))
    distance = (local + 0.5 - scale * centre) / scale.clamp(min=1.0)
    weights = (1.0 - distance.abs()).clamp_(min=0.0) * inside
    return weights / weights.sum(dim=2, keepdim=True)


def crop_matrices(
    boxes: Tensor, height: int, width: int, size: int, flip: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """wy (B, S, H) and wx (B, S, W) for the boxes; `flip` mirrors the output columns."""
    top, left, box_h, box_w = boxes.unbind(dim=1)
    if height == width:  # one call for both axes: half the (small) kernels
        both = _resize_weights(torch.cat([top, left]), torch.cat([box_h, box_w]), height, size)
        wy, wx = both.chunk(2)
    else:
        wy = _resize_weights(top, box_h, height, size)
        wx = _resize_weights(left, box_w, width, size)
    if flip is not None:
        wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)
    return wy, wx


def _check_boxes(boxes: object, batch: int, height: int, width: int) -> None:
    """Integer (B, 4) boxes inside the images (a host sync: resized_crop is not the hot path)."""
    if (
        not isinstance(boxes, Tensor)
        or tuple(boxes.shape) != (batch, 4)
        or boxes.is_floating_point()
    ):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"boxes must be an integer tensor ({batch}, 4) of top, left, height, width; got {got}"
        )
    top, left, box_h, box_w = boxes.unbind(dim=1)
    inside = (top >= 0) & (left >= 0) & (box_h >= 1) & (box_w >= 1)
    inside &= (top + box_h <= height) & (left + box_w <= width)
    if not bool(inside.all()):
        raise ValueError(
            f"boxes must lie inside the {height}x{width} images, got {boxes[~inside][:8].tolist()}"
        )


@exact
def resized_crop(images_float: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Per-sample crop (top, left, height, width) then bilinear antialiased resize to size x size.

    Batched ``TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)``; the boxes
    must lie inside the images. Returns contiguous (B, 3, size, size).
    """
    check_float_images(images_float, "images_float")
    b, _, h, w = images_float.shape
    _check_boxes(boxes, b, h, w)
    check_size(size)
    wy, wx = crop_matrices(boxes.to(images_float.device), h, w, size)
    return separable(images_float, wy, wx)


# --------------------------------------------------------------------------------------------
# Gaussian blur with reflect padding
# --------------------------------------------------------------------------------------------


def blur_kernel_size(size: int) -> int:
    """Odd kernel side about 10% of the image side, at least 3 (23 at 224 px, as in MoCo v2).

    int(0.1 * size), plus one when even; so 3 below 40 px (CIFAR), 9 at 96 px (STL-10).
    """
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


@functools.lru_cache(maxsize=32)
def _reflect_taps(n: int, kernel_size: int, device: torch.device) -> Tensor:
    """(k, n*n) flattened 0/1 matrices: tap t of output i reads input reflect(i + t - k // 2)."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=device)[:, None]
    index = torch.arange(n, device=device)[None, :] + offsets
    index = torch.where(index < 0, -index, index)
    index = torch.where(index > n - 1, 2 * (n - 1) - index, index)
    taps = index.unsqueeze(-1) == torch.arange(n, device=device)  # (k, out i, in j)
    return taps.to(torch.float32).reshape(kernel_size, n * n)


def _blur_matrices(sigma: Tensor, n: int, kernel_size: int) -> Tensor:
    """(B, n, n) matrices applying TF.gaussian_blur's 1-D kernel with reflect padding.

    sigma 0 gives the identity (no blur) so blurred and unblurred samples share one product.
    """
    radius = kernel_size // 2
    # TF's taps: softmax(-(x / sigma)^2) over x = linspace(-lim, lim), lim = (k - 1) / (2 sqrt 2).
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    x = x / math.sqrt(2.0)
    safe = torch.where(sigma > 0, sigma, 1.0).view(-1, 1)
    kernel = torch.softmax(-((x / safe) ** 2), dim=1)
    kernel = torch.where(sigma.view(-1, 1) > 0, kernel, (x == 0).to(torch.float32))
    taps = _reflect_taps(n, kernel_size, sigma.device)
    return (kernel @ taps).view(-1, n, n)


def blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """x (B, 3, H, W) -> each sample blurred with its own sigma (0 = unchanged)."""
    _, _, h, w = x.shape
    by = _blur_matrices(sigma, h, kernel_size)
    bx = by if w == h else _blur_matrices(sigma, w, kernel_size)
    return separable(x, by, bx)
