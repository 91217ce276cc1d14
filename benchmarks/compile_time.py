"""Cold and warm torch.compile time of named configs, the compiled step rate, and recompiles.

Each config runs twice in a fresh process: first with empty compiler caches (cold: what a
first run on a new machine pays), then with the caches the first left (warm: a second run,
or a resumed one, on the same machine). Each process times its first training step (the
compile), then `--steps` more steps (images/s), then a kNN evaluation and `--steps` steps
again, counting the graphs dynamo compiled after the first step (`recompiles_after_warmup`,
which should be 0).

    python benchmarks/compile_time.py --data npz:PATH/cifar10.npz --device cuda \
        --configs moco_cifar10 [interclr_cifar10 ...]

Prints one JSON line: plain keys for the first config, `CONFIG.KEY` for every config.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    """One process: compile, time, evaluate, count graphs; one JSON line."""
    import torch
    from torch._dynamo.utils import counters

    from interlab.config import build_config, load_named_config
    from interlab.train import Trainer

    keys = load_named_config(args.child)
    keys.update(data=args.data, device=args.device, compile=True, batch_size=args.batch_size)
    keys.update(out=str(Path(tempfile.mkdtemp()) / "run"))
    trainer = Trainer(build_config(keys), progress=False)
    trainer.start_method()
    trainer.model.train()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    order = trainer.epoch_order()
    batch = args.batch_size

    def steps(count: int, first: int) -> float:
        sync()
        start = time.perf_counter()
        for i in range(first, first + count):
            trainer.train_step(order[i * batch : (i + 1) * batch])
        sync()
        return time.perf_counter() - start

    compile_s = steps(1, 0)
    graphs = counters["stats"]["unique_graphs"]
    rate = args.steps * batch / steps(args.steps, 1)
    trainer.knn_accuracy()
    trainer.model.train()
    steps(args.steps, 1 + args.steps)
    figures = {
        "compile_s": round(compile_s, 1),
        "graphs": graphs,
        "recompiles_after_warmup": counters["stats"]["unique_graphs"] - graphs,
        "compiled_images_per_s": round(rate, 1),
    }
    print(json.dumps(figures), flush=True)


def run_child(config: str, args: argparse.Namespace, cache: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    env["TRITON_CACHE_DIR"] = str(cache / "triton")
    command = [sys.executable, __file__, "--child", config, "--data", args.data]
    command += ["--device", args.device, "--steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{config}: compile run failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["moco_cifar10"])
    parser.add_argument("--data", default="cifar10-mini")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}
    figures: dict = {"date": time.strftime("%Y-%m-%d"), "batch": args.batch_size}
    for index, config in enumerate(args.configs):
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child(config, args, Path(cache))
            warm = run_child(config, args, Path(cache))
        result = {
            "cold_compile_s": cold["compile_s"],
            "warm_compile_s": warm["compile_s"],
            "graphs": cold["graphs"],
            "recompiles_after_warmup": max(
                cold["recompiles_after_warmup"], warm["recompiles_after_warmup"]
            ),
            "compiled_images_per_s": warm["compiled_images_per_s"],
        }
        figures.update({f"{config}.{key}": value for key, value in result.items()})
        if index == 0:
            figures.update(result)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
