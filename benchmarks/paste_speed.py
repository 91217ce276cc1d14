"""Pasting a decoded batch into its padded buffer: one copy per image vs one gather.

    python benchmarks/paste_speed.py [--device cuda] [--batch 256] [--repeats 20]

Random uint8 (3, h, w) images of ImageNet-after-prepare sizes (shorter side 256, longer side
256-455 px, portrait or landscape) already on the device, as nvJPEG returns them; times
(wall clock, the device synchronised) the per-image paste the shards path used on a GPU and
`paste_padded`, checks both give the same batch, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from throughput import time_steps

from interlab.data.shards import paste_padded


def random_images(batch: int, device: torch.device, seed: int = 0):
    rng = np.random.default_rng(seed)
    longer = rng.integers(256, 456, batch)
    portrait = rng.random(batch) < 0.3
    sizes = np.stack([np.where(portrait, longer, 256), np.where(portrait, 256, longer)], 1)
    images = [
        torch.randint(0, 256, (3, int(h), int(w)), dtype=torch.uint8, device=device)
        for h, w in sizes
    ]
    return images, sizes.astype(np.int64)


def paste_per_image(images, sizes: np.ndarray, device: torch.device) -> torch.Tensor:
    """The former GPU path: zeros, then one copy per image."""
    height, width = (int(v) for v in sizes.max(axis=0))
    planar = torch.zeros(len(images), 3, height, width, dtype=torch.uint8, device=device)
    for slot, image in enumerate(images):
        planar[slot, :, : image.shape[1], : image.shape[2]] = image
    return planar


def seconds_per_call(paste, images, sizes, device: torch.device, repeats: int) -> float:
    return time_steps(lambda: paste(images, sizes, device), repeats, 1, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error(f"--batch and --repeats must be >= 1; got {args.batch}, {args.repeats}")
    device = torch.device(args.device)
    images, sizes = random_images(args.batch, device)
    gathered = paste_padded(images, sizes, device)[0]
    same = bool(torch.equal(gathered, paste_per_image(images, sizes, device)))
    record = {
        "benchmark": "paste_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "padded_shape": list(gathered.shape),
        "same_batch": same,
        "per_image_ms": 1000
        * seconds_per_call(paste_per_image, images, sizes, device, args.repeats),
        "one_gather_ms": 1000 * seconds_per_call(paste_padded, images, sizes, device, args.repeats),
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
