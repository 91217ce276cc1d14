"""A prepared split read on demand: labels in memory, JPEG bytes memory-mapped, decoded per batch.

`ShardSet` is what `--data shards:DIR` streams from. Host memory holds the index (a few
numbers per image) and whatever pages of the shard files the OS keeps cached; a batch's bytes
are copied out, decoded (nvJPEG on CUDA, libjpeg-turbo threads on the CPU) and pasted into one
padded uint8 batch with each image's own size beside it, so every sample's random resized
crop is drawn from its whole image at its own aspect ratio (`Augment.sample_params(sizes=)`).

On a GPU the per-image tables (labels, videos, sizes) live on the device with the run's
indices, and a step costs the host no wait on the GPU: the trainer hands the set each epoch's
order once (`follow_order`, one host copy per epoch), a step's slice of that order is mapped
to its rows from the host copy (`host_rows`), and the decoded images are pasted into the
padded batch in one gather (`paste_padded`), not one copy per image.
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
        # The tables follow the set to its device (`to`); the host keeps `entries` for decoding.
        self.labels = torch.from_numpy(self.entries.labels.astype(np.int64))
        videos = self.entries.videos
        self.videos = torch.from_numpy(videos.astype(np.int64)) if (videos >= 0).any() else None
        self.sizes = torch.from_numpy(self.entries.sizes.astype(np.int64))  # (N, 2) h, w
        self.name = f"shards:{self.directory}/{split}"
        self.device = torch.device("cpu")  # where decoded batches and the tables live (`to`)
        self.eval_size = DEFAULT_STREAM_SIZE
        self._maps: dict[int, np.memmap] = {}
        self._pending: dict[tuple[bytes, torch.device], Future] = {}
        self._prefetcher: ThreadPoolExecutor | None = None
        self._order: Tensor | None = None  # the followed epoch order (`follow_order`)
        self._order_rows = np.zeros(0, dtype=np.int64)  # its host copy
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
        """Read from the host index: no device sync, wherever the tables live."""
        return bool((self.entries.labels >= 0).any())

    @property
    def images(self) -> ShardImages:
        """The set seen the way evaluation sees it: centre crops at `eval_size`, decoded in
        batches on demand (what kNN, InterCLR's bank and probes extract features from)."""
        return ShardImages(self, self.eval_size)

    def to(self, device: torch.device | str) -> ShardSet:
        """Decoded batches land on `device` and the tables (labels, videos, sizes) move there
        with the run's indices, in place; the bytes stay memory-mapped on the host."""
        target = torch.device(device)
        non_blocking = target.type == "cuda"  # host-to-device copies need not wait
        self.labels = self.labels.to(target, non_blocking=non_blocking)
        self.sizes = self.sizes.to(target, non_blocking=non_blocking)
        if self.videos is not None:
            self.videos = self.videos.to(target, non_blocking=non_blocking)
        self.device = target
        return self

    def follow_order(self, order: Tensor) -> None:
        """The trainer's epoch order (this rank's share): its one host copy of the epoch, so
        each step's slice of `order` maps to its rows without waiting for the device
        (`host_rows`). `order` is kept (its memory cannot be reused by another tensor while
        followed) and must not be changed in place."""
        if order.dim() != 1 or order.dtype != torch.int64:
            raise ValueError(f"an epoch order is an int64 (N,) tensor; got {order!r:.80}")
        self._order = order
        self._order_rows = order.to("cpu", copy=True).numpy()  # a copy on the CPU too

    def host_rows(self, indices: Tensor | np.ndarray | list[int]) -> np.ndarray:
        """int64 rows of `indices` on the host. A slice of the followed epoch order is read
        from its host copy, a CPU tensor directly; anything else on a device is copied back,
        which waits for the device (rows drawn there, as CycleContrast's other frames)."""
        if not isinstance(indices, Tensor):
            return np.asarray(indices, dtype=np.int64).reshape(-1)
        window = self._window_in_order(indices)
        if window is not None:
            return self._order_rows[window]
        return indices.cpu().numpy().astype(np.int64, copy=False).reshape(-1)

    def _window_in_order(self, indices: Tensor) -> slice | None:
        """Where `indices` lies in the followed order, if it is a view of a stretch of it (the
        same memory, the same step between elements): found from metadata, no values read."""
        order = self._order
        if order is None or indices.dim() != 1 or indices.dtype != order.dtype:
            return None
        if indices.device != order.device or order.untyped_storage().data_ptr() == 0:
            return None  # meta tensors have no memory to compare
        if indices.untyped_storage().data_ptr() != order.untyped_storage().data_ptr():
            return None
        step = order.stride(0) if len(order) > 1 else 1
        offset = indices.storage_offset() - order.storage_offset()
        if offset % step or (len(indices) > 1 and indices.stride(0) != step):
            return None
        start = offset // step
        if start < 0 or start + len(indices) > len(order):
            return None
        return slice(start, start + len(indices))

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
        rows = self.host_rows(indices)
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
        rows = self.host_rows(indices)
        key = (rows.tobytes(), self.device)
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
        rows = self.host_rows(indices)
        pending = self._pending.pop((rows.tobytes(), device), None)
        return pending.result() if pending is not None else self._decode_padded(rows, device)

    def _decode_padded(self, rows: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
        """The images are held planar underneath (the returned tensor is a channels-last
        view), as decoders give them and as the augmentation computes: no interleaving copy."""
        if len(rows) == 0:
            raise ValueError(f"a padded batch needs at least one row of {self.name}; got none")
        sizes = self.entries.sizes[rows].astype(np.int64)
        decoded = self.decode(rows, device)
        if device.type == "cpu":  # numpy's strided uint8 copies are ~30x faster than torch's
            return paste_on_host(decoded, sizes).permute(0, 2, 3, 1), torch.from_numpy(sizes)
        planar, device_sizes = paste_padded(decoded, sizes, device)
        return planar.permute(0, 2, 3, 1), device_sizes

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
        if isinstance(index, (list, Tensor)):  # explorers may pick with indices on a GPU
            index = torch.as_tensor(index).cpu()
        rows = torch.arange(len(self))[index]
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


def paste_on_host(images: list[Tensor], sizes: np.ndarray) -> Tensor:
    """CPU images (3, h, w) pasted top-left into uint8 (B, 3, H, W) zeros of the largest size:
    one numpy copy each (numpy's strided uint8 copies are ~30x faster than torch's)."""
    _check_pasted_sizes(images, sizes)
    height, width = (int(v) for v in sizes.max(axis=0))
    buffer = np.zeros((len(images), 3, height, width), dtype=np.uint8)
    for slot, image in enumerate(images):
        buffer[slot, :, : image.shape[1], : image.shape[2]] = image.numpy()
    return torch.from_numpy(buffer)


def paste_padded(
    images: list[Tensor], sizes: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`paste_on_host` for a GPU: uint8 (B, 3, H, W) and the (B, 2) int64 `sizes`, on `device`.

    A copy per image would be one kernel launch each; here the images' bytes are concatenated
    and the whole padded batch is one gather from them. Which byte each output position takes
    is computed on `device` from one table of sizes and offsets, moved in one asynchronous
    copy: a fixed number of kernels whatever the batch size, and the host never waits.
    """
    _check_pasted_sizes(images, sizes)
    count = len(images)
    lengths = 3 * sizes[:, 0] * sizes[:, 1]
    offsets = np.cumsum(lengths) - lengths
    table = _to_device(np.concatenate([sizes.reshape(-1), offsets]), device)
    device_sizes, device_offsets = table[: 2 * count].view(count, 2), table[2 * count :]
    height, width = (int(v) for v in sizes.max(axis=0))
    positions = _source_positions(device_sizes, device_offsets, height, width, int(lengths.sum()))
    padding = torch.zeros(1, dtype=torch.uint8, device=device)  # what positions outside read
    flat = torch.cat([image.reshape(-1) for image in images] + [padding])
    planar = flat.index_select(0, positions.view(-1)).view(count, 3, height, width)
    return planar, device_sizes


def _source_positions(
    sizes: Tensor, offsets: Tensor, height: int, width: int, total: int
) -> Tensor:
    """(B, 3, H, W): where in the concatenated bytes each padded position's value lies, or
    `total` (the appended zero) outside its image. int32 when every value fits, half the
    memory of int64; the rows are built small and widened once by the column index."""
    largest = total + 3 * len(sizes) * height * width  # bounds every intermediate value
    dtype = torch.int32 if largest < 2**31 else torch.int64
    device = sizes.device
    h, w = (sizes[:, i].to(dtype).view(-1, 1, 1, 1) for i in range(2))
    channel = torch.arange(3, dtype=dtype, device=device).view(1, 3, 1, 1)
    y = torch.arange(height, dtype=dtype, device=device).view(1, 1, height, 1)
    x = torch.arange(width, dtype=dtype, device=device).view(1, 1, 1, width)
    row_starts = offsets.to(dtype).view(-1, 1, 1, 1) + (channel * h + y) * w  # (B, 3, H, 1)
    positions = row_starts + x
    return positions.masked_fill_((y >= h) | (x >= w), total)


def _check_pasted_sizes(images: list[Tensor], sizes: np.ndarray) -> None:
    """Each decoded image must be (3, h, w) at its index size (shapes only: no device sync)."""
    if len(images) == 0 or sizes.shape != (len(images), 2):
        raise ValueError(
            f"expected one (h, w) per image for {len(images)} images; got {sizes.shape}"
        )
    for slot, (image, (h, w)) in enumerate(zip(images, sizes.tolist(), strict=True)):
        if tuple(image.shape) != (3, h, w):
            raise ValueError(
                f"image {slot} was decoded as {tuple(image.shape)}; its index says (3, {h}, {w})"
            )


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A host array on `device`; onto a GPU from pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
