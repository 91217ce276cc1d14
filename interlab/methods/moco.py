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
from interlab.nets import MomentumUpdate, convert_split_batchnorm, make_momentum_copy


@dataclass
class MoCoOptions(ProjectionOptions):
    """MoCo v2 defaults (MLP head of the backbone's width); the CIFAR-10 recipe is a named config."""

    queue_size: int | None = None  # None: 4096, or less to stay well under one epoch
    encoder_momentum: float = 0.99
    symmetric: bool = False
    split_bn: int = 8  # BN groups per view emulating shuffle-BN on one device; 1 = plain BN
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
    graph_safe = True

    def __init__(
        self,
        setup: MethodSetup,
        options: MoCoOptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        self.resolved_sizes = self.scale_options(setup)
        keys_per_step = setup.batch_size * world_size() * (2 if options.symmetric else 1)
        if keys_per_step > options.queue_size:
            raise ValueError(
                f"queue_size={options.queue_size} is smaller than the keys enqueued per step "
                f"({keys_per_step}); use a larger queue or a smaller batch"
            )
        self.encoder = build_encoder(setup, options)
        # On one device the views of a step share one encoder call (batched_views), each view
        # keeping its own `split_bn` BN groups, as each GPU's BN would see one view's sub-batch.
        # A BN in the head is not split: it would pool the views, so they keep a pass each.
        self.batched_views = world_size() == 1 and not options.proj_bn
        if world_size() == 1:
            groups = options.split_bn * (self.directions if self.batched_views else 1)
            if groups > 1:
                convert_split_batchnorm(self.encoder, groups)
        self.key_encoder = make_momentum_copy(self.encoder)
        self.momentum_update = MomentumUpdate(self.key_encoder, self.encoder)
        queue = F.normalize(torch.randn(options.queue_size, options.proj_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def scale_options(self, setup: MethodSetup) -> dict[str, Any]:
        """Fill the options' sizes left as None from the run's data; returns the values used.
        A subclass whose sizes need more of the run than N passes it on here."""
        return self.options.scaled_to(setup.num_samples)

    @property
    def directions(self) -> int:
        """Query-key directions per step: 2 in the symmetric recipe (q1-k2 and q2-k1)."""
        return 2 if self.options.symmetric else 1

    @property
    def backbone(self) -> torch.nn.Module:
        return self.encoder.backbone

    @property
    def embedder(self) -> torch.nn.Module:
        return self.encoder

    def networks_to_compile(self) -> list[torch.nn.Module]:
        return [self.encoder, self.key_encoder]

    def warm_start_encoders(self) -> list[torch.nn.Module]:
        """The query encoder, then the key encoder: a warm start begins them equal."""
        return [self.encoder, self.key_encoder]

    @torch.no_grad()
    def keys(self, images: Tensor, views: int = 1) -> Tensor:
        """Key embeddings of `views` stacked view batches. On one device each view's samples are
        shuffled among themselves, so its split-BN groups differ from the query's."""
        if not self.options.shuffle_keys:
            return self.key_encoder(images)
        order = shuffled_within(len(images) // views, views, images.device, self.generator)
        keys = self.key_encoder(images[order])
        unshuffled = torch.empty_like(keys)
        unshuffled[order] = keys
        return unshuffled

    def queries_and_keys(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Each query beside its positive key: rows (q1) against (k2), and in the symmetric
        recipe (q1; q2) against (k2; k1). On one device that is one query pass and one key pass
        over both views, whatever the directions (the same losses and gradients as a pass per
        view: split BN keeps each view's groups apart)."""
        view1, view2 = views
        if not self.options.symmetric:
            return self.encoder(view1), self.keys(view2)
        if self.batched_views:
            both = torch.cat(views)
            return self.encoder(both), self.keys(both, views=2).roll(len(view1), dims=0)
        queries = torch.cat([self.encoder(view1), self.encoder(view2)])
        return queries, torch.cat([self.keys(view2), self.keys(view1)])

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest queue entries with this step's keys from all ranks."""
        fifo_write([self.queue], [gather_cat(keys)], self.queue_ptr)

    def contrast(self, queries: Tensor, keys: Tensor) -> Tensor:
        """The InfoNCE of every direction, summed as in the MoCo CIFAR-10 recipe (its learning
        rate applies unchanged): the mean over the stacked rows times the directions."""
        loss = info_nce(queries, keys, self.queue.clone().detach(), self.options.temperature)
        return loss * self.directions

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        queries, keys = self.queries_and_keys(views)
        loss = self.contrast(queries, keys)
        self.enqueue(keys)
        return {"loss": loss, "loss_contrast": loss.detach()}

    def after_step(self, progress: float) -> None:
        self.momentum_update(self.options.encoder_momentum)


def shuffled_within(size: int, groups: int, device: torch.device, generator=None) -> Tensor:
    """A random order of `groups * size` rows that keeps each block of `size` rows in its
    block (a permutation per block, from one uniform draw: no host sync)."""
    draws = torch.rand(groups, size, device=device, generator=generator)
    offsets = torch.arange(0, groups * size, size, device=device).unsqueeze(1)
    return (draws.argsort(dim=1) + offsets).flatten()


@torch.no_grad()
def fifo_write(buffers: list[Tensor], values: list[Tensor], pointer: Tensor) -> None:
    """Overwrite the oldest rows of same-length ring buffers (a queue and its side columns)
    with `values`, and advance their shared `pointer`."""
    size, count = len(buffers[0]), len(values[0])
    slots = (pointer + torch.arange(count, device=pointer.device)) % size
    for buffer, value in zip(buffers, values, strict=True):
        buffer[slots] = value.to(buffer.dtype)
    pointer.copy_((pointer + count) % size)
