"""A prepared split read on demand: labels in memory, JPEG bytes memory-mapped, decoded per batch.

`ShardSet` is what `--data shards:DIR` streams from. Host memory holds the index (a few
numbers per image) and whatever pages of the shard files the OS keeps cached; a batch's bytes
are copied out, decoded (nvJPEG on CUDA, libjpeg-turbo threads on the CPU) and pasted into one
padded uint8 batch with each image's own size beside it, so every sample's random resized
crop is drawn from its whole image at its own aspect ratio (`Augment.sample_params(sizes=)`).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from interlab.augment import resized_crop
from interlab.data.compact_jpeg import torchvision_decoder
from interlab.data.shard_format import INDEX_NAME, load_entries, shard_stem

_CPU_DECODE_THREADS = min(os.cpu_count() or 1, 8)
DEFAULT_STREAM_SIZE = 224  # aug.size when a run from shards sets none: the ImageNet protocols'
EVAL_RESIZE_RATIO = 256 / 224  # evaluation: shorter side to 256, centre 224 (scaled to the size)


class ShardSet:
    """One split of an `interlab prepare` folder (see `interlab.data.shard_format`)."""

    def __init__(self, directory: str | Path, split: str = "train") -> None:
        self.directory = Path(directory)
        self.split = split
        index = self.directory / split / INDEX_NAME
        if not index.is_file():
            present = sorted(p.parent.name for p in self.directory.glob(f"*/{INDEX_NAME}"))
            raise FileNotFoundError(
                f"no prepared split {split!r} in {self.directory} (splits there: "
                f"{', '.join(present) or 'none'}; make one with `interlab prepare`)"
            )
        self.entries, self.classes, _ = load_entries(index)
        self.labels = torch.from_numpy(self.entries.labels.astype(np.int64))
        videos = self.entries.videos
        self.videos = torch.from_numpy(videos.astype(np.int64)) if (videos >= 0).any() else None
        self.sizes = torch.from_numpy(self.entries.sizes.astype(np.int64))  # (N, 2) h, w
        self.name = f"shards:{self.directory}/{split}"
        self.device = torch.device("cpu")  # where decoded batches land (`to`)
        self.eval_size = DEFAULT_STREAM_SIZE
        self._maps: dict[int, np.memmap] = {}
        self._pending: dict[tuple[bytes, torch.device], Future] = {}
        self._prefetcher: ThreadPoolExecutor | None = None
        self._check_shard_files()

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"ShardSet({self.name!r}, n={len(self)}, classes={len(self.classes)})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The output size of crops from this set (stored images vary in size): 224 until a
        run sets its `aug.size` (`eval_size`)."""
        return self.eval_size

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def images(self) -> ShardImages:
        """The set seen the way evaluation sees it: centre crops at `eval_size`, decoded in
        batches on demand (what kNN, InterCLR's bank and probes extract features from)."""
        return ShardImages(self, self.eval_size)

    def to(self, device: torch.device | str) -> ShardSet:
        """Decoded batches land on `device`; the bytes stay memory-mapped on the host."""
        self.device = torch.device(device)
        return self

    @property
    def compressed_bytes(self) -> int:
        return int(self.entries.length.sum())

    def _check_shard_files(self) -> None:
        """Each shard file must hold every byte its index entries point at."""
        entries = self.entries
        if len(entries) == 0:
            return
        ends = np.zeros(int(entries.shard.max()) + 1, dtype=np.int64)
        np.maximum.at(ends, entries.shard, entries.start + entries.length)
        for shard in np.unique(entries.shard):
            path = self._shard_path(int(shard))
            size = path.stat().st_size if path.exists() else -1
            if size < ends[shard]:
                raise ValueError(
                    f"{path} is missing or truncated: {size} bytes, index needs {ends[shard]}"
                )

    def _shard_path(self, shard: int) -> Path:
        return self.directory / self.split / f"{shard_stem(shard)}.bin"

    def _shard(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self._shard_path(shard), dtype=np.uint8, mode="r")
        return self._maps[shard]

    def jpeg_files(self, indices: Tensor | np.ndarray | list[int]) -> list[Tensor]:
        """The JPEG bytes of `indices`, copied out of the memory maps (one batch's worth)."""
        rows = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
        entries = self.entries
        return [
            torch.from_numpy(np.array(self._shard(int(s))[b : b + n]))
            for s, b, n in zip(
                entries.shard[rows], entries.start[rows], entries.length[rows], strict=True
            )
        ]

    def decode(
        self, indices: Tensor | np.ndarray | list[int], device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """uint8 (3, h, w) images of `indices` at their stored sizes, on `device`."""
        return decode_jpegs(self.jpeg_files(indices), torch.device(device))

    def prefetch(self, indices: Tensor | np.ndarray | list[int]) -> None:
        """Start decoding a coming batch in a background thread (onto `self.device`), so it
        overlaps the current step; `padded_batch` of the same indices then takes the result."""
        rows = torch.as_tensor(indices).cpu()
        key = (rows.numpy().tobytes(), self.device)
        if key in self._pending:
            return
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        self._pending[key] = self._prefetcher.submit(self._decode_padded, rows, self.device)

    def padded_batch(
        self, indices: Tensor | np.ndarray | list[int], device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """(B, H, W, 3) uint8 images pasted top-left into zeros of the batch's largest size,
        and each image's own (h, w) as (B, 2) int64, both on `device` (prefetched or now)."""
        device = torch.device(device)
        rows = torch.as_tensor(indices).cpu()
        pending = self._pending.pop((rows.numpy().tobytes(), device), None)
        return pending.result() if pending is not None else self._decode_padded(rows, device)

    def _decode_padded(self, rows: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """The images are held planar underneath (the returned tensor is a channels-last
        view), as decoders give them and as the augmentation computes: no interleaving copy."""
        sizes = self.sizes[rows]
        height, width = (int(v) for v in sizes.max(dim=0).values)
        decoded = self.decode(rows, device)
        # decoders return one tensor per file: pasting them is one copy each, no arithmetic
        if device.type == "cpu":  # numpy's strided uint8 copies are ~30x faster than torch's
            buffer = np.zeros((len(rows), 3, height, width), dtype=np.uint8)
            for slot, image in enumerate(decoded):
                buffer[slot, :, : image.shape[1], : image.shape[2]] = image.numpy()
            planar = torch.from_numpy(buffer)
        else:
            planar = torch.zeros(len(rows), 3, height, width, dtype=torch.uint8, device=device)
            for slot, image in enumerate(decoded):
                planar[slot, :, : image.shape[1], : image.shape[2]] = image
        return planar.permute(0, 2, 3, 1), sizes.to(device)

    def centre_crops(self, indices: Tensor | np.ndarray | list[int], size: int) -> Tensor:
        """The evaluation protocol: shorter side resized to size * 256/224, the centre
        size x size kept, as one resampling of that centre region; uint8 (B, S, S, 3)."""
        images, sizes = self.padded_batch(indices, self.device)
        boxes = centre_boxes(sizes, size)
        planar = images.permute(0, 3, 1, 2).float()
        crops = resized_crop(planar, boxes, size)
        return crops.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class ShardImages:
    """A lazy (N, S, S, 3) uint8 view of a ShardSet: `batch(start, stop)` decodes that range."""

    def __init__(self, shard_set: ShardSet, size: int) -> None:
        self.shard_set, self.size = shard_set, size
        self.shape = (len(shard_set), size, size, 3)
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return self.shard_set.device

    def batch(self, start: int, stop: int) -> Tensor:
        return self.shard_set.centre_crops(torch.arange(start, min(stop, len(self))), self.size)

    def __getitem__(self, index: int | slice | Tensor | np.ndarray | list) -> Tensor:
        """Indexed like a uint8 (N, S, S, 3) tensor (an int, a slice, indices or a mask), and
        decoded now: explorers and probes show and embed only what they pick."""
        rows = torch.arange(len(self))[torch.as_tensor(index) if isinstance(index, list) else index]
        if rows.ndim == 0:
            return self.shard_set.centre_crops(rows.reshape(1), self.size)[0]
        return self.shard_set.centre_crops(rows, self.size)


def centre_boxes(sizes: Tensor, size: int) -> Tensor:
    """(top, left, height, width) of each image's centre crop under the evaluation protocol:
    the square that a resize of the shorter side to size * 256/224 would cut out at size."""
    shorter = sizes.min(dim=1).values.double()
    side = torch.round(shorter / EVAL_RESIZE_RATIO).clamp_(min=1)
    top = torch.floor((sizes[:, 0] - side) / 2)
    left = torch.floor((sizes[:, 1] - side) / 2)
    return torch.stack([top, left, side, side], dim=1).to(torch.int64)


def decode_jpegs(files: list[Tensor], device: torch.device) -> list[Tensor]:
    """Decodes JPEG files of any sizes to uint8 (3, h, w): the whole list at once with nvJPEG
    on CUDA, split over threads on the CPU (the decoder releases the GIL)."""
    decode = torchvision_decoder()
    if decode is None:
        raise RuntimeError("streaming from shards needs torchvision's JPEG decoder")
    if device.type != "cpu" or len(files) < 2 * _CPU_DECODE_THREADS:
        return decode(files, device)
    parts = np.array_split(np.arange(len(files)), _CPU_DECODE_THREADS)
    with warnings.catch_warnings(), ThreadPoolExecutor(_CPU_DECODE_THREADS) as pool:
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = pool.map(lambda part: decode([files[i] for i in part], device), parts)
        return [image for chunk in decoded for image in chunk]
