"""The shard format of `interlab prepare`: JPEG bytes in flat files plus one index per split.

    DIR/prepare.json             settings and counts of the conversion
    DIR/skipped.txt              one line per unreadable source file: path <TAB> error
    DIR/SPLIT/shard-00000.bin    the JPEG files of one chunk of images, back to back
    DIR/SPLIT/shard-00000.npz    that chunk's entries (written last: its presence marks it done)
    DIR/SPLIT/index.npz          every chunk's entries, merged, in source order

Why not WebDataset's tar shards: a tar is read front to back, and random access, a rank's
share of a shuffled epoch and an exact resume mid-epoch all need an offset per image. Flat
byte files with an offset index give that directly, memory-mapped (the compressed bytes stay
in the page cache, shared by every process); the compact ``.npz`` format of
``data/README.md`` could not hold them (it assumes one image size and one JPEG header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_NAME = "index.npz"
SETTINGS_NAME = "prepare.json"
SKIPPED_NAME = "skipped.txt"
SHARD_PREFIX = "shard-"
# Entry arrays of a chunk and of the merged index (N entries), besides `classes`.
ENTRY_FIELDS = ("shard", "start", "length", "labels", "sizes", "original_sizes", "videos")


def shard_stem(chunk: int) -> str:
    return f"{SHARD_PREFIX}{chunk:05d}"


@dataclass
class ShardEntries:
    """Where each image's JPEG bytes lie, and what is known of it (arrays of one length N)."""

    shard: np.ndarray  # int32: the chunk (shard file) holding the bytes
    start: np.ndarray  # int64: byte offset in that file
    length: np.ndarray  # int64: byte count
    labels: np.ndarray  # int64: class index, -1 for frames
    sizes: np.ndarray  # int32 (N, 2): height, width as stored
    original_sizes: np.ndarray  # int32 (N, 2): height, width of the source file
    videos: np.ndarray  # int64: video id of a frame, -1 for still images

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    @classmethod
    def empty(cls) -> ShardEntries:
        pair = np.zeros((0, 2), dtype=np.int32)
        ints = np.zeros(0, dtype=np.int64)
        return cls(np.zeros(0, np.int32), ints, ints, ints, pair, pair, ints)

    @classmethod
    def concatenate(cls, parts: list[ShardEntries]) -> ShardEntries:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ENTRY_FIELDS))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ENTRY_FIELDS}


def save_entries(path: Path, entries: ShardEntries, classes: list[str], **extra) -> None:
    """Writes an entry file atomically (a reader never sees half of one)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(handle, classes=np.asarray(classes, dtype=str), **entries.arrays(), **extra)
    partial.replace(path)


def load_entries(path: Path) -> tuple[ShardEntries, list[str], dict[str, np.ndarray]]:
    """An entry file: its entries, class names and any extra arrays; damage is named."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read shard index {path}: {error}") from error
    missing = [name for name in (*ENTRY_FIELDS, "classes") if name not in arrays]
    if missing:
        raise ValueError(f"shard index {path} lacks {', '.join(missing)}")
    entries = ShardEntries(*(arrays.pop(name) for name in ENTRY_FIELDS))
    classes = [str(c) for c in arrays.pop("classes")]
    return entries, classes, arrays
