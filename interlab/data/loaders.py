"""``load_dataset``: every data set by name, as one in-memory ImageSet per split.

Names understood: ``cifar10-mini`` (the embedded 6,000-image subset), ``cifar10-mini10k``
(the same training images with the whole 10,000-image test split, embedded too), ``cifar10``,
``cifar100``, ``stl10`` (torchvision, downloaded on first use), ``npz:PATH`` (the compact
JPEG format of ``data/README.md``), ``folder:PATH`` (an ImageFolder tree), ``frames:PATH``
(one folder per video, read by :mod:`interlab.videos`) and ``shards:DIR`` (an ``interlab
prepare`` folder, streamed: a :class:`ShardSet` rather than an in-memory set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets

from interlab.data.compact_jpeg import PathLike, read_npz
from interlab.data.folders import DEFAULT_FOLDER_IMAGE_SIZE, load_folder
from interlab.data.imageset import ImageSet, check_positive_int, check_split
from interlab.data.shards import ShardSet

DATASET_NAMES: tuple[str, ...] = ("cifar10-mini", "cifar10-mini10k", "cifar10", "cifar100", "stl10")
DATASET_PREFIXES: tuple[str, ...] = ("npz:", "folder:", "frames:", "shards:")
CIFAR_SPLITS: tuple[str, ...] = ("train", "test")
STL10_SPLITS: tuple[str, ...] = ("train", "test", "unlabeled", "train+unlabeled")

# The repository's data/ folder: this file sits in interlab/data/, two levels below it.
_MINI_FILE = Path(__file__).resolve().parents[2] / "data" / "cifar10_mini.npz"
# The mini set's 5,000 training images with CIFAR-10's whole 10,000-image test split: kNN on
# 1,000 test images has a standard error of about 1.6 points, on 10,000 about 0.5.
_MINI10K_FILE = _MINI_FILE.with_name("cifar10_mini10k.npz")
_COMPACT_COPIES = {"cifar10": "cifar10.npz", "cifar100": "cifar100.npz"}
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the float32 working copy

DecodeDevice = torch.device | str | None


def load_dataset(
    name: str,
    split: str = "train",
    root: PathLike | None = None,
    image_size: int | None = None,
    decode_device: DecodeDevice = None,
) -> ImageSet | ShardSet:
    """Loads a whole split by name (see :data:`DATASET_NAMES` and :data:`DATASET_PREFIXES`).

    ``root`` is where torchvision datasets live (default :func:`default_root`); a compact
    ``cifar10.npz`` / ``cifar100.npz`` there is used instead of downloading. ``image_size``
    resizes (antialiased) to that square side; folders default to 32. ``decode_device``
    applies to the JPEG-based sets (``cifar10-mini``, ``npz:``, compact copies).
    """
    if image_size is not None:
        check_positive_int(image_size, "image_size")
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a str, got {type(name).__name__}")
    if name.startswith("shards:"):
        return load_shards(_path_after_prefix(name), split)
    image_set = _load_by_name(name, split, root, image_size, decode_device)
    if image_size is not None and image_size != image_set.image_size:
        image_set.images = _resize_square(image_set.images, image_size)
    image_set.name = f"{name}/{split}"
    return image_set


def _load_by_name(
    name: str,
    split: str,
    root: PathLike | None,
    image_size: int | None,
    decode_device: DecodeDevice,
) -> ImageSet:
    folder_side = image_size if image_size is not None else DEFAULT_FOLDER_IMAGE_SIZE
    if name.startswith("folder:"):
        return load_folder(_path_after_prefix(name), split, folder_side)
    if name.startswith("frames:"):
        # interlab.videos builds on this package, so it is imported only when asked for.
        from interlab.videos import load_frames

        return load_frames(_path_after_prefix(name), split, folder_side)
    if name.startswith("npz:"):
        return read_npz(_path_after_prefix(name), split, decode_device)
    if name == "cifar10-mini":
        check_split(name, split, CIFAR_SPLITS)
        return read_npz(_mini_path(), split, decode_device)
    if name == "cifar10-mini10k":
        check_split(name, split, CIFAR_SPLITS)
        return read_npz(_MINI10K_FILE, split, decode_device)
    if name in _COMPACT_COPIES:
        return _load_cifar(name, split, _root_or_default(root), decode_device)
    if name == "stl10":
        return _load_stl10(split, _root_or_default(root))
    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}, "
        f"or a path after one of the prefixes {', '.join(DATASET_PREFIXES)}"
    )


def load_shards(directory: Path, split: str) -> ShardSet:
    """A prepared folder's split, streamed; `test` falls back to `val/` (ImageNet's name)."""
    if split == "test" and not (directory / "test").is_dir() and (directory / "val").is_dir():
        split = "val"
    return ShardSet(directory, split)


def _path_after_prefix(name: str) -> Path:
    return Path(name.split(":", 1)[1]).expanduser()


def default_root() -> Path:
    """Where downloads go: ``$INTERLAB_DATA`` when set, else ``~/.cache/interlab/data``."""
    configured = os.environ.get("INTERLAB_DATA")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "interlab" / "data"


def _mini_path() -> Path:
    configured = os.environ.get("INTERLAB_MINI")
    return Path(configured).expanduser() if configured else _MINI_FILE


def _root_or_default(root: PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 NHWC images, in chunks to bound memory."""
    resized = [_resize_chunk(chunk, size) for chunk in images.split(_RESIZE_CHUNK)]
    return torch.cat(resized).contiguous()


def _resize_chunk(chunk: torch.Tensor, size: int) -> torch.Tensor:
    planar = chunk.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
    if chunk.device.type == "cpu":
        # CPU resizes uint8 directly (Pillow-like and ~15x faster than going through float).
        scaled = F.interpolate(planar, size=(size, size), mode="bilinear", antialias=True)
    else:
        scaled = F.interpolate(planar.float(), size=(size, size), mode="bilinear", antialias=True)
        scaled = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1)


def _from_numpy_nhwc(data: np.ndarray, targets: object, classes: list[str]) -> ImageSet:
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    labels = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    return ImageSet(images, labels, list(classes))


def _load_cifar(name: str, split: str, root: Path, decode_device: DecodeDevice) -> ImageSet:
    """A compact copy in ``root`` if present (offline use), else torchvision's download."""
    check_split(name, split, CIFAR_SPLITS)
    compact = root / _COMPACT_COPIES[name]
    if compact.is_file():
        return read_npz(compact, split, decode_device)
    loader = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    dataset = loader(root=str(root), train=split == "train", download=True)
    return _from_numpy_nhwc(dataset.data, dataset.targets, dataset.classes)


def _load_stl10(split: str, root: Path) -> ImageSet:
    check_split("stl10", split, STL10_SPLITS)
    dataset = datasets.STL10(root=str(root), split=split, download=True)
    nhwc = dataset.data.transpose(0, 2, 3, 1)  # torchvision keeps STL-10 as (N, 3, H, W)
    return _from_numpy_nhwc(nhwc, dataset.labels, dataset.classes)
