"""How strong should the views be? kNN top-1 of the CPU quickstart MoCo for several view strengths.

Lesson 1 (`notebooks/lessons/01_views.ipynb`) plots the JSON this writes: the same small MoCo
run (ConvNet, cifar10-mini, batch 256, lr 0.06, same seed), trained for a few epochs with the
minimum crop area (`aug.scale`) swept from "almost the whole image" to "a tiny patch", plus one
run without colour jitter and grayscale. Each run's final kNN top-1 (backbone features) and the
untrained network's are recorded with the device, torch version, date and command.

Usage: python benchmarks/lesson_views_curve.py [--epochs 5] [--out runs/lessons/views_curve]
       [--json interlab/lessons/measured/views_curve.json] [--max-variants N]

About 8-12 minutes per variant on 2 CPU cores shared with other jobs (measured), a few
minutes on an idle laptop.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from interlab.lab.quickstart import quickstart_config, untrained_knn
from interlab.train import train

# (name, minimum crop area, colour on): the crop sweep keeps MoCo v2's colour recipe. Most
# telling first (the default, too weak, too strong, no colour): the JSON is rewritten after
# every run, so a measurement cut short still holds the runs that finished.
VARIANTS: tuple[tuple[str, float, bool], ...] = (
    ("crop 0.2", 0.2, True),
    ("crop 0.9", 0.9, True),
    ("crop 0.02", 0.02, True),
    ("crop 0.2, no colour", 0.2, False),
    ("crop 0.5", 0.5, True),
    ("crop 0.08", 0.08, True),
)


def variant_overrides(min_area: float, colour: bool) -> dict[str, Any]:
    keys: dict[str, Any] = {"aug.scale": [min_area, 1.0], "eval_every": 0}
    if not colour:
        keys.update({"aug.jitter_p": 0.0, "aug.gray_p": 0.0})
    return keys


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/lessons/views_curve")
    parser.add_argument("--json", default="interlab/lessons/measured/views_curve.json")
    parser.add_argument(
        "--max-variants", type=int, default=len(VARIANTS), help="measure only the first N"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = []
    baseline = None
    for name, min_area, colour in VARIANTS[: args.max_variants]:
        slug = name.replace(" ", "_").replace(",", "")
        config = quickstart_config(
            device="cpu",
            epochs=args.epochs,
            out_dir=str(out / slug),
            overrides=variant_overrides(min_area, colour),
        )
        if baseline is None:
            baseline = untrained_knn(config)
        start = time.perf_counter()
        result = train(config, resume=False, progress=False)
        seconds = time.perf_counter() - start
        knn = float(result.final["knn_top1"])
        runs.append(
            {
                "name": name,
                "min_crop_area": min_area,
                "colour": colour,
                "knn_top1": knn,
                "train_seconds": round(seconds, 1),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
        record = {
            "what": "kNN top-1 (backbone, cifar10-mini test) of the CPU quickstart MoCo after"
            f" {args.epochs} epochs, per view strength",
            "epochs": args.epochs,
            "knn_top1_untrained": baseline,
            "runs": runs,
            "device": f"cpu ({cpu_name()}, {torch.get_num_threads()} threads, shared with other jobs)",
            "torch": torch.__version__,
            "date": dt.date.today().isoformat(),
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
