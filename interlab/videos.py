"""Frames of videos for CycleContrast: real video frames, or pseudo-videos made from still images.

A real video set (`frames:PATH`, read by `load_frames`) gives every frame the id of its video;
`VideoIndex` then draws, for each frame of a batch, another frame of the same video in one gather.

A pseudo-video turns one image into T frames along a smooth random camera path: the crop
window pans and zooms linearly from a start box to an end box, and a per-channel colour gain
drifts slightly, so neighbouring frames overlap like neighbouring frames of a clip. Paths and
frames are drawn per image on the images' device with no loop over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from interlab.augment import resized_crop
from interlab.data.folders import (
    DEFAULT_FOLDER_IMAGE_SIZE,
    IMAGE_EXTENSIONS_TEXT,
    class_folders,
    class_image_files,
    read_square_images,
)
from interlab.data.imageset import ImageSet


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
    files, folder_index = class_image_files(directory, class_folders(directory))
    if not files:
        raise ValueError(f"no frames ({IMAGE_EXTENSIONS_TEXT}) in video folders of {directory}")
    _, videos = np.unique(np.asarray(folder_index), return_inverse=True)
    images = torch.from_numpy(read_square_images(files, size))
    labels = torch.full((len(files),), -1, dtype=torch.int64)
    return ImageSet(images, labels, [], videos=torch.from_numpy(videos.astype(np.int64)))


class VideoIndex:
    """Which frames belong to which video, sorted so one video's frames are contiguous.

    Every table lives on the device of `videos` (the run's device: steps index it there)."""

    def __init__(self, videos: Tensor) -> None:
        if videos.dtype != torch.int64 or videos.dim() != 1 or len(videos) == 0:
            raise ValueError(f"videos must be a non-empty int64 (N,) tensor; got {videos!r:.80}")
        self.videos = videos
        self.order = torch.argsort(videos, stable=True)  # frame positions grouped by video
        counts = torch.bincount(videos)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def other_frames(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """For each frame position, a uniformly drawn frame of its video (possibly itself).

        As in the released CycleContrast, frame b is drawn independently of frame a; a video
        with a single frame pairs the frame with itself.
        """
        if frames.device != self.videos.device:
            raise ValueError(
                f"frames are on {frames.device} but this video index on {self.videos.device}; "
                "build the index from videos on the frames' device"
            )
        video = self.videos[frames]
        draw = torch.rand(len(frames), device=frames.device, generator=generator)
        count = self.counts[video]
        offset = torch.minimum((draw * count).long(), count - 1)
        return self.order[self.starts[video] + offset]


@dataclass
class PseudoVideoConfig:
    """How a still image becomes a clip: T frames along a pan/zoom path with colour drift."""

    frames: int = 4
    zoom: tuple[float, float] = (0.6, 1.0)  # crop side as a fraction of the image side
    pan: float = 0.25  # largest move of the crop centre over the clip, in image sides
    drift: float = 0.1  # largest change of a channel's gain over the clip

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"pseudo-video frames must be >= 1; got {self.frames}")
        low, high = self.zoom
        if not 0 < low <= high <= 1:
            raise ValueError(f"zoom must satisfy 0 < low <= high <= 1; got {self.zoom}")
        if not 0 <= self.pan <= 1:
            raise ValueError(f"pan must be in [0, 1]; got {self.pan}")
        if not 0 <= self.drift < 1:
            raise ValueError(f"drift must be in [0, 1); got {self.drift}")


@dataclass
class CameraPaths:
    """Per-image start and end of the path: centres (B, 2) as (y, x), sides (B,), gains (B, 3)."""

    centre0: Tensor
    centre1: Tensor
    side0: Tensor
    side1: Tensor
    gain0: Tensor
    gain1: Tensor

    def at(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centre, side and gain at times t (B,) in [0, 1]: straight lines between the ends.

        A box is inside the image when centre - side/2 >= 0 and centre + side/2 <= 1, which
        is linear in (centre, side): every point between two inside ends is inside too.
        """
        w = t.view(-1, 1)
        centre = torch.lerp(self.centre0, self.centre1, w)
        side = torch.lerp(self.side0, self.side1, t)
        gain = torch.lerp(self.gain0, self.gain1, w)
        return centre, side, gain


def sample_paths(
    batch: int,
    config: PseudoVideoConfig,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> CameraPaths:
    """One random camera path per image (one uniform draw of 12 numbers each)."""
    u = torch.rand(batch, 12, device=device, generator=generator)
    low, high = config.zoom
    side0 = low + (high - low) * u[:, 0]
    side1 = low + (high - low) * u[:, 1]
    centre0 = side0[:, None] / 2 + u[:, 2:4] * (1 - side0[:, None])
    wanted = centre0 + config.pan * (2 * u[:, 4:6] - 1)
    half1 = side1[:, None] / 2
    centre1 = torch.minimum(torch.maximum(wanted, half1), 1 - half1)
    gain0 = 1 + config.drift * (u[:, 6:9] - 0.5)
    gain1 = 1 + config.drift * (u[:, 9:12] - 0.5)
    return CameraPaths(centre0, centre1, side0, side1, gain0, gain1)


def frame_times(frame_index: Tensor, frames: int) -> Tensor:
    """Frame j of T sits at time j / (T - 1) along the path (0 for a one-frame clip)."""
    return frame_index.float() / max(frames - 1, 1)


def render_frames(images: Tensor, paths: CameraPaths, t: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) images -> uint8 frames at times t (B,), same size as the images."""
    b, h, w, _ = images.shape
    centre, side, gain = paths.at(t.to(images.device))
    side_px = torch.clamp(torch.round(side * h), 1, h)
    top = torch.clamp(
        torch.round(centre[:, 0] * h - side_px / 2), torch.zeros_like(side_px), h - side_px
    )
    left = torch.clamp(
        torch.round(centre[:, 1] * w - side_px / 2), torch.zeros_like(side_px), w - side_px
    )
    boxes = torch.stack([top, left, side_px, side_px], dim=1).long()
    planar = images.permute(0, 3, 1, 2).float()
    frames = resized_crop(planar, boxes, h) * gain.view(b, 3, 1, 1)
    return frames.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def frame_pairs(
    images: Tensor, config: PseudoVideoConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Frames a and b of each image's pseudo-video, drawn independently among its T frames."""
    b = len(images)
    paths = sample_paths(b, config, images.device, generator)
    picks = torch.randint(config.frames, (2, b), device=images.device, generator=generator)
    frame_a = render_frames(images, paths, frame_times(picks[0], config.frames))
    frame_b = render_frames(images, paths, frame_times(picks[1], config.frames))
    return frame_a, frame_b


def pseudo_videos(
    images: Tensor, config: PseudoVideoConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Every frame of each image's pseudo-video: uint8 (B, T, H, W, 3), for looking at."""
    b, t = len(images), config.frames
    paths = sample_paths(b, config, images.device, generator)
    clips = [
        render_frames(images, paths, torch.full((b,), j / max(t - 1, 1), device=images.device))
        for j in range(t)
    ]
    return torch.stack(clips, dim=1)


SHAPES = ("square", "disc", "triangle")


def write_moving_shapes(
    root: str | Path, videos: int = 12, max_frames: int = 5, size: int = 32, seed: int = 0
) -> Path:
    """A tiny real-frames set in the `frames:` layout: each video one shape gliding over a
    coloured background, 1 to `max_frames` frames (PNG). For tests and demos without data."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for video in range(videos):
        folder = root / f"video_{video:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = SHAPES[video % len(SHAPES)]
        background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        start, velocity = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(-2.5, 2.5, 2)
        radius = rng.uniform(0.15, 0.3) * size
        for frame in range(int(rng.integers(1, max_frames + 1))):
            centre = start + frame * velocity
            image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
            _draw_shape(ImageDraw.Draw(image), shape, centre, radius, tuple(int(c) for c in colour))
            image.save(folder / f"frame_{frame:03d}.png")
    return root


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre, radius: float, colour) -> None:
    x, y = float(centre[0]), float(centre[1])
    if shape == "square":
        draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif shape == "disc":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    else:
        draw.polygon(
            [(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour
        )
