"""Memory and compute per GPU of the ImageNet-scale configs, estimated on a CPU.

    python benchmarks/config_cost.py [--configs moco_imagenet100 ...] [--out FILE]

Each named config takes two training steps from generated shards (224 px, bf16 autocast as on
a GPU) at two small batch sizes, under torch's FlopCounterMode and a saved-tensors hook: the
FLOPs of a step and the bytes autograd keeps for backward are both linear in the batch, so
two sizes give the per-image cost and the fixed part, scaled to the config's batch per GPU.
Memory adds the state: weights, gradients and SGD momentum, the momentum encoder, queues and
prototypes (as built), and what depends on the dataset's size (InterCLR's bank and labels,
its gathered negatives), computed for the real N. Time divides FLOPs by the rate a bare
ResNet-18 (CIFAR stem) step reached on an H100 (peers.md, 2026-11-22: 59.5k views/s fwd+bwd
with bf16 and channels_last, eager), counted with the same counter. Every figure here is an
estimate: no cuDNN workspaces or allocator slack. A GPU machine measures the real ones:
`--measure cuda` times each config's step at its own batch and reads the peak memory
allocated (an item of the GPU pack).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from stream_speed import make_images
from torch.utils.flop_counter import FlopCounterMode

from interlab.config import build_config, load_named_config
from interlab.data.prepare import prepare
from interlab.nets import build_backbone
from interlab.train import Trainer

CONFIGS = ["moco_imagenet100", "interclr_imagenet100", "interclr_imagenet", "scfs_imagenet",
           "cyclecontrast_frames"]  # fmt: skip
IMAGES = {"imagenet100": 126_689, "imagenet": 1_281_167, "frames": 1_281_167}
GPUS = 8
H100_R18_VIEWS_PER_S = 59_500  # peers.md: bare R18-CIFAR fwd+bwd, bf16 + channels_last, eager
# The MoCo v2 paper: 200 ImageNet-1k epochs of ResNet-50 (batch 256) in about 53 h on 8 V100s.
MOCO_PAPER_HOURS, MOCO_PAPER_GPUS = 53.0, 8
# InterCLR's bank needs more images than the generated set has: these are set small for the
# step and their real cost is added from the config (`dataset_terms`).
SMALL_QUEUES = {"queue_size": 16, "cycle_queue_size": 24, "support_size": 8}  # CycleContrast
SMALL_BANK = {"num_clusters": 4, "pool": 24, "num_negatives": 8, "min_cluster": 2}


class SavedBytes:
    """Bytes of distinct storages autograd saves for backward during a forward."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure_step(trainer: Trainer) -> tuple[float, int]:
    """(FLOPs, saved bytes) of one training step, forward and backward."""
    saved = SavedBytes()
    indices = trainer.epoch_order()[: trainer.config.batch_size]
    keep = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t)
    with FlopCounterMode(display=False) as flops, keep:
        trainer.train_step(indices)
    return float(flops.get_total_flops()), saved.total


def small_trainer(
    name: str, data: str, batch: int, out: Path, device: str = "cpu", **overrides: object
) -> Trainer:
    keys = load_named_config(name)
    keys.update(data=data, device=device, amp=True, batch_size=batch, out=str(out))
    if "split_bn" in keys and batch % 8:  # 8 BN groups need 8 | batch
        keys["split_bn"] = 1
    if keys["method"] == "interclr":
        keys.update(SMALL_BANK)
    if keys["method"] == "cyclecontrast":
        keys.update(SMALL_QUEUES)
    keys.update(overrides)
    trainer = Trainer(build_config(keys), progress=False)
    trainer.start_method()
    return trainer


def state_bytes(trainer: Trainer) -> dict[str, int]:
    """Weights + gradients + SGD momentum of what trains, and every buffer and frozen copy."""
    trainable = sum(p.numel() * 4 for p in trainer.method.parameters() if p.requires_grad)
    frozen = sum(p.numel() * 4 for p in trainer.method.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in trainer.method.buffers())
    return {"trained_x3": 3 * trainable, "frozen": frozen, "buffers": buffers}


def dataset_terms(keys: dict, batch: int, images: int) -> dict[str, int]:
    """What the small step left out, for the real sizes: InterCLR's N-sized bank (+ labels)
    and its per-step negatives; CycleContrast's two queues (+ ids) and their logits."""
    if keys["method"] == "cyclecontrast":
        queued = keys["queue_size"] + keys["cycle_queue_size"]
        logits = batch * (queued + keys["support_size"]) * 4 * 3
        return {"queues": queued * (keys.get("proj_dim", 128) * 4 + 16), "logits": logits}
    if keys["method"] != "interclr":
        return {}
    dim = keys.get("proj_dim", 128)
    negatives = batch * keys["num_negatives"] * dim * 4  # gathered from the fp32 bank
    logits = batch * (keys["num_negatives"] + 1) * 4 * 3  # logits, softmax, its gradient
    return {"bank": images * (dim * 4 + 8), "negatives": negatives + logits}


def dataset_size(name: str) -> int:
    if name.startswith("cyclecontrast"):
        return IMAGES["frames"]
    return IMAGES["imagenet100" if name.endswith("imagenet100") else "imagenet"]


def r18_flops_per_view() -> float:
    net = build_backbone("resnet18", cifar_stem=True)
    images = torch.randn(8, 3, 32, 32)
    with FlopCounterMode(display=False) as flops:
        net(images).sum().backward()
    return flops.get_total_flops() / 8


def data_for(name: str, root: Path, images: int = 48) -> str:
    frames = name.startswith("cyclecontrast")
    target = root / ("frames" if frames else "images")
    if not (target / "train" / "index.npz").exists():
        source = root / ("frame_tree" if frames else "tree")
        make_images(source / ("" if frames else "train"), images, seed=1)
        prepare(source, target, workers=1, frames=frames, progress=False)
    return f"shards:{target}"


def config_cost(
    name: str, root: Path, sizes: tuple[int, int], rate: float, v100_rate: float
) -> dict:
    """One config's estimate: per-step FLOPs and memory at its batch per GPU, and the
    wall-clock hours of its whole run on 8 GPUs at the H100 and the MoCo-paper V100 rates."""
    keys = load_named_config(name)
    batch = keys["batch_size"]
    data = data_for(name, root)
    points = []
    for size in sizes:
        trainer = small_trainer(name, data, size, root / f"run_{name}_{size}")
        measure_step(trainer)  # the first step allocates lazily built parts
        points.append(measure_step(trainer))
    (f2, s2), (f4, s4) = points
    span = sizes[1] - sizes[0]
    flops_per_image, saved_per_image = (f4 - f2) / span, (s4 - s2) / span
    flops = f2 + (batch - sizes[0]) * flops_per_image
    saved = s2 + (batch - sizes[0]) * saved_per_image
    state = state_bytes(trainer)
    images = dataset_size(name)
    extra = dataset_terms(keys, batch, images)
    step_flops = flops * (images // (batch * GPUS)) * keys["epochs"]  # per GPU, whole run
    return {
        "config": name, "batch_per_gpu": batch, "gpus": GPUS, "epochs": keys["epochs"],
        "gflops_per_step": round(flops / 1e9, 1), "gflops_per_image": round(flops_per_image / 1e9, 2),
        "activations_gb": round(saved / 1e9, 2),
        "state_gb": {k: round(v / 1e9, 3) for k, v in {**state, **extra}.items()},
        "memory_gb": round((saved + sum(state.values()) + sum(extra.values())) / 1e9, 1),
        "hours_h100_est": round(step_flops / rate / 3600, 2),
        "hours_v100_moco_rate": round(step_flops / v100_rate / 3600, 1),
        "images": images,
    }  # fmt: skip


def measured_step(name: str, root: Path, device: str, steps: int = 5, **overrides: object) -> dict:
    """The config's real step on `device` at its own batch: seconds per step and, on CUDA,
    the peak memory allocated; the hours of its whole run on 8 such GPUs (compute only)."""
    keys = load_named_config(name)
    batch = int(overrides.pop("batch_size", keys["batch_size"]))
    data = data_for(name, root, images=max(2 * batch, 48))
    trainer = small_trainer(name, data, batch, root / f"measure_{name}", device, **overrides)
    indices = trainer.epoch_order()[:batch]
    cuda = trainer.device.type == "cuda"
    for _ in range(2):  # warm-up: lazy buffers, cuDNN autotune
        trainer.train_step(indices)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(indices)
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    run_steps = dataset_size(name) // (batch * GPUS) * keys["epochs"]
    return {
        "config": name, "batch_per_gpu": batch, "step_s": round(step_s, 4),
        "images_per_s": round(batch / step_s, 1), "hours_8gpu": round(step_s * run_steps / 3600, 2),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "device": str(trainer.device),
    }  # fmt: skip


def measure(configs: list[str], device: str) -> None:
    """`--measure DEVICE`: every config's real step (the GPU pack runs this on a GPU machine)."""
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in configs:
            rows[name] = measured_step(name, Path(folder), device)
            print(json.dumps(rows[name]), flush=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(json.dumps({"measured": rows, "device": name, "torch": torch.__version__,
                      "date": time.strftime("%Y-%m-%d")}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--sizes", type=int, nargs=2, default=(2, 4))
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--measure", metavar="DEVICE", help="measure each config's step there")
    args = parser.parse_args()
    if args.measure:
        return measure(args.configs, args.measure)
    per_view = r18_flops_per_view()
    rate = per_view * H100_R18_VIEWS_PER_S
    header = {"h100_rate_tflops": round(rate / 1e12, 1), "r18_gflops_per_view": per_view / 1e9,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(json.dumps(header), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        moco = config_cost("moco_imagenet100", Path(folder), tuple(args.sizes), rate, 1.0)
        moco_flops = moco["gflops_per_step"] * 1e9 / moco["batch_per_gpu"]  # per image
        v100_rate = (
            IMAGES["imagenet"] * 200 * moco_flops / (MOCO_PAPER_HOURS * 3600 * MOCO_PAPER_GPUS)
        )
        print(json.dumps({"v100_moco_rate_tflops": round(v100_rate / 1e12, 2)}), flush=True)
        header["v100_moco_rate_tflops"] = round(v100_rate / 1e12, 2)
        for name in args.configs:
            start = time.perf_counter()
            if name == "moco_imagenet100":  # measured above; only its V100 hours were missing
                row = {
                    **moco,
                    "hours_v100_moco_rate": round(moco["hours_v100_moco_rate"] / v100_rate, 1),
                }
            else:
                row = config_cost(name, Path(folder), tuple(args.sizes), rate, v100_rate)
            row = {**row,
                   "seconds": round(time.perf_counter() - start)}  # fmt: skip
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as sink:
                    sink.write(json.dumps({**header, **row}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
