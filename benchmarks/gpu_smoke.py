"""Every method trains a few steps from every kind of data it supports, on one device.

    PYTHONPATH=. python3 benchmarks/gpu_smoke.py --data npz:.gpudata/cifar10.npz --device cuda
    python benchmarks/gpu_smoke.py --device cpu --methods moco --kinds npz     # on a CPU

The data kinds are cut from the same few hundred images of `--data` into a work folder:
`npz` (those images in the compact JPEG format), `folder` (an ImageFolder tree of PNGs),
`shards` (`interlab prepare` of that tree) and `frames` (moving-shape videos prepared as frames
shards, CycleContrast's real-video path). Each combination is a short run: `epochs=1`,
`max_steps_per_epoch` steps, `eval_every=0` (kNN once, after the last step, where there are
labels). A method that cannot use a kind is skipped with the reason it gives itself
(`Method.shard_problem`); a combination that fails is recorded with its error's last line
(the traceback goes to stderr) and the next one runs. The last line printed is one JSON
object: combinations (ok + failed), ok, failed (names with the error line), skipped (names
with the reason) and seconds. The exit code is 1 when any combination failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from interlab.config import build_config
from interlab.data import ImageSet, load_dataset, write_npz
from interlab.data.prepare import prepare
from interlab.data.shards import ShardSet
from interlab.devices import resolve_device
from interlab.methods import METHOD_NAMES, build_method
from interlab.train import Trainer
from interlab.videos import write_moving_shapes

KINDS = ("npz", "folder", "shards", "frames")
SHARD_KINDS = ("shards", "frames")
# Frames: ~3 per video on average (1 to 5), so ~360 frames: every method's scaled queues
# stay under one epoch at batch 32 (a queue must hold one step's keys, 64 when symmetric).
VIDEOS, MAX_FRAMES = 120, 5
MAX_SIDE = 64  # shards keep these 32-px images whole


def spread(count: int, available: int) -> torch.Tensor:
    """`count` indices spread evenly over `available` (the sets are sorted by class)."""
    if count > available:
        raise ValueError(f"asked for {count} images, the data has {available}")
    return torch.arange(count) * (available // count)


def sample_images(data: str, train: int, test: int, device: torch.device) -> dict[str, ImageSet]:
    """`train` and `test` images of `data`, on the CPU; decoded on `device` when it is CUDA
    (nvJPEG decodes a whole CIFAR-10 npz in about a second there)."""
    decode = device if device.type == "cuda" else None
    splits = {}
    for split, count in (("train", train), ("test", test)):
        images = load_dataset(data, split, decode_device=decode)
        splits[split] = images.subset(spread(count, len(images))).to("cpu")
    return splits


def write_folder(splits: dict[str, ImageSet], root: Path) -> Path:
    """An ImageFolder tree: root/SPLIT/CLASS/NNNNN.png (lossless, so it holds the same pixels)."""
    for split, images in splits.items():
        for index, (pixels, label) in enumerate(zip(images.images, images.labels, strict=True)):
            folder = root / split / images.classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(folder / f"{index:05d}.png")
    return root


class SmokeData:
    """The data kinds, each made on first use in `work` (shards need the folder first)."""

    def __init__(self, data: str, work: Path, train: int, test: int, device: torch.device):
        self.data, self.work, self.train, self.test, self.device = data, work, train, test, device
        self.names: dict[str, str] = {}
        self._splits: dict[str, ImageSet] | None = None

    def splits(self) -> dict[str, ImageSet]:
        if self._splits is None:
            self._splits = sample_images(self.data, self.train, self.test, self.device)
        return self._splits

    def name(self, kind: str) -> str:
        """The `data` value of a run on `kind`, making that kind first if needed."""
        if kind not in self.names:
            self.names[kind] = getattr(self, f"make_{kind}")()
        return self.names[kind]

    def make_npz(self) -> str:
        path = self.work / "sample.npz"
        write_npz(path, self.splits())
        return f"npz:{path}"

    def make_folder(self) -> str:
        return f"folder:{write_folder(self.splits(), self.work / 'folder')}"

    def make_shards(self) -> str:
        folder = Path(self.name("folder").removeprefix("folder:"))
        out = self.work / "shards"
        prepare(folder, out, max_side=MAX_SIDE, workers=workers(), progress=False)
        return f"shards:{out}"

    def make_frames(self) -> str:
        clips = write_moving_shapes(self.work / "clips", videos=VIDEOS, max_frames=MAX_FRAMES)
        out = self.work / "frame_shards"
        prepare(clips, out, frames=True, max_side=MAX_SIDE, workers=workers(), progress=False)
        return f"shards:{out}"


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_config(args: argparse.Namespace, method: str, data: str, out: Path) -> Any:
    """A short run: one epoch cut to `args.steps` steps, kNN only after it."""
    keys = {
        "method": method, "data": data, "device": args.device, "backbone": args.backbone,
        "epochs": 1, "batch_size": args.batch_size, "max_steps_per_epoch": args.steps,
        "eval_every": 0, "out": str(out),
    }  # fmt: skip
    return build_config(keys)


def unsupported(args: argparse.Namespace, method: str, data: str, out: Path) -> str | None:
    """Why `method` cannot train from `data`, in its own words (None: it can). Only shards
    can be refused; the method is built on the CPU, without a trainer, to ask it."""
    if not data.startswith("shards:"):
        return None
    shards = ShardSet(Path(data.removeprefix("shards:")))
    config = run_config(args, method, data, out)
    config.device = "cpu"
    augment = config.augment_config(shards.image_size)
    return build_method(config, augment, len(shards)).shard_problem(shards)


def error_line(exc: BaseException) -> str:
    """`Type: first line of the message`: what a table cell can hold."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".strip()


def train_once(config: Any) -> str:
    """Train; returns a short summary (steps, loss, kNN) of the final metrics."""
    trainer = Trainer(config, progress=False)
    try:
        final = trainer.fit(resume=False).final
    finally:
        del trainer
        release_memory()
    summary = f"step {final.get('step')}, loss {final.get('loss', float('nan')):.3f}"
    if "knn_top1" in final:
        summary += f", kNN {final['knn_top1']:.3f}"
    return summary


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smoke(
    args: argparse.Namespace, data: SmokeData, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every (method, kind) of the arguments; the figures of the JSON line."""
    start = time.monotonic()
    result: dict[str, Any] = {"ok": [], "failed": [], "skipped": []}
    pairs = [(method, kind) for kind in args.kinds for method in args.methods]
    for method, kind in tqdm(pairs, desc="gpu_smoke", unit="run", disable=None):
        name, began = f"{method}/{kind}", time.monotonic()
        try:
            out = data.work / "runs" / name
            reason = unsupported(args, method, data.name(kind), out)
            if reason is not None:
                result["skipped"].append(f"{name}: {reason}")
                say(f"[gpu_smoke] {name}: skipped, {reason}")
                continue
            summary = train_once(run_config(args, method, data.name(kind), out))
        except Exception as exc:  # recorded, and the next combination runs
            traceback.print_exc()
            result["failed"].append(f"{name}: {error_line(exc)}")
            say(f"[gpu_smoke] {name}: FAILED {error_line(exc)}")
            continue
        result["ok"].append(name)
        say(f"[gpu_smoke] {name}: ok in {time.monotonic() - began:.1f} s ({summary})")
    return {
        "combinations": len(result["ok"]) + len(result["failed"]),
        "ok": len(result["ok"]),
        "failed": result["failed"],
        "skipped": result["skipped"],
        "seconds": round(time.monotonic() - start, 1),
    }


def say(line: str) -> None:
    """A line that stays readable beside a progress bar and reaches a log at once."""
    tqdm.write(line)
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-mini", help="npz:PATH or a named set")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--backbone", default="auto", help="auto: resnet18 on CUDA, else convnet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per combination")
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--test-images", type=int, default=128)
    parser.add_argument("--work", help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    for key in ("batch_size", "steps", "train_images", "test_images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.train_images < 4 * args.batch_size:  # the scaled queues must hold a step's keys
        parser.error(
            f"--train-images {args.train_images} must be at least 4 x --batch-size "
            f"({4 * args.batch_size})"
        )
    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = SmokeData(args.data, work, args.train_images, args.test_images, device)
        figures = smoke(args, data, say=say)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    line = {"device": name, "torch": torch.__version__, "backbone": args.backbone, **figures}
    print(json.dumps(line), flush=True)
    return 1 if figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
