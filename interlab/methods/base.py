"""What every method shares: an encoder (backbone + projection head) and the trainer's hooks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlab.augment import Augment, AugmentConfig
from interlab.config import TrainConfig
from interlab.nets import MLPHead, build_backbone


class Encoder(nn.Module):
    """Backbone followed by a projection head; returns L2-normalised embeddings."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(images)), dim=1)


def build_encoder(
    config: TrainConfig, proj_dim: int, proj_hidden: int | None, proj_layers: int, batch_norm: bool
) -> Encoder:
    backbone = build_backbone(config.backbone, cifar_stem=config.cifar_stem)
    hidden = proj_hidden or backbone.feature_dim
    head = MLPHead(
        backbone.feature_dim, hidden, proj_dim, num_layers=proj_layers, batch_norm=batch_norm
    )
    return Encoder(backbone, head)


class Method(nn.Module):
    """Base class: a method turns a batch of uint8 images into named losses.

    The trainer calls, per step: `make_views` (augmentation, outside autocast), `forward`
    (returns a dict with a differentiable "loss" plus detached scalars to log), then
    `after_step` once the optimiser has stepped (momentum updates). Buffers registered by a
    method (queues, banks) are saved in checkpoints with the weights.
    """

    name: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(self, config: TrainConfig, options: Any, augment: AugmentConfig) -> None:
        super().__init__()
        self.config = config
        self.options = options
        self.augment = Augment(augment)
        self.generator: torch.Generator | None = None  # set by the trainer, checkpointed there

    @property
    def backbone(self) -> nn.Module:
        """The network evaluated by kNN / linear probes."""
        raise NotImplementedError

    def make_views(self, images: Tensor) -> list[Tensor]:
        """Two independently augmented views of each image (uint8 NHWC in, float NCHW out)."""
        return [self.augment(images, self.generator), self.augment(images, self.generator)]

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; `progress` runs from 0 to 1 over training."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Per-epoch figures for metrics.jsonl (method specific)."""
        return {}
