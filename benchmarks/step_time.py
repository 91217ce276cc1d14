"""Training-step time of named configs, side by side, each relative to the first.

    python benchmarks/step_time.py --data npz:/path/cifar10.npz \
        --configs moco_cifar10 cyclecontrast_cifar10 dino_cifar10 scfs_cifar10 [--device cuda]

Same data, batch and backbone for every config (their own method options otherwise), so the
ratios are the cost of each method's extra work at equal batch: CycleContrast's third view
and cycle branch, SCFS's per-layer heads and feature search over DINO. Prints one JSON line;
copy it with the device and date into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from throughput import training_step_rate

from interlab.config import build_config, load_named_config
from interlab.devices import resolve_device
from interlab.train import Trainer


def trainer_for(config_name: str, args: argparse.Namespace, out: str = "step_time") -> Trainer:
    """A named config's trainer on the given data, device, batch and backbone (and `amp`,
    when the arguments have it), its method started, ready to step."""
    keys = load_named_config(config_name)
    keys.update(
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
        backbone=args.backbone,
        cifar_stem=args.cifar_stem,
        out=f"benchmarks/scratch/{out}_{config_name}",
    )
    if getattr(args, "amp", None) is not None:
        keys["amp"] = args.amp
    trainer = Trainer(build_config(keys), progress=False)
    trainer.start_method()
    return trainer


def step_seconds(config_name: str, args: argparse.Namespace) -> float:
    trainer = trainer_for(config_name, args)
    return args.batch_size / training_step_rate(trainer, args.steps, args.warmup)


def add_step_options(parser: argparse.ArgumentParser, data: str) -> None:
    """The options `step_seconds` reads: data, device, batch, step counts, backbone."""
    parser.add_argument("--data", default=data)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-cifar-stem", dest="cifar_stem", action="store_false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["moco_cifar10", "cyclecontrast_cifar10"])
    add_step_options(parser, data="cifar10")
    args = parser.parse_args()
    device = resolve_device(args.device)
    seconds = {name: step_seconds(name, args) for name in args.configs}
    first = seconds[args.configs[0]]
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "backbone": args.backbone,
        "cifar_stem": args.cifar_stem,
        "batch": args.batch_size,
        **{f"{name}_step_ms": round(1000 * s, 2) for name, s in seconds.items()},
        **{f"{name}_over_{args.configs[0]}": round(s / first, 3) for name, s in seconds.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
