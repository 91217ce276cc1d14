"""`interlab prepare SRC --out DIR`: an image or frames tree converted once into JPEG shards.

Each image is kept as JPEG bytes with its shorter side at most `max_side` and its aspect
ratio kept (ImageNet protocols crop from the whole image), so training decodes what it needs
per batch instead of holding a fixed-size uint8 copy of the set. The sources are listed once,
cut into chunks of `shard_images`, and chunks are converted in parallel, each into one shard
whose entry file is written last: an interrupted run resumes at the first unfinished chunk.
A file Pillow cannot read is listed in `skipped.txt` with its error and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from interlab.data.folders import (
    IMAGE_EXTENSIONS_TEXT,
    class_folders,
    class_image_files,
    folder_split_dirs,
)
from interlab.data.shard_format import (
    INDEX_NAME,
    SETTINGS_NAME,
    SKIPPED_NAME,
    ShardEntries,
    load_entries,
    save_entries,
    shard_stem,
)

DEFAULT_MAX_SIDE = 256
DEFAULT_QUALITY = 90
DEFAULT_SHARD_IMAGES = 1000
_KEPT_JPEG_MODES = ("RGB", "L")  # decoded as RGB by nvJPEG and libjpeg alike


@dataclass(frozen=True)
class Source:
    """One image to convert: its file, class index (-1 for frames) and video id (-1 if none)."""

    path: str
    label: int
    video: int


@dataclass
class PrepareSummary:
    converted: int
    skipped: int
    bytes: int
    splits: dict[str, int]

    def line(self, out: Path) -> str:
        per_split = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        return (
            f"prepared {out}: converted {self.converted} ({per_split}), skipped {self.skipped}, "
            f"{self.bytes / 2**20:.1f} MiB of JPEG"
        )


# ---- listing the sources ----------------------------------------------------------------------


def list_sources(root: Path, frames: bool = False) -> tuple[dict[str, list[Source]], list[str]]:
    """Sources per split and the class names: an ImageFolder tree (class folders, optionally
    under train/ and val/ or test/) or, with `frames`, one folder per video."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {root}")
    split_dirs = folder_split_dirs(root) or {"train": root}
    if frames:
        return {s: _frame_sources(d) for s, d in split_dirs.items()}, []
    classes = sorted({name for d in split_dirs.values() for name in class_folders(d)})
    if not classes:
        raise ValueError(f"{root} has no class folders (ImageFolder layout: {root}/CLASS/IMAGE)")
    sources = {}
    for split, directory in split_dirs.items():
        files, labels = class_image_files(directory, classes)
        sources[split] = [Source(str(f), label, -1) for f, label in zip(files, labels, strict=True)]
    if not any(sources.values()):
        raise ValueError(f"no images ({IMAGE_EXTENSIONS_TEXT}) in the class folders of {root}")
    return sources, classes


def _frame_sources(directory: Path) -> list[Source]:
    """Frames: each subfolder is a video, numbered in sorted order of the folders with frames."""
    files, folder_index = class_image_files(directory, class_folders(directory))
    if not files:
        raise ValueError(f"no frames ({IMAGE_EXTENSIONS_TEXT}) in video folders of {directory}")
    _, videos = np.unique(np.asarray(folder_index), return_inverse=True)
    return [Source(str(f), -1, int(v)) for f, v in zip(files, videos, strict=True)]


# ---- converting one image ---------------------------------------------------------------------


def convert_image(data: bytes, max_side: int, quality: int) -> tuple[bytes, tuple, tuple]:
    """JPEG bytes with the shorter side at most `max_side`, stored and original (h, w).

    A JPEG already small enough, in RGB or grayscale, is kept byte for byte; anything else
    (PNG, CMYK JPEG, larger images) is converted to RGB, resized and re-encoded. Raises
    OSError / ValueError for a file Pillow cannot read completely (truncated, not an image).
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # a truncated file fails here, not at training time
        original = (image.height, image.width)
        if (
            image.format == "JPEG"
            and image.mode in _KEPT_JPEG_MODES
            and min(original) <= max_side
            and not image.info.get("progressive")
        ):
            return data, original, original
        rgb = image.convert("RGB")
    scale = max_side / min(original)
    if scale < 1:
        size = (max(1, round(original[1] * scale)), max(1, round(original[0] * scale)))
        rgb = rgb.resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), (rgb.height, rgb.width), original


def convert_chunk(
    out_dir: str, chunk: int, sources: Sequence[Source], classes: list[str], max_side: int,
    quality: int,
) -> tuple[int, int, int]:  # fmt: skip
    """One shard: its bytes, then its entry file. Returns (converted, skipped, bytes)."""
    stem = Path(out_dir) / shard_stem(chunk)
    rows, skipped, position = [], [], 0
    with open(stem.with_suffix(".bin.partial"), "wb") as shard:
        for source in sources:
            try:
                data, size, original = convert_image(
                    Path(source.path).read_bytes(), max_side, quality
                )
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                skipped.append((source.path, f"{type(error).__name__}: {error}"))
                continue
            shard.write(data)
            rows.append((position, len(data), source.label, size, original, source.video))
            position += len(data)
    stem.with_suffix(".bin.partial").replace(stem.with_suffix(".bin"))
    save_entries(stem.with_suffix(".npz"), _entries(chunk, rows), classes, **_skipped(skipped))
    return len(rows), len(skipped), position


def _entries(chunk: int, rows: list[tuple]) -> ShardEntries:
    if not rows:
        return ShardEntries.empty()
    starts, lengths, labels, sizes, originals, videos = zip(*rows, strict=True)
    return ShardEntries(
        np.full(len(rows), chunk, dtype=np.int32),
        np.asarray(starts, dtype=np.int64),
        np.asarray(lengths, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        np.asarray(sizes, dtype=np.int32),
        np.asarray(originals, dtype=np.int32),
        np.asarray(videos, dtype=np.int64),
    )


def _skipped(skipped: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    paths = [path for path, _ in skipped]
    errors = [error.replace("\n", " ") for _, error in skipped]
    return {
        "skipped_paths": np.asarray(paths, dtype=str),
        "skipped_errors": np.asarray(errors, dtype=str),
    }


# ---- the whole conversion ---------------------------------------------------------------------


def prepare(
    source: str | Path,
    out: str | Path,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_QUALITY,
    workers: int | None = None,
    frames: bool = False,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    progress: bool = True,
) -> PrepareSummary:
    """Converts `source` into shards under `out` (resuming what an earlier run finished)."""
    _check_settings(max_side, quality, shard_images, workers)
    out = Path(out)
    sources, classes = list_sources(Path(source), frames)
    settings = {"source": str(Path(source).resolve()), "max_side": max_side, "quality": quality,
                "frames": frames, "shard_images": shard_images}  # fmt: skip
    _check_resumable(out, settings, sources)
    workers = workers or min(os.cpu_count() or 1, 8)
    total = sum(len(s) for s in sources.values())
    with tqdm(total=total, desc="prepare", unit="image", disable=not progress) as bar:
        for split, listed in sources.items():
            _convert_split(
                out / split, listed, classes, max_side, quality, workers, shard_images, bar
            )
    summary = _finish(out, list(sources))
    _write_json(out / SETTINGS_NAME, {**settings, "listing": _listing_digests(sources),
                                       "converted": summary.converted, "skipped": summary.skipped,
                                       "bytes": summary.bytes})  # fmt: skip
    return summary


def _check_settings(max_side: int, quality: int, shard_images: int, workers: int | None) -> None:
    for name, value, low, high in (
        ("max_side", max_side, 8, 1 << 16), ("quality", quality, 1, 100),
        ("shard_images", shard_images, 1, 1 << 24), ("workers", workers or 1, 1, 1024),
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _listing_digests(sources: dict[str, list[Source]]) -> dict[str, str]:
    digests = {}
    for split, listed in sources.items():
        text = "\n".join(f"{s.path}\t{s.label}\t{s.video}" for s in listed)
        digests[split] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def _check_resumable(out: Path, settings: dict, sources: dict[str, list[Source]]) -> None:
    """Resuming is only right with the same settings and the same source listing."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "prepare.started.json"
    expected = {**settings, "listing": _listing_digests(sources)}
    if marker.exists():
        earlier = json.loads(marker.read_text())
        if earlier != expected:
            changed = sorted(k for k in expected if earlier.get(k) != expected[k])
            raise ValueError(
                f"{out} holds a conversion with other {', '.join(changed)}: resume it with the "
                "same source and settings, or prepare into a new --out"
            )
    _write_json(marker, expected)


def _convert_split(
    out: Path, sources: list[Source], classes: list[str], max_side: int, quality: int,
    workers: int, shard_images: int, bar: tqdm,
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    chunks = [sources[i : i + shard_images] for i in range(0, len(sources), shard_images)]
    todo = []
    for chunk, listed in enumerate(chunks):
        if (out / shard_stem(chunk)).with_suffix(".npz").exists():
            bar.update(len(listed))  # finished by an earlier run
        else:
            todo.append(chunk)
    args = [(str(out), c, chunks[c], classes, max_side, quality) for c in todo]
    if workers == 1 or len(todo) <= 1:
        for arg in args:
            convert_chunk(*arg)
            bar.update(len(arg[2]))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(convert_chunk, *arg): len(arg[2]) for arg in args}
        for future in as_completed(futures):
            future.result()
            bar.update(futures[future])


def _finish(out: Path, splits: list[str]) -> PrepareSummary:
    """Merges each split's chunk entries into its index and lists every skipped file."""
    converted = skipped = size = 0
    per_split, skipped_lines = {}, []
    for split in splits:
        parts = sorted((out / split).glob("shard-*.npz"))
        loaded = [load_entries(p) for p in parts]
        entries = ShardEntries.concatenate([e for e, _, _ in loaded])
        classes = loaded[0][1] if loaded else []
        save_entries(out / split / INDEX_NAME, entries, classes)
        for _, _, extra in loaded:
            skipped_lines += [
                f"{p}\t{e}"
                for p, e in zip(extra["skipped_paths"], extra["skipped_errors"], strict=True)
            ]
        per_split[split] = len(entries)
        converted += len(entries)
        size += int(entries.length.sum())
    skipped = len(skipped_lines)
    (out / SKIPPED_NAME).write_text("".join(line + "\n" for line in skipped_lines))
    return PrepareSummary(converted, skipped, size, per_split)


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)
