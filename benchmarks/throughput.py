"""Images/s of a MoCo v2 training step vs a bare backbone forward+backward on two views.

The MoCo step (GPU augmentation of both views, query forward+backward, key forward, queue,
momentum update, optimiser) should reach >= 60% of the bare backbone rate on a GPU.

    python benchmarks/throughput.py --data npz:/path/cifar10.npz [--device cuda] [--steps 50]
Prints one JSON line; copy the figures with device and date into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from interlab.config import build_config, load_named_config
from interlab.devices import resolve_device
from interlab.nets import build_backbone
from interlab.optim import build_optimizer
from interlab.train import Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of `step` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training_step_rate(trainer: Trainer, steps: int, warmup: int) -> float:
    """Images/s of full training steps (augmentation included) of whatever method `trainer` runs."""
    batch = trainer.config.batch_size
    generator = torch.Generator(device=trainer.device).manual_seed(0)

    def step() -> None:
        indices = torch.randint(
            len(trainer.train_set), (batch,), device=trainer.device, generator=generator
        )
        trainer.train_step(indices)

    trainer.model.train()
    return batch / time_steps(step, steps, warmup, trainer.device)


def bare_step(trainer: Trainer):
    """The reference step: forward+backward of two ready-made views through a plain backbone
    and an SGD update, at the trainer's precision and layout."""
    config, device = trainer.config, trainer.device
    precision = trainer.precision
    net = precision.prepare(
        build_backbone(config.backbone, cifar_stem=config.cifar_stem).to(device)
    )
    if precision.compile:
        net.compile()
    optimizer = build_optimizer(net, "sgd", 0.01, momentum=0.9, weight_decay=0.0)  # as trained
    size = trainer.train_set.image_size
    views = precision.images(torch.randn(2 * config.batch_size, 3, size, size, device=device))

    def step() -> None:
        with trainer.autocast():
            loss = net(views).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bare_backbone_rate(trainer: Trainer, steps: int, warmup: int) -> float:
    """Images/s of `bare_step`: what the MoCo step's rate is measured against."""
    step = bare_step(trainer)
    return trainer.config.batch_size / time_steps(step, steps, warmup, trainer.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-mini")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cuda-graph", action="store_true", help="replay the step as a graph")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-cifar-stem", dest="cifar_stem", action="store_false")
    args = parser.parse_args()
    keys = load_named_config("moco_cifar10")
    keys.update(
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
        backbone=args.backbone,
        cifar_stem=args.cifar_stem,
        out="benchmarks/scratch/throughput",
    )
    trainer = Trainer(build_config(keys), progress=False)
    moco = training_step_rate(trainer, args.steps, args.warmup)
    bare = bare_backbone_rate(trainer, args.steps, args.warmup)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    epoch_s = 50_000 / moco
    print(
        json.dumps(
            {
                "device": name,
                "torch": torch.__version__,
                "backbone": args.backbone,
                "cifar_stem": args.cifar_stem,
                "batch": args.batch_size,
                "compile": args.compile,
                "cuda_graph": args.cuda_graph,
                "moco_images_per_s": round(moco, 1),
                "bare_images_per_s": round(bare, 1),
                "ratio": round(moco / bare, 3),
                "cifar10_epoch_s": round(epoch_s, 2),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
