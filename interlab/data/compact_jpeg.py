"""The compact JPEG file format of ``data/README.md``: reading, writing and decoding.

Same-sized JPEGs from one encoder share every byte up to the start of scan, so a file keeps
that header once plus each image's scan; a reader rebuilds the full files in one buffer and
decodes them in bulk (nvJPEG on a GPU, libjpeg-turbo threads or Pillow on the CPU).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from interlab.data.imageset import ImageSet

DEFAULT_JPEG_QUALITY = 95
_DECODE_CHUNK = 4096  # JPEG files per decoding task
_SOS_MARKER = 0xDA

JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]
PathLike = str | Path


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
    decode = torchvision_decoder() or _decode_with_pillow
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


def torchvision_decoder() -> JpegDecoder | None:
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
