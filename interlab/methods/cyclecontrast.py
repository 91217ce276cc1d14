"""CycleContrast (Wu & Wang, ICCV 2021): MoCo v2 plus a cross-video cycle-consistency loss.

Per item (one frame a of a video): two crops of a (query x_q, key x_k) and one crop of
another frame b of the same video (x_b). Two losses share the query's backbone feature:

- intra-video: MoCo InfoNCE of the query against b's key (the other frame is the positive);
- cross-video cycle: the query's cycle embedding takes its soft nearest neighbour among a
  random support split of the cycle queue (other videos), and that neighbour must pick out
  b's cycle key against the disjoint rest of the queue (InfoNCE).

Total = intra + cycle_weight * cycle. Fixes over the released code: queues store each entry's
video id, and entries of the query's own video are masked out of the MoCo negatives, the
support and the cycle negatives; every queue must be shorter than an epoch; one device needs
no process group (split-BN stands in for shuffle-BN). Image sets without videos become
pseudo-videos (see `interlab.videos`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlab.augment import AugmentConfig
from interlab.data import ImageSet
from interlab.data.shards import ShardSet
from interlab.distributed import gather_cat, world_size
from interlab.losses import cycle_loss, info_nce
from interlab.methods.base import MethodSetup
from interlab.methods.moco import MoCo, MoCoOptions, fifo_write, scaled_queue
from interlab.nets import MLPHead, make_momentum_copy, momentum_update
from interlab.videos import PseudoVideoConfig, VideoIndex, frame_pairs

INTRA_POSITIVES = ("other_frame", "same_frame")
CYCLE_QUEUE = 8192  # 2,048 support + 6,144 negatives on CIFAR-10 (the release: 81,920 on R2V2)


@dataclass
class CycleContrastOptions(MoCoOptions):
    """MoCo v2 options plus the cycle branch (sizes for CIFAR-scale data: queues < one epoch)."""

    cycle_queue_size: int | None = None  # None: 8192, or less to stay well under one epoch
    support_size: int | None = None  # None: a quarter of the cycle queue; the rest are negatives
    cycle_weight: float = 0.1
    nn_temperature: float | None = None  # soft-NN temperature; None = `temperature`
    separate_head: bool = True  # a cycle head of its own (False: reuse the MoCo head)
    intra_positive: str = "other_frame"  # or "same_frame" (plain MoCo on frame a)
    mask_same_video: bool = True
    pseudo_frames: int = 4
    pseudo_zoom: tuple[float, float] = (0.6, 1.0)
    pseudo_pan: float = 0.25
    pseudo_drift: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.symmetric:
            raise ValueError("symmetric=True is not part of CycleContrast; use symmetric=false")
        self.check_support()
        if self.cycle_weight < 0:
            raise ValueError(f"cycle_weight must be >= 0; got {self.cycle_weight}")
        if self.nn_temperature is not None and self.nn_temperature <= 0:
            raise ValueError(f"nn_temperature must be > 0; got {self.nn_temperature}")
        if self.intra_positive not in INTRA_POSITIVES:
            raise ValueError(
                f"unknown intra_positive {self.intra_positive!r}; valid: {', '.join(INTRA_POSITIVES)}"
            )
        self.pseudo_video_config()  # range checks

    def check_support(self) -> None:
        if self.cycle_queue_size is not None and self.cycle_queue_size < 2:
            raise ValueError(f"cycle_queue_size must be >= 2; got {self.cycle_queue_size}")
        if self.support_size is None:
            return
        ceiling = self.cycle_queue_size or CYCLE_QUEUE
        if not 0 < self.support_size < ceiling:
            raise ValueError(
                f"support_size must be in (0, cycle_queue_size={ceiling}); got {self.support_size}"
            )

    def scaled_to(self, num_samples: int) -> dict[str, Any]:
        """MoCo's queue, the cycle queue (both under one epoch) and the support split."""
        sizes = super().scaled_to(num_samples)
        if self.cycle_queue_size is None:
            self.cycle_queue_size = scaled_queue(CYCLE_QUEUE, num_samples)
        if self.support_size is None:
            self.support_size = max(1, self.cycle_queue_size // 4)
        self.check_support()
        return {
            **sizes,
            "cycle_queue_size": self.cycle_queue_size,
            "support_size": self.support_size,
        }

    def pseudo_video_config(self) -> PseudoVideoConfig:
        return PseudoVideoConfig(
            self.pseudo_frames, tuple(self.pseudo_zoom), self.pseudo_pan, self.pseudo_drift
        )


class CycleContrast(MoCo):
    """MoCo v2 with a cycle head, its momentum twin and a cycle queue of (key, video, label)."""

    name = "cyclecontrast"
    options_class = CycleContrastOptions
    graph_safe = (
        False  # its step (frame draws, cycle diagnostics) is not checked free of host syncs
    )

    def __init__(
        self,
        setup: MethodSetup,
        options: CycleContrastOptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        _check_queues_shorter_than_an_epoch(options, setup.num_samples)
        if setup.batch_size * world_size() > options.cycle_queue_size - options.support_size:
            raise ValueError(
                f"the cycle negatives (cycle_queue_size - support_size = "
                f"{options.cycle_queue_size - options.support_size}) must hold at least one "
                f"step's keys ({setup.batch_size * world_size()})"
            )
        self.pseudo_video = options.pseudo_video_config()
        width = self.encoder.backbone.feature_dim
        hidden = options.proj_hidden or width
        self.cycle_head = (
            MLPHead(width, hidden, options.proj_dim, options.proj_layers, options.proj_bn)
            if options.separate_head
            else None
        )
        self.key_cycle_head = make_momentum_copy(self.cycle_head) if self.cycle_head else None
        self.register_buffer("queue_videos", torch.full((options.queue_size,), -1))
        queue = F.normalize(torch.randn(options.cycle_queue_size, options.proj_dim), dim=1)
        self.register_buffer("cycle_queue", queue)
        self.register_buffer("cycle_videos", torch.full((options.cycle_queue_size,), -1))
        self.register_buffer("cycle_labels", torch.full((options.cycle_queue_size,), -1))
        self.register_buffer("cycle_ptr", torch.zeros((), dtype=torch.long))
        self.video_index: VideoIndex | None = None
        self.item_labels: Tensor | None = None

    def networks_to_compile(self) -> list[nn.Module]:
        """Backbones and heads: the step runs one backbone pass and feeds it to two heads."""
        modules = [self.encoder.backbone, self.encoder.head]
        modules += [self.key_encoder.backbone, self.key_encoder.head]
        return modules + [h for h in (self.cycle_head, self.key_cycle_head) if h is not None]

    # ---- data ---------------------------------------------------------------------------
    def on_fit_start(self, train_set: ImageSet | ShardSet) -> None:
        """Real videos get an index of their frames; still images become pseudo-videos. Both
        tables live where the queues do: every step indexes them with its indices."""
        device = self.queue.device
        videos = train_set.videos
        self.video_index = None if videos is None else VideoIndex(videos.to(device))
        self.item_labels = train_set.labels.to(device)

    def item_videos(self, indices: Tensor) -> Tensor:
        """The video of each item: its video id, or the image itself for pseudo-videos."""
        return indices if self.video_index is None else self.video_index.videos[indices]

    def frame_pair(self, data: ImageSet, indices: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 frames a (the items) and b (another frame of each item's video)."""
        if data.videos is None:
            return frame_pairs(data.images[indices], self.pseudo_video, self.generator)
        index = self.video_index or VideoIndex(data.videos)
        return data.images[indices], data.images[index.other_frames(indices, self.generator)]

    def shard_problem(self, data: ShardSet) -> str | None:
        """Pseudo-videos render frames from fixed-size stills: shards need real video frames."""
        if data.videos is None:
            return "it needs frames shards (interlab prepare --frames) to stream"
        return None

    def rows_to_decode(self, indices: Tensor) -> None:
        """Each item's other frame is drawn at step time: nothing to decode ahead."""
        return None

    def views_for(self, data: ImageSet | ShardSet, indices: Tensor) -> list[Tensor]:
        """[x_q, x_k] two crops of frame a, then x_b one crop of frame b, in one augment call.
        From frames shards both frames are decoded in one padded batch."""
        if isinstance(data, ShardSet):
            index = self.video_index or VideoIndex(data.videos)
            other = index.other_frames(indices, self.generator)
            # The items' rows come from the epoch order's host copy; the other frames are drawn
            # on the device, so reading their rows back is this step's one wait for it.
            rows = np.concatenate([data.host_rows(indices), data.host_rows(other)])
            frames, sizes = data.padded_batch(rows, data.device)
            (frame_a, frame_b), (size_a, size_b) = frames.chunk(2), sizes.chunk(2)
            abb = torch.cat([frame_a, frame_a, frame_b])
            views = self.augment(abb, self.generator, torch.cat([size_a, size_a, size_b]))
            return list(views.chunk(3))
        frame_a, frame_b = self.frame_pair(data, indices)
        views = self.augment(torch.cat([frame_a, frame_a, frame_b]), self.generator)
        return list(views.chunk(3))

    # ---- the step -----------------------------------------------------------------------
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(MoCo query z, cycle query y) from one backbone pass, both L2-normalised."""
        features = self.encoder.backbone(images)
        z = F.normalize(self.encoder.head(features), dim=1)
        if self.cycle_head is None:
            return z, z
        return z, F.normalize(self.cycle_head(features), dim=1)

    @torch.no_grad()
    def key_embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Key-side (MoCo key, cycle key); the batch is shuffled across split-BN groups."""
        order = torch.arange(len(images), device=images.device)
        if self.options.shuffle_keys:
            order = torch.randperm(len(images), device=images.device, generator=self.generator)
        features = self.key_encoder.backbone(images[order])[torch.argsort(order)]
        k = F.normalize(self.key_encoder.head(features), dim=1)
        if self.key_cycle_head is None:
            return k, k
        return k, F.normalize(self.key_cycle_head(features), dim=1)

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        x_q, x_k, x_b = views
        videos = self.item_videos(indices)
        z, y = self.embed(x_q)
        keys, cycle_keys = self.key_embed(torch.cat([x_k, x_b]))
        k_a, k_b = keys.chunk(2)
        kc_a, kc_b = cycle_keys.chunk(2)
        positive = k_b if self.options.intra_positive == "other_frame" else k_a
        loss_intra = info_nce(
            z,
            positive,
            self.queue.clone(),
            self.options.temperature,
            self.own_video(videos, self.queue_videos),
        )
        loss_cycle, weights, support = self.cycle_branch(y, kc_b, videos)
        loss = loss_intra + self.options.cycle_weight * loss_cycle
        metrics = self.cycle_diagnostics(weights, support, indices)
        self.enqueue_all(k_a, kc_a, videos, self.labels_of(indices))
        return {
            "loss": loss,
            "loss_intra": loss_intra.detach(),
            "loss_cycle": loss_cycle.detach(),
            **metrics,
        }

    def own_video(self, videos: Tensor, queued: Tensor) -> Tensor | None:
        """(B, K) True where a queue entry comes from the query's own video (masked out)."""
        if not self.options.mask_same_video:
            return None
        return queued.unsqueeze(0) == videos.unsqueeze(1)

    def cycle_branch(
        self, y: Tensor, kc_b: Tensor, videos: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cycle loss with a fresh random support/negative split of the cycle queue."""
        size = len(self.cycle_queue)
        split = torch.randperm(size, device=y.device, generator=self.generator)
        support, negatives = split[: self.options.support_size], split[self.options.support_size :]
        loss, weights = cycle_loss(  # the gathers copy: the later enqueue cannot alter them
            y,
            self.cycle_queue[support],
            kc_b,
            self.cycle_queue[negatives],
            self.options.temperature,
            self.options.nn_temperature,
            self.own_video(videos, self.cycle_videos[support]),
            self.own_video(videos, self.cycle_videos[negatives]),
        )
        return loss, weights, support

    def labels_of(self, indices: Tensor) -> Tensor:
        if self.item_labels is None:
            return torch.full_like(indices, -1)
        return self.item_labels[indices]

    @torch.no_grad()
    def cycle_diagnostics(
        self, weights: Tensor, support: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        """How the forward step behaves: weight entropy and whether the top neighbour shares
        the query's class (only where both classes are known; labels never train anything)."""
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=1).mean()
        top = self.cycle_labels[support[weights.argmax(dim=1)]]
        own = self.labels_of(indices)
        known = (top >= 0) & (own >= 0)
        same = ((top == own) & known).sum() / known.sum().clamp_min(1)
        return {"support_entropy": entropy, "neighbour_same_class": same.float()}

    @torch.no_grad()
    def enqueue_all(self, k_a: Tensor, kc_a: Tensor, videos: Tensor, labels: Tensor) -> None:
        """Frame a's key crop enters both queues with its video id (and class, for metrics)."""
        k_a, kc_a = gather_cat(k_a), gather_cat(kc_a)
        videos, labels = gather_cat(videos), gather_cat(labels)
        fifo_write([self.queue, self.queue_videos], [k_a, videos], self.queue_ptr)
        fifo_write(
            [self.cycle_queue, self.cycle_videos, self.cycle_labels],
            [kc_a, videos, labels],
            self.cycle_ptr,
        )

    def after_step(self, progress: float) -> None:
        super().after_step(progress)
        if self.cycle_head is not None:
            momentum_update(self.key_cycle_head, self.cycle_head, self.options.encoder_momentum)


def _check_queues_shorter_than_an_epoch(options: CycleContrastOptions, num_samples: int) -> None:
    """A queue longer than an epoch holds an item twice: it becomes its own neighbour."""
    if num_samples <= 0:
        return
    for name in ("queue_size", "cycle_queue_size"):
        size = getattr(options, name)
        if size >= num_samples:
            raise ValueError(
                f"{name}={size} must be smaller than the {num_samples} items of one epoch, "
                "or items re-enter the queue as their own neighbours"
            )
