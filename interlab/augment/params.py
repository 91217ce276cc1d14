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
) -> AugmentParams:
    """Draw every sample's parameters with one uniform draw from `generator` (global RNG if None)."""
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    device = torch.device(device)
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
    height: int, width: int, ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop fallback after 10 rejected tries: a central crop."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _sample_boxes(draws: Tensor, height: int, width: int, ratio: tuple[float, float]) -> Tensor:
    """RandomResizedCrop.get_params for every sample: 10 candidates at once, first valid wins.

    draws: the scaled uniform draw (area fractions and log aspect ratios already in range).
    """
    area = (height * width) * draws[:, _AREA]
    aspect = torch.exp(draws[:, _LOG_RATIO])
    cand_w = torch.round(torch.sqrt(area * aspect))
    cand_h = torch.round(torch.sqrt(area / aspect))
    valid = (cand_w >= 1) & (cand_w <= width) & (cand_h >= 1) & (cand_h <= height)
    tries = torch.arange(_CROP_TRIES, device=draws.device)
    first = torch.where(valid, tries, _CROP_TRIES).amin(dim=1, keepdim=True)
    found = first.squeeze(1) < _CROP_TRIES
    pick = first.clamp(max=_CROP_TRIES - 1)
    f_top, f_left, f_h, f_w = _centre_crop_fallback(height, width, ratio)
    box_h = torch.where(found, cand_h.gather(1, pick).squeeze(1), float(f_h))
    box_w = torch.where(found, cand_w.gather(1, pick).squeeze(1), float(f_w))
    # randint(0, n - size + 1) as floor(u * (n - size + 1)), guarded against rounding up.
    top = torch.minimum(torch.floor(draws[:, _TOP] * (height - box_h + 1)), height - box_h)
    left = torch.minimum(torch.floor(draws[:, _LEFT] * (width - box_w + 1)), width - box_w)
    top = torch.where(found, top, float(f_top))
    left = torch.where(found, left, float(f_left))
    return torch.stack([top, left, box_h, box_w], dim=1).to(torch.int64)
