"""Which device a run uses, what it is called, and the backbone `auto` picks for it."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

# backbone=auto: a network that visibly learns in minutes on a CPU (kNN 0.30 -> 0.42 on the
# mini data in ~100 s on 2 cores), the MoCo CIFAR-10 recipe's ResNet-18 on a GPU (the
# cifar-stem ResNet-18 trains at ~13 images/s on a CPU: half an hour for a first command).
AUTO_BACKBONES: dict[str, tuple[str, bool]] = {
    "cpu": ("convnet", False),
    "cuda": ("resnet18", True),
}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def device_name(device: str) -> str:
    """A readable name of the device a run uses (GPU model, or CPU and its threads)."""
    target = resolve_device(device)
    if target.type == "cuda":
        return torch.cuda.get_device_name(target)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def auto_backbone(device: torch.device) -> tuple[str, bool]:
    """(backbone, cifar_stem) that `backbone=auto` means on `device`."""
    return AUTO_BACKBONES.get(device.type, AUTO_BACKBONES["cuda"])


def resolve_auto_backbone(config: Any) -> str | None:
    """Replace a config's `backbone: auto` by the device's choice (in place).

    Returns a line saying what was picked, or None when the backbone was named explicitly.
    """
    if config.backbone != "auto":
        return None
    device = resolve_device(config.device)
    config.backbone, config.cifar_stem = auto_backbone(device)
    stem = " with the cifar stem" if config.cifar_stem else ""
    return f"backbone auto -> {config.backbone}{stem} ({device.type})"
