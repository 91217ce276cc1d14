"""Lesson 3's measured figure: MoCo kNN top-1 over queue size x key-encoder momentum (CPU).

    python benchmarks/lesson_queue_momentum.py [--epochs 6] [--device cpu]

The quickstart's CPU settings (ConvNet, batch 256, lr 0.06, t 0.2) on the embedded
cifar10-mini data, one seed per setting, a few epochs each; only `queue_size` and
`encoder_momentum` change. Writes `interlab/lessons/measured/queue_momentum.json`, which
`notebooks/lessons/03_first_model.ipynb` plots (`interlab.lessons.first_model`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from interlab.lab.quickstart import quickstart_config
from interlab.train import train

OUT = Path(__file__).resolve().parents[1] / "interlab" / "lessons" / "measured"
QUEUE_SIZES = (256, 1024, 4096)
MOMENTA = (0.9, 0.99, 0.999)
# The cross through the quickstart's setting (queue 1024, m 0.99) first, the corners after:
# the sweep is resumable and stores every finished run, so a cut-short sweep is still a cross.
ORDER = [(1024, 0.99), (256, 0.99), (4096, 0.99), (1024, 0.9), (1024, 0.999)] + [
    (q, m) for q in QUEUE_SIZES for m in MOMENTA if m != 0.99 and q != 1024
]


def one_run(queue_size: int, momentum: float, epochs: int, device: str, folder: Path) -> dict:
    config = quickstart_config(
        method="moco",
        epochs=epochs,
        device=device,
        out_dir=str(folder / f"q{queue_size}_m{momentum}"),
        overrides={"queue_size": queue_size, "encoder_momentum": momentum, "eval_every": epochs},
    )
    start = time.perf_counter()
    result = train(config, resume=False, progress=False)
    curve = {m["epoch"]: m["knn_top1"] for m in result.metrics if "knn_top1" in m}
    return {
        "queue_size": queue_size,
        "encoder_momentum": momentum,
        "knn_top1": result.final["knn_top1"],
        "knn_curve": curve,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=len(ORDER), help="the first N of the order")
    parser.add_argument("--out", default=str(OUT / "queue_momentum.json"))
    args = parser.parse_args()
    out = Path(args.out)
    runs = json.loads(out.read_text(encoding="utf-8"))["runs"] if out.exists() else []
    done = {(r["queue_size"], r["encoder_momentum"]) for r in runs}
    with tempfile.TemporaryDirectory() as folder:
        for queue_size, momentum in ORDER[: args.runs]:
            if (queue_size, momentum) in done:
                continue
            runs.append(one_run(queue_size, momentum, args.epochs, args.device, Path(folder)))
            print(json.dumps(runs[-1]), flush=True)
            write(out, args, runs)


def write(out: Path, args: argparse.Namespace, runs: list[dict]) -> None:
    record = {
        "what": "MoCo v2 kNN top-1 (k=200, t=0.1) after a short run, per queue size x momentum",
        "data": "cifar10-mini (5,000 train / 1,000 test)",
        "settings": "quickstart CPU settings: convnet, batch 256, lr 0.06, t 0.2, proj BN; seed 0",
        "epochs": args.epochs,
        "device": args.device,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(["benchmarks/lesson_queue_momentum.py", *sys.argv[1:]]),
        "note": "one seed per setting; seed-to-seed spread of such runs is about 1 point; "
        "wall times measured on a shared, heavily loaded 2-core machine",
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(runs)} runs)", flush=True)


if __name__ == "__main__":
    main()
