"""kNN at ImageNet scale on this machine: 1.28M memory features, chunked, bounded memory.

    python benchmarks/knn_scale.py [--memory 1281167] [--queries 2000] [--dim 128] [--device cpu]

The features are synthetic (1,000 noisy class centres on the sphere, L2-normalised) so the
answer is known; what is measured is the protocol's cost at full size: the time per query
and the peak memory beyond the features themselves (the default chunk keeps each
(rows x N) similarity block under 2^27 entries). Prints one JSON line for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F

from interlab.evaluate import knn_chunk_rows, knn_top1

NOISE = 0.2  # per dimension: neighbours of other classes come close, top-1 below 1


def clustered(count: int, centres: torch.Tensor, noise: float, generator: torch.Generator):
    labels = torch.randint(0, len(centres), (count,), generator=generator)
    points = centres[labels] + noise * torch.randn(count, centres.shape[1], generator=generator)
    return F.normalize(points, dim=1), labels


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, default=1_281_167)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(args.classes, args.dim, generator=generator), dim=1)
    memory = torch.empty(args.memory, args.dim)
    memory_labels = torch.empty(args.memory, dtype=torch.long)
    for start in range(0, args.memory, 65536):  # in place: the peak before kNN is the features
        rows = slice(start, min(start + 65536, args.memory))
        memory[rows], memory_labels[rows] = clustered(
            rows.stop - rows.start, centres, NOISE, generator
        )
    test, test_labels = clustered(args.queries, centres, NOISE, generator)
    dtype = getattr(torch, args.dtype)
    memory = memory.to(args.device, dtype)
    test, memory_labels = test.to(args.device, dtype), memory_labels.to(args.device)
    before = peak_rss_mb()
    start = time.perf_counter()
    top1 = knn_top1(memory, memory_labels, test, test_labels, args.classes, k=200)
    seconds = time.perf_counter() - start
    row = {
        "memory": args.memory, "queries": args.queries, "dim": args.dim, "dtype": args.dtype,
        "device": args.device, "chunk_rows": knn_chunk_rows(args.memory), "top1": round(top1, 4),
        "seconds": round(seconds, 1), "ms_per_query": round(1000 * seconds / args.queries, 2),
        "features_mb": round(memory.numel() * memory.element_size() / 2**20),
        "peak_rss_growth_mb": round(peak_rss_mb() - before), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()
