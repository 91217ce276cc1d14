"""Image sets held in memory as uint8 tensors, and the loaders that build them.

Every loader returns an :class:`ImageSet`: the whole split as one uint8 (N, H, W, 3) tensor
plus int64 labels. The GPU trainer moves it to the device once and augments there, so the
loaders favour one big array over per-sample datasets.

Names understood by :func:`load_dataset`: ``cifar10-mini`` (the embedded 6,000-image subset),
``cifar10``, ``cifar100``, ``stl10`` (torchvision, downloaded on first use), ``npz:PATH`` (the
compact JPEG format of ``data/README.md``) and ``folder:PATH`` (an ImageFolder tree).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

DATASET_NAMES: tuple[str, ...] = ("cifar10-mini", "cifar10", "cifar100", "stl10")
DATASET_PREFIXES: tuple[str, ...] = ("npz:", "folder:", "frames:")
CIFAR_SPLITS: tuple[str, ...] = ("train", "test")
STL10_SPLITS: tuple[str, ...] = ("train", "test", "unlabeled", "train+unlabeled")
# A folder split name -> the subfolders that may hold it, first match wins.
FOLDER_SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "test": ("test", "val"),
    "val": ("val", "test"),
}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
DEFAULT_FOLDER_IMAGE_SIZE = 32
DEFAULT_JPEG_QUALITY = 95

_MINI_FILE = Path(__file__).resolve().parents[1] / "data" / "cifar10_mini.npz"
_COMPACT_COPIES = {"cifar10": "cifar10.npz", "cifar100": "cifar100.npz"}
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the float32 working copy
_DECODE_CHUNK = 4096  # JPEG files per decoding task
_PROGRESS_MIN_FILES = 2000  # folders smaller than this load without a progress bar
_SOS_MARKER = 0xDA

JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]
IndexLike = torch.Tensor | np.ndarray | slice | Sequence[int] | Sequence[bool]
PathLike = str | Path


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
        _check_positive_int(batch_size, "batch_size")
        return self._batch_views(batch_size)

    def _batch_views(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.images[start:stop], self.labels[start:stop]


def _check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


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


def default_root() -> Path:
    """Where downloads go: ``$INTERLAB_DATA`` when set, else ``~/.cache/interlab/data``."""
    configured = os.environ.get("INTERLAB_DATA")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "interlab" / "data"


def _mini_path() -> Path:
    configured = os.environ.get("INTERLAB_MINI")
    return Path(configured).expanduser() if configured else _MINI_FILE


# ---------------------------------------------------------------------------------------
# The compact JPEG format: one shared header, the scans of each split back to back.
# ---------------------------------------------------------------------------------------


def read_npz(
    path: PathLike, split: str = "train", decode_device: torch.device | str | None = None
) -> ImageSet:
    """Reads one split of a compact JPEG ``.npz`` (format in ``data/README.md``).

    ``decode_device="cuda"`` decodes with nvJPEG and returns the set on that device;
    the default decodes on CPU threads, pixel-identical to Pillow.
    """
    path = Path(path)
    arrays = _read_npz_members(path, split)
    header, scans, offsets = arrays["jpeg_header"], arrays["scans"], arrays["offsets"]
    _check_compact_arrays(path, split, arrays)
    files = _join_header_and_scans(header, scans, offsets.astype(np.int64))
    images = _decode_jpeg_files(files, decode_device, f"{path} split {split!r}")
    labels = torch.from_numpy(arrays["labels"].astype(np.int64)).to(images.device)
    try:
        return ImageSet(images, labels, [str(c) for c in arrays["classes"]], f"{path.stem}/{split}")
    except ValueError as error:
        raise ValueError(f"{path} split {split!r}: {error}") from error


def _splits_in(member_names: Sequence[str]) -> list[str]:
    return sorted(name[: -len("_scans")] for name in member_names if name.endswith("_scans"))


def _read_npz_members(path: Path, split: str) -> dict[str, np.ndarray]:
    """Opens the archive and reads the members one split needs, reporting any damage."""
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz archive: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, expected an .npz archive")
    with archive:
        splits = _splits_in(archive.files)
        if split not in splits:
            raise ValueError(f"{path} has no split {split!r}; valid splits: {splits}")
        keys = {
            "jpeg_header": "jpeg_header",
            "classes": "classes",
            "scans": f"{split}_scans",
            "offsets": f"{split}_offsets",
            "labels": f"{split}_labels",
        }
        missing = sorted(key for key in keys.values() if key not in archive.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing} (holds {sorted(archive.files)})")
        return {role: _read_member(archive, key, path) for role, key in keys.items()}


def _read_member(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: array {key!r} cannot be read: {error}") from error


def _check_compact_arrays(path: Path, split: str, arrays: dict[str, np.ndarray]) -> None:
    """Checks types and offsets before decoding so a damaged file fails with a reason."""
    where = f"{path} split {split!r}"
    for role in ("jpeg_header", "scans"):
        array = arrays[role]
        if array.dtype != np.uint8 or array.ndim != 1:
            raise ValueError(f"{where}: {role} must be 1-D uint8, got {array.dtype} {array.shape}")
    for role in ("offsets", "labels"):
        array = arrays[role]
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise ValueError(
                f"{where}: {role} must be 1-D integers, got {array.dtype} {array.shape}"
            )
    if arrays["classes"].ndim != 1 or arrays["classes"].dtype.kind != "U":
        raise ValueError(f"{where}: classes must be a 1-D str array, got {arrays['classes'].dtype}")
    scans, labels = arrays["scans"], arrays["labels"]
    offsets = arrays["offsets"].astype(np.int64)  # signed, so a decreasing step shows as <= 0
    if len(offsets) < 2:
        raise ValueError(f"{where}: offsets hold {len(offsets)} values, so the split has no images")
    if offsets[0] != 0 or offsets[-1] != len(scans):
        raise ValueError(
            f"{where}: offsets must run from 0 to len(scans)={len(scans)}, "
            f"got {offsets[0]} to {offsets[-1]}"
        )
    steps = np.diff(offsets)
    if (steps <= 0).any():
        first_bad = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"{where}: offsets must be strictly increasing, but offsets[{first_bad}]="
            f"{offsets[first_bad]} >= offsets[{first_bad + 1}]={offsets[first_bad + 1]}"
        )
    if len(labels) != len(offsets) - 1:
        raise ValueError(f"{where}: {len(labels)} labels for {len(offsets) - 1} images")


def _join_header_and_scans(
    header: np.ndarray, scans: np.ndarray, offsets: np.ndarray
) -> list[torch.Tensor]:
    """Rebuilds each JPEG file (header + its scan) in one buffer, then splits it into views."""
    count, header_len = len(offsets) - 1, len(header)
    file_sizes = np.diff(offsets) + header_len
    file_starts = np.zeros(count, dtype=np.int64)
    np.cumsum(file_sizes[:-1], out=file_starts[1:])
    # +1 at each file start and -1 where its header ends; the running sum marks header bytes.
    edges = np.zeros(len(scans) + count * header_len + 1, dtype=np.int8)
    edges[file_starts] = 1
    edges[file_starts + header_len] -= 1
    is_header = np.cumsum(edges[:-1], dtype=np.int8).astype(bool)
    joined = np.empty(len(is_header), dtype=np.uint8)
    joined[is_header] = np.tile(header, count)
    joined[~is_header] = scans
    return list(torch.from_numpy(joined).split(file_sizes.tolist()))


def _decode_jpeg_files(
    files: list[torch.Tensor], device: torch.device | str | None, where: str
) -> torch.Tensor:
    """Decodes same-sized JPEG files into uint8 (N, H, W, 3), naming the first bad one."""
    decode = _torchvision_decoder() or _decode_with_pillow
    target = torch.device(device) if device is not None else torch.device("cpu")
    try:
        decoded = decode(files, target)
    except (RuntimeError, OSError, ValueError) as error:
        bad = _first_undecodable(files, target, decode)
        which = f"image {bad} fails" if bad is not None else "images fail"
        raise ValueError(f"{where}: {which} to decode: {error}") from error
    shapes = {tuple(image.shape) for image in decoded}
    if len(shapes) != 1:
        raise ValueError(f"{where}: images decode to different shapes {sorted(shapes)}")
    return torch.stack(decoded).permute(0, 2, 3, 1).contiguous()


def _first_undecodable(
    files: list[torch.Tensor], device: torch.device, decode: JpegDecoder
) -> int | None:
    """Error path only: tries files one by one to say which one is damaged."""
    for position, jpeg_file in enumerate(files):
        try:
            decode([jpeg_file], device)
        except (RuntimeError, OSError, ValueError):
            return position
    return None


def _torchvision_decoder() -> JpegDecoder | None:
    """torchvision's libjpeg-turbo/nvJPEG decoder, or None where a build no longer ships it."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode_chunk(chunk: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device)

    def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        # torchvision >= 0.29 flags its image codecs as deprecated in favour of torchcodec;
        # they still work, so the notice is silenced here rather than shown on every load.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if device.type != "cpu":
                return decode_chunk(files, device)
            chunks = [files[i : i + _DECODE_CHUNK] for i in range(0, len(files), _DECODE_CHUNK)]
            workers = max(1, min(len(chunks), os.cpu_count() or 1, 8))
            # The decoder releases the GIL, so threads decode chunks in parallel.
            with ThreadPoolExecutor(workers) as pool:
                return [
                    image
                    for part in pool.map(decode_chunk, chunks, [device] * len(chunks))
                    for image in part
                ]

    return decode


def _decode_with_pillow(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Fallback decoder (one Pillow call per file, as in the data README)."""
    return [
        torch.from_numpy(
            np.asarray(Image.open(io.BytesIO(f.numpy().tobytes())).convert("RGB")).copy()
        )
        .permute(2, 0, 1)
        .to(device)
        for f in files
    ]


def write_npz(
    path: PathLike, splits: dict[str, ImageSet], quality: int = DEFAULT_JPEG_QUALITY
) -> None:
    """Writes image sets in the compact JPEG format (Pillow encoder) so ``read_npz`` can load them.

    All splits must share classes and image size: the format stores one JPEG header and one
    class list for the whole file.
    """
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
    _check_splits_to_write(splits)
    encoded = {name: _encode_jpegs(image_set, quality) for name, image_set in splits.items()}
    first_file = next(iter(encoded.values()))[0]
    header = first_file[: _jpeg_header_length(first_file)]
    arrays: dict[str, np.ndarray] = {
        "jpeg_header": np.frombuffer(header, dtype=np.uint8),
        "classes": np.array(next(iter(splits.values())).classes, dtype=str),
    }
    for name, jpeg_files in encoded.items():
        if not all(jpeg_file.startswith(header) for jpeg_file in jpeg_files):
            raise ValueError(f"split {name!r}: the JPEG encoder wrote differing headers")
        scans = [jpeg_file[len(header) :] for jpeg_file in jpeg_files]
        arrays[f"{name}_scans"] = np.frombuffer(b"".join(scans), dtype=np.uint8)
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(s) for s in scans])])
        arrays[f"{name}_labels"] = splits[name].labels.cpu().numpy().astype(np.int64)
    with open(path, "wb") as handle:  # a handle keeps numpy from appending ".npz"
        np.savez(handle, **arrays)


def _check_splits_to_write(splits: dict[str, ImageSet]) -> None:
    if not isinstance(splits, dict) or not splits:
        raise ValueError(f"splits must be a non-empty dict of name -> ImageSet, got {splits!r}")
    for name, image_set in splits.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"split names must be non-empty str without '/', got {name!r}")
        if not isinstance(image_set, ImageSet):
            raise ValueError(f"split {name!r} must be an ImageSet, got {type(image_set).__name__}")
        if len(image_set) == 0:
            raise ValueError(f"split {name!r} has no images")
    first = next(iter(splits.values()))
    for name, image_set in splits.items():
        if image_set.classes != first.classes:
            raise ValueError(
                f"split {name!r} has classes {image_set.classes}, others {first.classes}"
            )
        if image_set.image_size != first.image_size:
            raise ValueError(
                f"split {name!r} has {image_set.image_size}px images, others {first.image_size}px"
            )


def _encode_jpegs(image_set: ImageSet, quality: int) -> list[bytes]:
    pixels = image_set.images.cpu().numpy()
    encoded = []
    for image in pixels:  # Pillow encodes one image per call
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded


def _jpeg_header_length(jpeg_file: bytes) -> int:
    """Bytes up to the end of the start-of-scan segment: what same-sized files share."""
    position = 2  # after the start-of-image marker
    while position + 4 <= len(jpeg_file):
        marker = jpeg_file[position + 1]
        segment_length = int.from_bytes(jpeg_file[position + 2 : position + 4], "big")
        position += 2 + segment_length
        if marker == _SOS_MARKER:
            return position
    raise ValueError("encoded JPEG has no start-of-scan segment")


# ---------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    split: str = "train",
    root: PathLike | None = None,
    image_size: int | None = None,
    decode_device: torch.device | str | None = None,
) -> ImageSet:
    """Loads a whole split by name (see :data:`DATASET_NAMES` and :data:`DATASET_PREFIXES`).

    ``root`` is where torchvision datasets live (default :func:`default_root`); a compact
    ``cifar10.npz`` / ``cifar100.npz`` there is used instead of downloading. ``image_size``
    resizes (antialiased) to that square side; folders default to 32. ``decode_device``
    applies to the JPEG-based sets (``cifar10-mini``, ``npz:``, compact copies).
    """
    if image_size is not None:
        _check_positive_int(image_size, "image_size")
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a str, got {type(name).__name__}")
    if name.startswith("folder:"):
        side = image_size if image_size is not None else DEFAULT_FOLDER_IMAGE_SIZE
        image_set = _load_folder(Path(name[len("folder:") :]).expanduser(), split, side)
    elif name.startswith("frames:"):
        side = image_size if image_size is not None else DEFAULT_FOLDER_IMAGE_SIZE
        image_set = load_frames(Path(name[len("frames:") :]).expanduser(), split, side)
    elif name.startswith("npz:"):
        image_set = read_npz(Path(name[len("npz:") :]).expanduser(), split, decode_device)
    elif name == "cifar10-mini":
        _check_split(name, split, CIFAR_SPLITS)
        image_set = read_npz(_mini_path(), split, decode_device)
    elif name in _COMPACT_COPIES:
        image_set = _load_cifar(name, split, _root_or_default(root), decode_device)
    elif name == "stl10":
        image_set = _load_stl10(split, _root_or_default(root))
    else:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}, "
            f"or a path after one of the prefixes {', '.join(DATASET_PREFIXES)}"
        )
    if image_size is not None and image_size != image_set.image_size:
        image_set.images = _resize_square(image_set.images, image_size)
    image_set.name = f"{name}/{split}"
    return image_set


def _root_or_default(root: PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(valid)}")


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


def _load_cifar(
    name: str, split: str, root: Path, decode_device: torch.device | str | None
) -> ImageSet:
    """A compact copy in ``root`` if present (offline use), else torchvision's download."""
    _check_split(name, split, CIFAR_SPLITS)
    compact = root / _COMPACT_COPIES[name]
    if compact.is_file():
        return read_npz(compact, split, decode_device)
    from torchvision import datasets

    loader = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    dataset = loader(root=str(root), train=split == "train", download=True)
    return _from_numpy_nhwc(dataset.data, dataset.targets, dataset.classes)


def _load_stl10(split: str, root: Path) -> ImageSet:
    _check_split("stl10", split, STL10_SPLITS)
    from torchvision import datasets

    dataset = datasets.STL10(root=str(root), split=split, download=True)
    nhwc = dataset.data.transpose(0, 2, 3, 1)  # torchvision keeps STL-10 as (N, 3, H, W)
    return _from_numpy_nhwc(nhwc, dataset.labels, dataset.classes)


# ---------------------------------------------------------------------------------------
# ImageFolder trees
# ---------------------------------------------------------------------------------------


def _load_folder(root: Path, split: str, size: int) -> ImageSet:
    """Class subfolders of ``root`` (or of ``root/train``, ``root/test``/``val``)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    split_dirs = _folder_split_dirs(root)
    if split_dirs:
        _check_split(f"folder {root}", split, tuple(FOLDER_SPLIT_DIRS))
        directory = next((split_dirs[d] for d in FOLDER_SPLIT_DIRS[split] if d in split_dirs), None)
        if directory is None:
            raise ValueError(f"{root} has no {' or '.join(FOLDER_SPLIT_DIRS[split])}/ subfolder")
        classes = sorted({c for d in split_dirs.values() for c in _class_dirs(d)})
    else:
        if split != "train":
            raise ValueError(
                f"{root} has no train/ and test/ (or val/) subfolders, so the whole tree is "
                f"the 'train' split; got split {split!r}"
            )
        directory, classes = root, _class_dirs(root)
    files, labels = _image_files(directory, classes)
    if not files:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class folders of {directory}"
        )
    images = torch.from_numpy(_read_square_images(files, size))
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes)


def load_frames(
    root: Path, split: str = "train", size: int = DEFAULT_FOLDER_IMAGE_SIZE
) -> ImageSet:
    """Video frames: one subfolder of ``root`` (or of ``root/<split>``) per video, any count >= 1.

    Frames carry no class (label -1, ``classes`` empty); ``videos`` numbers each frame's
    video in the sorted order of the folders that hold frames (empty folders are skipped).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"frames folder not found: {root}")
    directory = root / split if (root / split).is_dir() else root
    if directory == root and split != "train":
        raise ValueError(f"{root} has no {split}/ subfolder; the whole tree is the 'train' split")
    files, folder_index = _image_files(directory, _class_dirs(directory))
    if not files:
        raise ValueError(
            f"no frames ({', '.join(sorted(IMAGE_EXTENSIONS))}) in video folders of {directory}"
        )
    _, videos = np.unique(np.asarray(folder_index), return_inverse=True)
    images = torch.from_numpy(_read_square_images(files, size))
    labels = torch.full((len(files),), -1, dtype=torch.int64)
    return ImageSet(images, labels, [], videos=torch.from_numpy(videos.astype(np.int64)))


def _folder_split_dirs(root: Path) -> dict[str, Path]:
    """Split subfolders when the tree is split (train/ plus test/ or val/), else empty."""
    present = {d: root / d for d in ("train", "test", "val") if (root / d).is_dir()}
    is_split_tree = "train" in present and ("test" in present or "val" in present)
    return present if is_split_tree else {}


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, class_name in enumerate(classes):
        class_dir = directory / class_name
        if not class_dir.is_dir():
            continue
        found = sorted(
            p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        files.extend(found)
        labels.extend([label] * len(found))
    return files, labels


def _read_square_images(files: list[Path], size: int) -> np.ndarray:
    """Reads every file once with Pillow (a loop is fine: it runs once per folder)."""
    from tqdm.auto import tqdm

    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    progress = tqdm(files, desc="reading images", disable=len(files) < _PROGRESS_MIN_FILES)
    for position, file in enumerate(progress):
        try:
            with Image.open(file) as image:
                images[position] = np.asarray(_shorter_side_then_centre_crop(image, size))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {file}: {error}") from error
    return images


def _shorter_side_then_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Scales the shorter side to ``size`` (antialiased bicubic), then crops the centre square."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))
