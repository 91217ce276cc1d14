"""CPU step rate of every method under each precision setting, and the quickstart's kNN in each.

    python benchmarks/cpu_precision.py                       # step rates, mini data, ConvNet
    python benchmarks/cpu_precision.py --quickstart --seeds 0 1 2

Settings: `fp32` (contiguous NCHW, no autocast: the exact path), `channels_last` (fp32) and
`bf16` (bf16 autocast + channels_last, forced with amp=true even where the CPU has no native
bf16). The default policy is channels_last plus bf16 only where the CPU runs it natively, so
on an AVX2 CPU it is the `channels_last` row. Prints one JSON line per measurement and a
markdown table; copy it with the device and date into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from throughput import training_step_rate

from interlab.config import build_config, load_named_config
from interlab.devices import native_bf16
from interlab.lab.quickstart import quickstart_config
from interlab.train import Trainer, train

SETTINGS = {
    "fp32": {"amp": False, "channels_last": False},
    "channels_last": {"amp": False, "channels_last": True},
    "bf16": {"amp": True, "channels_last": True},
}
# Each method's named config (its own options) where one exists; SimCLR has its defaults.
METHOD_CONFIGS = {
    "moco": "moco_cifar10",
    "simclr": None,
    "interclr": "interclr_cifar10",
    "cyclecontrast": "cyclecontrast_cifar10",
    "dino": "dino_cifar10",
    "scfs": "scfs_cifar10",
}


def step_rate(method: str, setting: str, args: argparse.Namespace) -> float:
    """Images/s of full training steps (augmentation included) on the mini data."""
    name = METHOD_CONFIGS[method]
    keys = load_named_config(name) if name else {"method": method}
    keys.update(SETTINGS[setting])
    keys.update(
        data="cifar10-mini", device="cpu", backbone="convnet", cifar_stem=False,
        batch_size=args.batch_size, out=f"benchmarks/scratch/cpu_precision/{method}",
    )  # fmt: skip
    if method == "cyclecontrast":  # both queues under the mini set's 5,000-image epoch
        keys.update(cycle_queue_size=2048, support_size=512, queue_size=2048)
    if method in ("moco", "interclr"):
        keys.update(queue_size=2048)
    trainer = Trainer(build_config(keys), progress=False)
    trainer.start_method()
    return training_step_rate(trainer, args.steps, args.warmup)


def quickstart_knn(setting: str, seed: int) -> dict[str, float]:
    """The quickstart's CPU run (ConvNet, 20 epochs, mini data) under one setting."""
    out = f"benchmarks/scratch/cpu_precision/quickstart_{setting}_{seed}"
    overrides = {**SETTINGS[setting], "seed": seed}
    config = quickstart_config(device="cpu", out_dir=out, overrides=overrides)
    start = time.perf_counter()
    final = train(config, resume=False, progress=False).final
    return {
        "knn_top1": final["knn_top1"],
        "knn_top1_head": final["knn_top1_head"],
        "train_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_CONFIGS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quickstart", action="store_true", help="final kNN instead of step rates")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, native bf16: {native_bf16(torch.device('cpu'))})"
    rows = []
    for setting in args.settings:
        if args.quickstart:
            for seed in args.seeds:
                row = {"setting": setting, "seed": seed, **quickstart_knn(setting, seed)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            continue
        for method in args.methods:
            row = {
                "setting": setting,
                "method": method,
                "images_per_s": step_rate(method, setting, args),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
        )
    )


if __name__ == "__main__":
    main()
