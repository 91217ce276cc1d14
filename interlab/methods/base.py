"""What every method shares: an encoder (backbone + projection head) and the trainer's hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlab.augment import Augment, AugmentConfig
from interlab.data import ImageSet
from interlab.data.shards import ShardSet
from interlab.devices import Precision, full_precision
from interlab.nets import MLPHead, build_backbone


class Encoder(nn.Module):
    """Backbone followed by a projection head; returns L2-normalised embeddings."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(images)), dim=1)


@dataclass
class ProjectionOptions:
    """Options every contrastive method shares: its projection head and its temperature."""

    proj_dim: int = 128
    proj_hidden: int | None = None  # None: the backbone's feature width
    proj_layers: int = 2  # 1 = a plain linear layer, 2+ = an MLP
    proj_bn: bool = False  # BN inside the MLP head
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if self.proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1; got {self.proj_dim}")
        if self.proj_layers < 1:
            raise ValueError(f"proj_layers must be >= 1; got {self.proj_layers}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")


@dataclass(frozen=True)
class MethodSetup:
    """What a method takes from its run, and no more (methods never see the whole TrainConfig).

    The backbone to build, the per-process batch size (queue checks), the number of epochs
    (schedules), the seed (k-means), the training-set size (banks, queue scaling), its number
    of classes (InterCLR's class-label controls; 0 = unknown) and which augmentation keys the
    user set explicitly (a method may refuse one it overrides).
    """

    backbone: str = "convnet"
    cifar_stem: bool = False
    batch_size: int = 256
    epochs: int = 1
    seed: int = 0
    num_samples: int = 0
    num_classes: int = 0
    augment_keys_set: frozenset[str] = field(default_factory=frozenset)

    def build_backbone(self) -> nn.Module:
        """A fresh, randomly initialised backbone of the run's kind."""
        return build_backbone(self.backbone, cifar_stem=self.cifar_stem)


def build_encoder(setup: MethodSetup, options: ProjectionOptions) -> Encoder:
    """The run's backbone with the options' projection head."""
    backbone = setup.build_backbone()
    hidden = options.proj_hidden or backbone.feature_dim
    head = MLPHead(
        backbone.feature_dim,
        hidden,
        options.proj_dim,
        num_layers=options.proj_layers,
        batch_norm=options.proj_bn,
    )
    return Encoder(backbone, head)


class Method(nn.Module):
    """Base class: a method turns a batch of uint8 images into named losses.

    The trainer calls, per step: `views_for` (augmentation, outside autocast), `forward`
    (returns a dict with a differentiable "loss" plus detached scalars to log),
    `before_optimizer_step` after backward, then `after_step` once the optimiser has stepped
    (momentum updates). Buffers registered by a
    method (queues, banks) are saved in checkpoints with the weights.
    """

    name: ClassVar[str]
    options_class: ClassVar[type]
    # The step can be captured as a CUDA graph (`cuda_graph=true`): it syncs with the host
    # nowhere and reads no schedule (`progress`) or counter on the host.
    graph_safe: ClassVar[bool] = False

    def __init__(self, setup: MethodSetup, options: Any, augment: AugmentConfig) -> None:
        super().__init__()
        self.setup = setup
        self.options = options
        self.resolved_sizes: dict[str, Any] = {}  # option values filled from the data size
        self.augment = Augment(augment)
        self.generator: torch.Generator | None = None  # set by the trainer, checkpointed there
        self.precision: Precision = full_precision("cpu")  # the trainer sets the run's policy

    def resolved_options(self) -> dict[str, Any]:
        """Options left unset (None) and filled from the training-set size, with the values
        used; the trainer records them in the run's config.yaml."""
        return dict(self.resolved_sizes)

    @property
    def backbone(self) -> nn.Module:
        """The network evaluated by kNN / linear probes."""
        raise NotImplementedError

    @property
    def embedder(self) -> nn.Module | None:
        """The network whose output is the method's embedding (backbone + projection head).

        kNN on its L2-normalised output is `knn_top1_head`: the MoCo CIFAR-10 demo's
        published 82.6 / 85.3 are that (its network ends in the fc), not the pooled backbone.
        None for a method without such a head.
        """
        return None

    def warm_start_encoders(self) -> list[nn.Module]:
        """The query encoder (backbone + projection head) first, then its momentum copies: the
        networks `init_from` overwrites with a trained run's query encoder. Empty for a method
        without such an encoder, which then refuses a warm start."""
        return []

    def networks_to_compile(self) -> list[nn.Module]:
        """The modules whose forward a training step calls, each compiled on its own by
        `compile=true` (a module called through its parts would skip its compiled forward)."""
        raise NotImplementedError

    def compile_networks(self) -> None:
        """torch.compile every network a step calls, in place (`nn.Module.compile`)."""
        for module in self.networks_to_compile():
            module.compile()

    def make_views(self, images: Tensor, sizes: Tensor | None = None) -> list[Tensor]:
        """Two independently augmented views of each image (uint8 NHWC in, float NCHW out);
        `sizes`: the images' own sizes in a padded batch streamed from shards. Both views come
        from one augmentation call over the batch twice (half the kernel launches); each
        sample of each view still draws its own parameters."""
        twice = None if sizes is None else sizes.repeat(2, 1)
        return list(self.augment(images.repeat(2, 1, 1, 1), self.generator, twice).chunk(2))

    def shard_problem(self, data: ShardSet) -> str | None:
        """Why this method cannot stream from `data`, or None: every view is drawn from the
        full-size images of a padded batch (`make_views(images, sizes)`)."""
        return None

    def rows_to_decode(self, indices: Tensor) -> Tensor | None:
        """The shard rows `views_for(data, indices)` will decode, so the trainer can decode
        them during the step before; None when they are drawn only at step time."""
        return indices

    def views_for(self, data: ImageSet | ShardSet, indices: Tensor) -> list[Tensor]:
        """The step's views of items `indices` of `data` (video methods pick other frames here).
        From shards the batch is decoded now, each crop drawn from its image's full size."""
        if isinstance(data, ShardSet):
            return self.make_views(*data.padded_batch(indices, data.device))
        return self.make_views(data.images[indices])

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """Called between backward and the optimiser step (gradient clipping, frozen layers)."""

    def on_fit_start(self, train_set: ImageSet) -> None:
        """Called once per `fit`, after any resume, before the first step (banks fill here)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch; `epoch` counts from 0."""

    def after_step(self, progress: float) -> dict[str, Tensor] | None:
        """Called after each optimiser step; `progress` runs from 0 to 1 over training.

        May return detached scalars to log alongside the forward's (averaged per epoch).
        """
        return None

    def snapshot(self) -> dict[str, Any]:
        """Arrays worth replaying later (a memory bank); empty for methods without one."""
        return {}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Per-epoch figures for metrics.jsonl (method specific)."""
        return {}
