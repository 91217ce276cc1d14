"""N training runs side by side on one device against the same N one after another.

For each N of --runs, N `interlab train` processes start together on the device, each in its
own run folder; the script times every process and the group, reads each run's
metrics.jsonl (epoch times, images trained) and, on a GPU, samples nvidia-smi for the memory
the group took. With --mps it measures again with a CUDA MPS daemon started in a temporary
folder (and stopped after), so kernels of different processes run concurrently instead of
taking turns. Prints ONE JSON line at the end:

    python benchmarks/concurrent_runs.py --data npz:PATH/cifar10.npz --device cuda \
        --runs 1 2 4 8 --epochs 3 [--config moco_cifar10] [--mps] [--record FILE]

Per N: `wall_s` (all N finished), `aggregate_images_per_s` (images trained by all runs /
wall_s), `mean_epoch_s` (all epochs) and `steady_epoch_s` (epochs after the first, which
carries the warm-up), each run's `slowdown` (its steady epoch time over N=1's) and
`speedup_vs_sequential` = N * wall_s(N=1) / wall_s(N): above 1, side by side finishes sooner
than one after another. Short runs gain also from overlapping each process's fixed costs
(start, data, kNN); `training_images_per_s` (each run's images over its epochs' time, summed)
and `training_speedup` (that over N=1's) leave them out: what long runs tend to. kNN runs once, after the last epoch (eval_every=0). A short untimed
run goes first (--no-warmup skips it), so N=1 does not pay for a cold machine. Runs share the
CPU threads as a sweep's do (cores / N each when N > 1). Needs no install: the runs get the
repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MPS_CONTROL = "nvidia-cuda-mps-control"


def repo_on_path() -> None:
    """`python benchmarks/concurrent_runs.py` works without an install, as its runs do."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="what `interlab train --data` takes")
    parser.add_argument("--device", default="cuda", help="cpu | cuda | cuda:N")
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--config", default="moco_cifar10")
    parser.add_argument("--set", dest="assignments", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE", help="more config keys for every run")  # fmt: skip
    parser.add_argument("--mps", action="store_true", help="measure again under CUDA MPS")
    parser.add_argument("--out", help="keep the run folders here (default: a temporary one)")
    parser.add_argument("--record", help="also write the JSON here after every group")
    parser.add_argument("--timeout-s", type=float, help="stop a group after this long")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the short untimed run made first")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    bad = [n for n in args.runs if n < 1]
    if bad or len(set(args.runs)) != len(args.runs):
        raise SystemExit(f"--runs takes distinct counts >= 1; got {args.runs}")
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1; got {args.epochs}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise SystemExit(f"--device must be cpu, cuda or cuda:N; got {args.device!r}")
    if args.mps and args.device == "cpu":
        raise SystemExit("--mps needs a CUDA device")
    bad_sets = [text for text in args.assignments if "=" not in text]
    if bad_sets:
        raise SystemExit(f"--set takes KEY=VALUE; got {bad_sets}")


def train_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """One run: the config for a few epochs, kNN only at the end, nothing resumed."""
    return [
        sys.executable, "-m", "interlab", "train", "--config", args.config,
        "--data", args.data, "--epochs", str(args.epochs), "--device", args.device,
        "--out", str(run_dir), "--no-progress", "--no-resume",
        "--set", "eval_every=0", *args.assignments,
    ]  # fmt: skip


def run_env(runs: int, mps: dict[str, str] | None) -> dict[str, str]:
    """The repository on PYTHONPATH, the CPU split as a sweep splits it, MPS's pipes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if runs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // runs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.update(mps or {})
    return env


class MemoryWatch:
    """The least free memory of a GPU while a group runs, sampled from nvidia-smi."""

    def __init__(self, device: str, every_s: float = 0.5) -> None:
        from interlab.lab.device_slots import gpu_memory, resolve_run_device

        self.device = resolve_run_device(device, gpu_memory)
        self.read = gpu_memory
        first = gpu_memory(self.device) if self.device != "cpu" else None
        self.free_before = first.free_gb if first else None
        self.least_free = self.free_before
        self.every_s = every_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(self.every_s):
            memory = self.read(self.device)
            if memory is not None and self.least_free is not None:
                self.least_free = min(self.least_free, memory.free_gb)

    def __enter__(self) -> MemoryWatch:
        if self.free_before is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def used_gb(self) -> float | None:
        """GB the group took at its peak (what nvidia-smi saw; the allocators' caches too)."""
        if self.free_before is None or self.least_free is None:
            return None
        return round(self.free_before - self.least_free, 2)


def start_group(
    args: argparse.Namespace, folder: Path, runs: int, env: dict[str, str]
) -> list[dict[str, Any]]:
    """N training processes, started together; each dies with this script."""
    from interlab.child_processes import die_with_parent

    started = []
    for index in range(runs):
        run_dir = folder / f"n{runs}_{index}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        log = open(run_dir / "train.log", "w")  # noqa: SIM115 (closed when the run ends)
        process = subprocess.Popen(
            train_command(args, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=REPO, preexec_fn=die_with_parent(),
        )  # fmt: skip
        started.append({"dir": run_dir, "process": process, "log": log, "start": time.monotonic()})
    return started


def wait_group(started: list[dict[str, Any]], timeout_s: float | None) -> float:
    """Wait for every process (killing them all past `timeout_s`); the group's wall time."""
    start = min(run["start"] for run in started)
    while any(run.get("end") is None for run in started):
        for run in started:
            if run.get("end") is None and run["process"].poll() is not None:
                run["end"] = time.monotonic()
                run["log"].close()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            for run in started:
                if run.get("end") is None:
                    run["process"].kill()
                    run["process"].wait()
                    run["end"], run["timed_out"] = time.monotonic(), True
                    run["log"].close()
        time.sleep(0.05)
    return max(run["end"] for run in started) - start


def read_run(run: dict[str, Any]) -> dict[str, Any]:
    """A finished process's figures: wall time, epochs, mean epoch time, images trained."""
    result: dict[str, Any] = {
        "wall_s": round(run["end"] - run["start"], 2),
        "returncode": run["process"].returncode,
    }
    metrics = run["dir"] / "metrics.jsonl"
    epochs = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    if epochs:
        times = [record["epoch_time_s"] for record in epochs]
        result["epochs"] = len(epochs)
        result["mean_epoch_s"] = round(sum(times) / len(times), 3)
        steady = times[1:] or times  # the first epoch carries the warm-up (cuDNN's search)
        result["steady_epoch_s"] = round(sum(steady) / len(steady), 3)
        result["images"] = round(sum(r["images_per_s"] * r["epoch_time_s"] for r in epochs))
        result["training_images_per_s"] = round(result["images"] / sum(times), 1)
    if run.get("timed_out"):
        result["error"] = "timed out"
    elif result["returncode"] != 0 or not epochs:
        lines = (run["dir"] / "train.log").read_text(errors="replace").strip().splitlines()
        result["error"] = lines[-1][:300] if lines else "no output"
    return result


def warm_up(args: argparse.Namespace, folder: Path) -> float:
    """One short untimed run first, so no group pays for cold file caches and first imports
    (the first process on a fresh machine is slower); its wall time."""
    short = argparse.Namespace(**vars(args))
    short.epochs = 1
    short.assignments = [*args.assignments, "max_steps_per_epoch=5"]
    started = start_group(short, folder, 1, run_env(1, None))
    return round(wait_group(started, args.timeout_s), 2)


def measure_group(
    args: argparse.Namespace, folder: Path, runs: int, mps: dict[str, str] | None
) -> dict[str, Any]:
    """N runs side by side: each run's figures, the group's wall time and GPU memory."""
    with MemoryWatch(args.device) as memory:
        started = start_group(args, folder, runs, run_env(runs, mps))
        wall_s = wait_group(started, args.timeout_s)
    group = summarise_group([read_run(run) for run in started], wall_s)
    group["gpu_memory_gb"] = memory.used_gb()
    return group


def summarise_group(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The group's figures from its runs' (slowdown and speedup come in `compare`)."""
    ok = [r for r in results if "error" not in r]
    return {
        "runs": len(results),
        "failed": len(results) - len(ok),
        "wall_s": round(wall_s, 2),
        "aggregate_images_per_s": round(sum(r["images"] for r in ok) / wall_s, 1),
        "training_images_per_s": round(sum(r["training_images_per_s"] for r in ok), 1),
        "mean_epoch_s": mean_of(ok, "mean_epoch_s"),
        "steady_epoch_s": mean_of(ok, "steady_epoch_s"),
        "per_run": results,
    }


def mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    return round(sum(run[key] for run in runs) / len(runs), 3) if runs else None


def compare(groups: list[dict[str, Any]]) -> None:
    """Each run's slowdown (its epochs after the first against the lone run's) and each
    group's speedup against the same runs one after another."""
    alone = next((g for g in groups if g["runs"] == 1 and not g["failed"]), None)
    for group in groups:
        if alone is None or group["failed"]:
            group["slowdown"], group["speedup_vs_sequential"] = None, None
            group["training_speedup"] = None
            continue
        for run in group["per_run"]:
            run["slowdown"] = round(run["steady_epoch_s"] / alone["steady_epoch_s"], 3)
        group["slowdown"] = round(group["steady_epoch_s"] / alone["steady_epoch_s"], 3)
        speedup = group["runs"] * alone["wall_s"] / group["wall_s"]
        group["speedup_vs_sequential"] = round(speedup, 3)
        training = group["training_images_per_s"] / alone["training_images_per_s"]
        group["training_speedup"] = round(training, 3)  # what long runs tend to


def start_mps(folder: Path) -> tuple[dict[str, str] | None, str]:
    """An MPS control daemon with its pipes and logs in `folder`: (its environment for the
    runs, or None, and what happened)."""
    control = shutil.which(MPS_CONTROL)
    if control is None:
        return None, f"{MPS_CONTROL} is not on PATH"
    env = {
        "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(folder / "log"),
    }
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [control, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{MPS_CONTROL} -d failed: {error}"
    if result.returncode != 0:
        return None, f"{MPS_CONTROL} -d exited {result.returncode}: {result.stderr.strip()[:200]}"
    return env, "started"


def stop_mps(env: dict[str, str]) -> str:
    """Quit the daemon; the last lines of its control log say whether servers ran."""
    control = shutil.which(MPS_CONTROL) or MPS_CONTROL
    subprocess.run(
        [control], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    log = Path(env["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
    return " | ".join(log.read_text(errors="replace").splitlines()[-4:]) if log.exists() else ""


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        names = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return device
    return names.splitlines()[0].strip() if names.strip() else device


def torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def measure_all(args: argparse.Namespace, folder: Path, report: dict[str, Any]) -> None:
    """Every N without MPS, then with it if asked; `report` grows (and is saved) as it goes."""
    from tqdm.auto import tqdm

    modes = ["default", "mps"] if args.mps else ["default"]
    bar = tqdm(total=len(modes) * len(args.runs), desc="groups", disable=not args.progress)
    try:
        if args.warmup:
            bar.set_postfix(mode="warm-up")
            report["warmup_s"] = warm_up(args, folder / "warmup")
        for mode in modes:
            env = None
            if mode == "mps":
                env, detail = start_mps(folder / "mps")
                report["mps"] = {"requested": True, "available": env is not None, "detail": detail}
                if env is None:
                    bar.update(len(args.runs))
                    break
            try:
                groups = report["results"].setdefault(mode, [])
                for runs in args.runs:
                    bar.set_postfix(mode=mode, runs=runs)
                    groups.append(measure_group(args, folder / mode, runs, env))
                    compare(groups)
                    save(report, args.record)
                    bar.update(1)
            finally:
                if env is not None:
                    report["mps"]["log"] = stop_mps(env)
    finally:
        bar.close()


def headline(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Flat figures for tables: `speedup_vs_sequential_n4`, `mps_aggregate_images_per_s_n8`..."""
    flat = {}
    for mode, groups in results.items():
        prefix = "" if mode == "default" else f"{mode}_"
        for group in groups:
            for key in ("speedup_vs_sequential", "training_speedup", "aggregate_images_per_s"):
                flat[f"{prefix}{key}_n{group['runs']}"] = group[key]
    return flat


def save(report: dict[str, Any], record: str | None) -> None:
    report.update(headline(report["results"]))
    if record:
        Path(record).write_text(json.dumps(report) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repo_on_path()
    report: dict[str, Any] = {
        "benchmark": "concurrent_runs", "config": args.config, "data": args.data,
        "device": args.device, "device_name": device_name(args.device), "epochs": args.epochs,
        "sets": args.assignments, "cpu_count": os.cpu_count(), "torch": torch_version(),
        "date": date.today().isoformat(), "mps": {"requested": args.mps}, "results": {},
    }  # fmt: skip
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="concurrent_runs_"))
    try:
        measure_all(args, folder.resolve(), report)
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
        save(report, args.record)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
