"""ImageSet: a whole split held as one uint8 tensor, so the GPU trainer can move it once.

The checks run when a set is built by hand or by a loader; sets derived from a valid one
(``to``, ``subset``) skip them, since reading tensor values back would sync a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

IndexLike = torch.Tensor | np.ndarray | slice | Sequence[int] | Sequence[bool]


@dataclass(eq=False)
class ImageSet:
    """An in-memory image set that moves to a device as a whole (the GPU trainer keeps it there)."""

    images: torch.Tensor  # uint8 (N, H, W, 3)
    labels: torch.Tensor  # int64 (N,), -1 where unknown
    classes: list[str]
    name: str = ""
    videos: torch.Tensor | None = None  # int64 (N,): the video each frame comes from, if any

    def __post_init__(self) -> None:
        self.classes = _checked_classes(self.classes)
        _check_images(self.images)
        _check_labels(self.labels, self.images, len(self.classes))
        if not isinstance(self.name, str):
            raise ValueError(f"ImageSet name must be a str, got {type(self.name).__name__}")
        if self.videos is not None:
            _check_videos(self.videos, self.images)

    @classmethod
    def _unchecked(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        name: str,
        videos: torch.Tensor | None = None,
    ) -> ImageSet:
        """Builds a set from parts of a valid one, skipping checks that would sync a GPU."""
        image_set = cls.__new__(cls)
        image_set.images, image_set.labels = images, labels
        image_set.classes, image_set.name = list(classes), name
        image_set.videos = videos
        return image_set

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(name={self.name!r}, n={len(self)}, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_size(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        """True when at least one image has a known class (unlabelled sets use -1 throughout)."""
        return bool((self.labels >= 0).any())

    def to(self, device: torch.device | str) -> ImageSet:
        """Moves both tensors whole; host-to-device copies are asynchronous."""
        target = torch.device(device)
        # A device-to-host copy with non_blocking may be read before it lands, so only
        # copies onto an accelerator are made asynchronous.
        non_blocking = target.type != "cpu"
        images = self.images.to(target, non_blocking=non_blocking)
        labels = self.labels.to(target, non_blocking=non_blocking)
        videos = None if self.videos is None else self.videos.to(target, non_blocking=non_blocking)
        return ImageSet._unchecked(images, labels, self.classes, self.name, videos)

    def subset(self, index: IndexLike) -> ImageSet:
        """The images at ``index`` (integer positions, a boolean mask, or a slice), in that order."""
        index = _checked_index(index, len(self), self.device)
        videos = None if self.videos is None else self.videos[index]
        return ImageSet._unchecked(
            self.images[index], self.labels[index], self.classes, self.name, videos
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) views in order, the last one possibly shorter; checks at call time."""
        check_positive_int(batch_size, "batch_size")
        return self._batch_views(batch_size)

    def _batch_views(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.images[start:stop], self.labels[start:stop]


def check_positive_int(value: object, what: str) -> None:
    """Rejects bools as well, which Python would otherwise accept as 1 and 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    """Names the valid splits, so a typo is fixed without reading the loader."""
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(valid)}")


def _checked_classes(classes: object) -> list[str]:
    if isinstance(classes, str) or not isinstance(classes, (list, tuple, np.ndarray)):
        raise ValueError(f"classes must be a list of str, got {type(classes).__name__}")
    names = list(classes)
    not_str = [name for name in names if not isinstance(name, str)]
    if not_str:
        raise ValueError(f"classes must all be str, got {not_str[0]!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes must be unique, got {names}")
    return [str(name) for name in names]


def _check_images(images: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (H == W), got {tuple(images.shape)}")


def _check_labels(labels: object, images: torch.Tensor, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},) to match images, got {tuple(labels.shape)}"
        )
    if labels.device != images.device:
        raise ValueError(f"labels are on {labels.device} but images on {images.device}")
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < -1 or high > num_classes - 1:
        raise ValueError(
            f"labels must lie in [-1, {num_classes - 1}] for {num_classes} classes, "
            f"got values from {low} to {high}"
        )


def _check_videos(videos: object, images: torch.Tensor) -> None:
    if not isinstance(videos, torch.Tensor) or videos.dtype != torch.int64:
        raise ValueError(f"videos must be an int64 torch.Tensor, got {videos!r:.80}")
    if videos.shape != images.shape[:1] or videos.device != images.device:
        raise ValueError(
            f"videos must have shape ({images.shape[0]},) on {images.device} to match images, "
            f"got {tuple(videos.shape)} on {videos.device}"
        )
    if videos.numel() and int(videos.min()) < 0:
        raise ValueError(f"video ids must be >= 0, got {int(videos.min())}")


def _checked_index(index: IndexLike, length: int, device: torch.device) -> slice | torch.Tensor:
    """Turns the accepted index forms into a slice or a 1-D tensor on ``device``, range-checked."""
    if isinstance(index, slice):
        return index
    if isinstance(index, (int, np.integer)):
        raise ValueError(f"subset needs a 1-D index (tensor, array, list or slice), got {index!r}")
    tensor = torch.as_tensor(index)
    if tensor.numel() == 0:
        tensor = tensor.long()  # an empty list arrives as float
    if tensor.ndim != 1:
        raise ValueError(f"subset index must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool:
        if tensor.numel() != length:
            raise ValueError(f"boolean subset mask has length {tensor.numel()}, expected {length}")
    elif tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"subset index must hold integers or booleans, got {tensor.dtype}")
    elif tensor.numel() and (int(tensor.min()) < -length or int(tensor.max()) >= length):
        raise ValueError(
            f"subset index out of range for {length} images: "
            f"got values from {int(tensor.min())} to {int(tensor.max())}"
        )
    return tensor.to(device=device, dtype=torch.bool if tensor.dtype == torch.bool else torch.long)
