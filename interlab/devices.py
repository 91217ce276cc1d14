"""Devices and how networks run on them: device choice, backbone=auto, the precision policy."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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


# ---- precision and memory format ----------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How the networks run on one device: autocast dtype, memory format, TF32, compilation.

    One policy serves the trainer, feature extraction (kNN, bank initialisation, probes) and
    the explorers, so a run is evaluated the way it trained. Sections that must stay exact
    (InterCLR's bank similarities and MarginNCE, DINO's prototypes, every loss's softmax)
    switch autocast off themselves.
    """

    device_type: str
    dtype: torch.dtype | None = None  # autocast dtype; None = full precision
    channels_last: bool = False
    compile: bool = False

    def autocast(self, cache: bool = True) -> AbstractContextManager:
        """The forward passes' autocast region (nothing in full precision). `cache=False`
        re-casts weights at each use: what a step captured as a CUDA graph needs."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    def images(self, batch: Tensor) -> Tensor:
        """A 4-D image batch in the policy's memory format."""
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def prepare(self, module: nn.Module) -> nn.Module:
        """Weights in the policy's memory format (conv kernels channels_last)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def describe(self) -> str:
        dtype = "bf16 autocast" if self.dtype == torch.bfloat16 else "fp32"
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.device_type}: {dtype}{layout}{', compiled' if self.compile else ''}"


def full_precision(device: torch.device | str) -> Precision:
    """fp32, contiguous: the exact path (tests, callers without a run)."""
    return Precision(torch.device(device).type)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (CUDA GPUs since Ampere; CPUs with AVX512-BF16 or
    AMX). On an AVX2-only CPU bf16 autocast is emulated: measured 7-12x slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def precision_policy(
    device: torch.device, amp: bool | None = None, channels_last: bool = True, compile: bool = False
) -> Precision:
    """The policy of a run on `device`: `amp` None (auto) = bf16 autocast where the device runs
    bf16 natively, True = bf16 autocast on any device, False = fp32."""
    use_bf16 = native_bf16(device) if amp is None else amp
    return Precision(device.type, torch.bfloat16 if use_bf16 else None, channels_last, compile)


def run_precision(config: Any, device: torch.device) -> Precision:
    """A TrainConfig's policy (its `amp`, `channels_last` and `compile` keys) on `device`."""
    return precision_policy(device, config.amp, config.channels_last, config.compile)


# ---- process-wide CUDA settings ----------------------------------------------------------------

MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for fp32 CUDA matmuls and cuDNN convolutions.

    interlab sets precision through one API only: `torch.set_float32_matmul_precision` for
    matmuls and `cudnn.allow_tf32` for convolutions. Each writes both of torch's records of the
    setting. torch >= 2.9 also has `torch.backends.*.fp32_precision`, but a value set there alone
    leaves the older record behind, which torch's own compiler still reads (inductor's
    autotuning; torch 2.11-2.14), and torch raises "mix of the legacy and new APIs" when the two
    disagree. Mixing `matmul.allow_tf32` with `set_float32_matmul_precision` did exactly that
    on torch 2.11 (the GPU resume test, issue 23)."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def matmul_precision(level: str) -> Iterator[None]:
    """fp32 matmuls at `level` ("highest", "high" or "medium") inside; the caller's level after."""
    if level not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {MATMUL_PRECISIONS}, got {level!r}")
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide CUDA flags of the policy: TF32 matmuls and convolutions (bf16 autocast
    covers the networks; TF32 speeds what runs in fp32, k-means included) and cuDNN autotune.

    `deterministic` trades that speed for runs that repeat bit for bit: autotune picks
    kernels by timing, so two runs (or a run and its resumed copy) may take different ones.
    It also needs cuBLAS's fixed workspace, which importing interlab sets (interlab/__init__.py)
    before any CUDA work."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    set_tf32(not deterministic)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
