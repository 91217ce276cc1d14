"""The augmentation recipe's settings and their validation.

`AugmentConfig` is frozen and hashable because the parameter sampler caches per-config
constants on it; validation happens at construction so a bad YAML value fails before any
image is touched, with a message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# ColorJitter's ops, as positions in AugmentConfig.jitter and values of AugmentParams.jitter_order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass(frozen=True)
class AugmentConfig:
    """The recipe's knobs; defaults are MoCo v2 aug+ at CIFAR-10 size without blur."""

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # ColorJitter strengths: brightness, contrast, saturation, hue.
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                # YAML gives lists; keep the frozen instance hashable and comparable.
                numbers = float_tuple(f"AugmentConfig.{field.name}", value)
                object.__setattr__(self, field.name, numbers)
        _check_config(self)


def float_tuple(label: str, value: Sequence) -> tuple[float, ...]:
    """`value` as a tuple of floats; a ValueError naming `label` if it is not numbers."""
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a sequence of numbers, got {value!r}") from None


def _check_config(cfg: AugmentConfig) -> None:
    """Reject values torchvision would reject (or that make no sense) before any work is done."""
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or cfg.size <= 0:
        raise ValueError(f"AugmentConfig.size must be a positive int, got {cfg.size!r}")
    _check_pair("scale", cfg.scale, high=1.0)
    _check_pair("ratio", cfg.ratio)
    _check_pair("blur_sigma", cfg.blur_sigma)
    _check_jitter(cfg.jitter)
    for name in ("jitter_p", "gray_p", "blur_p", "flip_p"):
        _check_probability(name, getattr(cfg, name))
    _check_normalisation(cfg.mean, cfg.std)
    if cfg.blur_p > 0 and cfg.size < 2:
        raise ValueError(f"AugmentConfig.size must be >= 2 when blur_p > 0, got {cfg.size}")


def _check_jitter(jitter: tuple[float, ...]) -> None:
    _check_length("jitter", jitter, 4)
    if any(not math.isfinite(v) or v < 0 for v in jitter) or jitter[HUE] > 0.5:
        raise ValueError(
            "AugmentConfig.jitter must be (brightness, contrast, saturation, hue) with all values"
            f" >= 0 and hue <= 0.5, got {jitter!r}"
        )


def _check_probability(name: str, p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p!r}")


def _check_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    _check_length("mean", mean, 3)
    _check_length("std", std, 3)
    if any(not math.isfinite(v) for v in mean):
        raise ValueError(f"AugmentConfig.mean must be finite, got {mean!r}")
    if any(not math.isfinite(v) or v <= 0 for v in std):
        raise ValueError(f"AugmentConfig.std must be 3 positive numbers, got {std!r}")


def _check_length(name: str, value: object, length: int) -> None:
    if not isinstance(value, tuple) or len(value) != length:
        raise ValueError(f"AugmentConfig.{name} must have {length} values, got {value!r}")


def _check_pair(name: str, pair: object, high: float = math.inf) -> None:
    """A finite range (a, b) with 0 < a <= b <= high."""
    _check_length(name, pair, 2)
    a, b = pair  # type: ignore[misc]
    if not (0 < a <= b <= high and math.isfinite(b)):
        raise ValueError(
            f"AugmentConfig.{name} must be (a, b) with 0 < a <= b <= {high}, got {pair!r}"
        )
