"""Every sample's random parameters, drawn for the whole batch with one uniform draw.

One ``torch.rand(B, 35)`` call on the images' device feeds all of torchvision's
distributions at once (coins, jitter factors, op order, blur sigma, 10 RandomResizedCrop
candidates), so sampling is a few kernels and no host sync; the column layout below fixes
which draw feeds which parameter, which is what keeps seeded runs reproducible.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from interlab.augment.config import HUE, AugmentConfig

_CROP_TRIES = 10  # torchvision's RandomResizedCrop rejection-sampling attempts
# Columns of the single uniform draw that sample_params makes per sample.
_COINS = slice(0, 4)  # jitter, gray, blur, flip
_JITTER_FACTORS = slice(4, 8)  # brightness, contrast, saturation, hue
_BLUR_SIGMA = 8
_ORDER_KEYS = slice(9, 13)
_TOP, _LEFT = 13, 14
_AREA = slice(15, 15 + _CROP_TRIES)
_LOG_RATIO = slice(15 + _CROP_TRIES, 15 + 2 * _CROP_TRIES)
_N_UNIFORMS = 15 + 2 * _CROP_TRIES


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (every tensor has length B)."""

    boxes: Tensor  # (B, 4) int64: top, left, height, width of the crop
    jitter_on: Tensor  # (B,) bool
    brightness: Tensor  # (B,) float factor
    contrast: Tensor  # (B,) float factor
    saturation: Tensor  # (B,) float factor
    hue: Tensor  # (B,) float shift in turns, within +-jitter[3]
    jitter_order: Tensor  # (B, 4) int64 permutation of 0..3 (brightness, contrast, saturation, hue)
    gray: Tensor  # (B,) bool
    blur_sigma: Tensor  # (B,) float, 0 = no blur
    flip: Tensor  # (B,) bool


def sample_params(
    cfg: AugmentConfig,
    batch: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    sizes: Tensor | None = None,
) -> AugmentParams:
    """Draw every sample's parameters with one uniform draw from `generator` (global RNG if None).

    `sizes` (B, 2): each image's own (height, width) inside a padded (height, width) batch;
    its crop box is drawn from that region, as RandomResizedCrop would on the image alone."""
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    device = torch.device(device)
    if sizes is not None:
        _check_sizes(sizes, batch, height, width)
        height, width = sizes[:, 0].to(device), sizes[:, 1].to(device)
    _check_generator(generator, device)
    low, span, coin_p = _draw_ranges(cfg, device)
    u = torch.rand(batch, _N_UNIFORMS, device=device, generator=generator)
    draws = torch.addcmul(low, u, span)
    coins = u[:, _COINS] < coin_p
    brightness, contrast, saturation, hue = draws[:, _JITTER_FACTORS].unbind(dim=1)
    return AugmentParams(
        boxes=_sample_boxes(draws, height, width, cfg.ratio),
        jitter_on=coins[:, 0],
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_order=torch.argsort(u[:, _ORDER_KEYS], dim=1),
        gray=coins[:, 1],
        blur_sigma=torch.where(coins[:, 2], draws[:, _BLUR_SIGMA], 0.0),
        flip=coins[:, 3],
    )


def _check_sizes(sizes: object, batch: int, height: int, width: int) -> None:
    if not isinstance(sizes, Tensor) or sizes.shape != (batch, 2) or sizes.is_floating_point():
        shape = tuple(sizes.shape) if isinstance(sizes, Tensor) else type(sizes).__name__
        raise ValueError(f"sizes must be an integer tensor of shape ({batch}, 2), got {shape}")
    # values are checked where that is free (CPU); on a GPU the check would sync every step,
    # and the training path's sizes come from the shard index, valid by construction
    if sizes.device.type != "cpu":
        return
    if bool(
        (
            (sizes < 1) | (sizes[:, 0] > height).unsqueeze(1) | (sizes[:, 1] > width).unsqueeze(1)
        ).any()
    ):
        raise ValueError(f"sizes must lie in [1, {height}] x [1, {width}] (the padded batch)")


def check_params(params: object, batch: int) -> None:
    """Shape checks only (no values: that would sync the device)."""
    if not isinstance(params, AugmentParams):
        raise ValueError(f"params must be AugmentParams, got {type(params).__name__}")
    expected = {"boxes": (batch, 4), "jitter_order": (batch, 4)}
    for field in fields(params):
        tensor = getattr(params, field.name)
        shape = expected.get(field.name, (batch,))
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(
                f"params.{field.name} must have shape {shape} for a batch of {batch}, got {got}"
            )


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, but the images are on {device}")


@functools.lru_cache(maxsize=64)
def _draw_ranges(cfg: AugmentConfig, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Low and span of every column of the uniform draw, and the four coin probabilities.

    One multiply-add then turns U[0, 1) into every parameter's own range (torchvision's:
    jitter factors U[max(0, 1 - j), 1 + j], hue U[-j, j], log aspect ratio, area fraction).
    """
    low, span = [0.0] * _N_UNIFORMS, [1.0] * _N_UNIFORMS
    ranges = [(max(0.0, 1.0 - j), 1.0 + j) for j in cfg.jitter[:3]]
    ranges.append((-cfg.jitter[HUE], cfg.jitter[HUE]))
    for column, (a, b) in zip(
        range(_JITTER_FACTORS.start, _JITTER_FACTORS.stop), ranges, strict=True
    ):
        low[column], span[column] = a, b - a
    low[_BLUR_SIGMA], span[_BLUR_SIGMA] = cfg.blur_sigma[0], cfg.blur_sigma[1] - cfg.blur_sigma[0]
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for column in range(_AREA.start, _AREA.stop):
        low[column], span[column] = cfg.scale[0], cfg.scale[1] - cfg.scale[0]
    for column in range(_LOG_RATIO.start, _LOG_RATIO.stop):
        low[column], span[column] = log_low, log_high - log_low
    coin_p = [cfg.jitter_p, cfg.gray_p, cfg.blur_p, cfg.flip_p]
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(low), as_tensor(span), as_tensor(coin_p)


def _centre_crop_fallback(
    height: Tensor, width: Tensor, ratio: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RandomResizedCrop fallback after 10 rejected tries: a central crop.

    Per sample, in float64 as Python computes it (round half to even, floor division)."""
    height, width = height.double(), width.double()
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    w = torch.where(wide, torch.round(height * max(ratio)), width)
    h = torch.where(narrow, torch.round(width / min(ratio)), height)
    return torch.floor((height - h) / 2), torch.floor((width - w) / 2), h, w


def _per_sample(value: int | Tensor, like: Tensor) -> Tensor:
    """A height or width, one for the batch or one per sample, as a float32 (B,) column."""
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=torch.float32)
    return torch.full((like.shape[0],), float(value), device=like.device)


def _sample_boxes(
    draws: Tensor, height: int | Tensor, width: int | Tensor, ratio: tuple[float, float]
) -> Tensor:
    """RandomResizedCrop.get_params for every sample: 10 candidates at once, first valid wins.

    draws: the scaled uniform draw (area fractions and log aspect ratios already in range).
    height, width: the image size, or each sample's own (B,) size (images of several sizes
    padded into one batch: each crop stays inside its own image).
    """
    h, w = _per_sample(height, draws), _per_sample(width, draws)
    area = (h * w).unsqueeze(1) * draws[:, _AREA]
    aspect = torch.exp(draws[:, _LOG_RATIO])
    cand_w = torch.round(torch.sqrt(area * aspect))
    cand_h = torch.round(torch.sqrt(area / aspect))
    valid = (cand_w >= 1) & (cand_w <= w.unsqueeze(1)) & (cand_h >= 1) & (cand_h <= h.unsqueeze(1))
    tries = torch.arange(_CROP_TRIES, device=draws.device)
    first = torch.where(valid, tries, _CROP_TRIES).amin(dim=1, keepdim=True)
    found = first.squeeze(1) < _CROP_TRIES
    pick = first.clamp(max=_CROP_TRIES - 1)
    f_top, f_left, f_h, f_w = (f.float() for f in _centre_crop_fallback(h, w, ratio))
    box_h = torch.where(found, cand_h.gather(1, pick).squeeze(1), f_h)
    box_w = torch.where(found, cand_w.gather(1, pick).squeeze(1), f_w)
    # randint(0, n - size + 1) as floor(u * (n - size + 1)), guarded against rounding up.
    top = torch.minimum(torch.floor(draws[:, _TOP] * (h - box_h + 1)), h - box_h)
    left = torch.minimum(torch.floor(draws[:, _LEFT] * (w - box_w + 1)), w - box_w)
    top = torch.where(found, top, f_top)
    left = torch.where(found, left, f_left)
    return torch.stack([top, left, box_h, box_w], dim=1).to(torch.int64)
