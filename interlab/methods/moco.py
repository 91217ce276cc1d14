"""MoCo v2: a momentum key encoder and a FIFO queue of keys as negatives (He et al., Chen et al.)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from interlab.augment import AugmentConfig
from interlab.distributed import gather_cat, world_size
from interlab.losses import info_nce
from interlab.methods.base import Method, MethodSetup, ProjectionOptions, build_encoder
from interlab.nets import convert_split_batchnorm, make_momentum_copy, momentum_update


@dataclass
class MoCoOptions(ProjectionOptions):
    """MoCo v2 defaults (MLP head of the backbone's width); the CIFAR-10 recipe is a named config."""

    queue_size: int | None = None  # None: 4096, or less to stay well under one epoch
    encoder_momentum: float = 0.99
    symmetric: bool = False
    split_bn: int = 8  # BN groups emulating shuffle-BN on one device; 1 = plain BN
    shuffle_keys: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queue_size is not None and self.queue_size <= 0:
            raise ValueError(f"queue_size must be > 0; got {self.queue_size}")
        if not 0.0 <= self.encoder_momentum <= 1.0:
            raise ValueError(f"encoder_momentum must be in [0, 1]; got {self.encoder_momentum}")
        if self.split_bn < 1:
            raise ValueError(f"split_bn must be >= 1; got {self.split_bn}")

    def scaled_to(self, num_samples: int) -> dict[str, Any]:
        """Fill the sizes left as None from the training-set size; returns the values used."""
        if self.queue_size is None:
            self.queue_size = scaled_queue(MOCO_QUEUE, num_samples)
        return {"queue_size": self.queue_size}


MOCO_QUEUE = 4096  # the CIFAR-10 recipe's queue, where a longer one stops helping


def scaled_queue(ceiling: int, num_samples: int) -> int:
    """The largest power of two <= min(ceiling, N / 2): a queue well under one epoch, so an
    image's stale key from the last epoch has left it before the image comes back."""
    if num_samples <= 0:  # size unknown (a method built without data)
        return ceiling
    limit = max(1, min(ceiling, num_samples // 2))
    return 1 << (limit.bit_length() - 1)


class MoCo(Method):
    """Query encoder trained by InfoNCE against its momentum twin's keys and a queue."""

    name = "moco"
    options_class = MoCoOptions

    def __init__(
        self,
        setup: MethodSetup,
        options: MoCoOptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        self.resolved_sizes = options.scaled_to(setup.num_samples)
        keys_per_step = setup.batch_size * world_size() * (2 if options.symmetric else 1)
        if keys_per_step > options.queue_size:
            raise ValueError(
                f"queue_size={options.queue_size} is smaller than the keys enqueued per step "
                f"({keys_per_step}); use a larger queue or a smaller batch"
            )
        self.encoder = build_encoder(setup, options)
        if options.split_bn > 1 and world_size() == 1:
            convert_split_batchnorm(self.encoder, options.split_bn)
        self.key_encoder = make_momentum_copy(self.encoder)
        queue = F.normalize(torch.randn(options.queue_size, options.proj_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self) -> torch.nn.Module:
        return self.encoder.backbone

    @property
    def embedder(self) -> torch.nn.Module:
        return self.encoder

    def networks_to_compile(self) -> list[torch.nn.Module]:
        return [self.encoder, self.key_encoder]

    @torch.no_grad()
    def keys(self, images: Tensor) -> Tensor:
        """Key embeddings; on one device the batch is shuffled so split-BN groups differ from the query's."""
        if not self.options.shuffle_keys:
            return self.key_encoder(images)
        order = torch.randperm(len(images), device=images.device, generator=self.generator)
        keys = self.key_encoder(images[order])
        return keys[torch.argsort(order)]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest queue entries with this step's keys from all ranks."""
        fifo_write([self.queue], [gather_cat(keys)], self.queue_ptr)

    def contrast(self, query: Tensor, key: Tensor) -> Tensor:
        return info_nce(query, key, self.queue.clone().detach(), self.options.temperature)

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        view1, view2 = views
        query1 = self.encoder(view1)
        key2 = self.keys(view2)
        if not self.options.symmetric:
            loss = self.contrast(query1, key2)
            self.enqueue(key2)
            return {"loss": loss, "loss_contrast": loss.detach()}
        query2 = self.encoder(view2)
        key1 = self.keys(view1)
        # A sum, not a mean, as in the MoCo CIFAR-10 recipe: its learning rate applies unchanged.
        loss = self.contrast(query1, key2) + self.contrast(query2, key1)
        self.enqueue(torch.cat([key2, key1]))
        return {"loss": loss, "loss_contrast": loss.detach()}

    def after_step(self, progress: float) -> None:
        momentum_update(self.key_encoder, self.encoder, self.options.encoder_momentum)


@torch.no_grad()
def fifo_write(buffers: list[Tensor], values: list[Tensor], pointer: Tensor) -> None:
    """Overwrite the oldest rows of same-length ring buffers (a queue and its side columns)
    with `values`, and advance their shared `pointer`."""
    size, count = len(buffers[0]), len(values[0])
    slots = (pointer + torch.arange(count, device=pointer.device)) % size
    for buffer, value in zip(buffers, values, strict=True):
        buffer[slots] = value.to(buffer.dtype)
    pointer.copy_((pointer + count) % size)
