"""InterCLR step time vs MoCo v2 step time in one run, and k-means wall time at two scales.

    python benchmarks/interclr_overhead.py --data npz:/path/cifar10.npz [--device cuda]

Same data, backbone (ResNet-18, cifar stem), batch (512) and recipe for both methods; the
InterCLR step adds bank sampling, MarginNCE and online label maintenance. Goal on an H100:
InterCLR <= 1.25x MoCo per step; k-means of 50k x 128 well under 1 s; 1.28M x 128 into 10k
clusters (20 iterations, ImageNet scale) under 2 s with the torch backend.
Prints one JSON line; copy it with device and date into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from step_time import add_step_options, step_seconds
from throughput import synchronize

from interlab.cluster import kmeans
from interlab.devices import resolve_device


def kmeans_seconds(n: int, k: int, device: torch.device, backend: str) -> float:
    features = F.normalize(torch.randn(n, 128, device=device), dim=1)
    kmeans(features[: 4 * k], k, iterations=2, backend=backend)  # warm-up (kernels, allocator)
    synchronize(device)
    start = time.perf_counter()
    kmeans(features, k, iterations=20, backend=backend)
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_options(parser, data="cifar10-mini")
    parser.add_argument("--kmeans-backend", default="torch")
    parser.add_argument("--skip-imagenet-kmeans", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    moco = step_seconds("moco_cifar10", args)
    interclr = step_seconds("interclr_cifar10", args)
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "backbone": args.backbone,
        "batch": args.batch_size,
        "moco_step_ms": round(1000 * moco, 2),
        "interclr_step_ms": round(1000 * interclr, 2),
        "interclr_over_moco": round(interclr / moco, 3),
        "kmeans_50k_x128_k391_s": round(
            kmeans_seconds(50_000, 391, device, args.kmeans_backend), 3
        ),
        "date": time.strftime("%Y-%m-%d"),
    }
    if not args.skip_imagenet_kmeans:
        figures["kmeans_1.28M_x128_k10k_s"] = round(
            kmeans_seconds(1_281_167, 10_000, device, args.kmeans_backend), 3
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
