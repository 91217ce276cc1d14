"""Throughput of the full augmentation recipe on device-resident uint8 images.

Prints one JSON line, e.g.
{"device": "cpu", "device_name": "...", "batch": 512, "size": 32, "iters": 20,
 "seconds_per_batch": 0.02, "images_per_s": 25000.0}

Usage: python benchmarks/augment_speed.py --device auto --batch 512 --iters 50 --size 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from interlab.augment import Augment, AugmentConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="input and output side in pixels")
    parser.add_argument("--blur-p", type=float, default=0.0, help="GaussianBlur probability")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = parser.parse_args(argv)
    for name in ("batch", "iters", "size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_augment(augment: Augment, images: torch.Tensor, iters: int, warmup: int) -> float:
    """Seconds per batch, averaged over `iters` calls after `warmup` untimed ones."""
    device = images.device
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(warmup):
        augment(images, generator)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        augment(images, generator)
    synchronize(device)
    return (time.perf_counter() - start) / iters


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = torch.Generator(device=device).manual_seed(1)
    shape = (args.batch, args.size, args.size, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    augment = Augment(AugmentConfig(size=args.size, blur_p=args.blur_p))
    seconds = time_augment(augment, images, args.iters, args.warmup)
    result = {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "blur_p": args.blur_p,
        "iters": args.iters,
        "seconds_per_batch": round(seconds, 6),
        "images_per_s": round(args.batch / seconds, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
