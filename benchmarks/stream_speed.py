"""Streaming speed: decode + crop + augmentation images/s from shards vs torchvision's loader.

    python benchmarks/stream_speed.py [--device cpu|cuda] [--images 512] [--batch 128]

Generates `--images` JPEGs of ImageNet-like sizes (shorter side 300-500 px, aspect 3:4 to
16:9) in an ImageFolder tree, prepares them into shards (max side 256, as for ImageNet), then
times, in one run on the same files:
- interlab: `ShardSet.padded_batch` (decode on the device: nvJPEG on CUDA, threads on the
  CPU) and two MoCo v2 views at 224 px through `Augment` with per-image crop boxes;
- torchvision: `ImageFolder` + `DataLoader` (`--workers` processes, Pillow decoding) with
  RandomResizedCrop(224, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, RandomGrayscale
  0.2, GaussianBlur p 0.5, flip, ToTensor, Normalize, applied twice per image (two views).
Images/s counts source images (each with its two views). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from interlab.augment import Augment, AugmentConfig
from interlab.data.prepare import prepare
from interlab.data.shards import ShardSet


def make_images(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        shorter = int(rng.integers(300, 501))
        aspect = float(rng.uniform(4 / 3, 16 / 9))
        h, w = (shorter, int(shorter * aspect)) if i % 2 else (int(shorter * aspect), shorter)
        ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None]
        pixels = (rng.integers(0, 56, (h, w, 3)) + ramp).astype(np.uint8)
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def time_shards(shards: Path, batch: int, device: torch.device, iters: int) -> float:
    data = ShardSet(shards).to(device)
    augment = Augment(AugmentConfig(size=224, blur_p=0.5))
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(data))

    def step(i: int) -> None:
        rows = order[(i * batch) % len(data) :][:batch]
        images, sizes = data.padded_batch(rows, device)
        for _ in range(2):
            augment(images, generator, sizes)

    step(0)  # warm-up: decoder and kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(iters):
        step(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iters * batch / (time.perf_counter() - start)


def time_torchvision(root: Path, batch: int, workers: int, iters: int) -> float:
    from torchvision import datasets, transforms

    view = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([transforms.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    folder = datasets.ImageFolder(str(root), transform=lambda image: (view(image), view(image)))
    loader = torch.utils.data.DataLoader(
        folder, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip
    batches = iter(loader)
    next(batches)  # warm-up: workers started
    start, seen = time.perf_counter(), 0
    for _ in range(iters):
        try:
            views, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            views, _ = next(batches)
        seen += views[0].shape[0]
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root, shards = Path(tmp) / "tree", Path(tmp) / "shards"
        make_images(root, args.images)
        prepare(root, shards, max_side=256, workers=args.workers, shard_images=256, progress=False)
        ours = time_shards(shards, args.batch, device, args.iters)
        theirs = time_torchvision(root, args.batch, args.workers, args.iters)
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv), "images": args.images, "batch": args.batch,
        "size": 224, "views_per_image": 2,
        "shards_images_per_s": round(ours, 1), "torchvision_images_per_s": round(theirs, 1),
        "torchvision_workers": args.workers, "speedup": round(ours / theirs, 2),
    }  # fmt: skip
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
