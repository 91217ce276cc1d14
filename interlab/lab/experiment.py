"""One training run as a notebook executes it: train, evaluate, write `metrics.json`.

`notebooks/train.ipynb` (the sweep template) calls `run_experiment`; sweeps read the
`metrics.json` it writes beside the executed notebook. Parameters are the notebook's:
method, dataset, epochs, batch size, device, seed, output folder and a dict of overrides
(any config key, as `--set` takes them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from interlab.config import TrainConfig, build_config
from interlab.data import DATASET_NAMES, DATASET_PREFIXES, load_dataset
from interlab.devices import device_name, resolve_device, run_precision
from interlab.evaluate import evaluate_method
from interlab.lab.provenance import code_version, git_commit
from interlab.methods import METHOD_NAMES
from interlab.train import TrainResult, train

SUMMARY_NAME = "metrics.json"


def check_dataset_name(name: str) -> None:
    """A clear early error for a dataset that `load_dataset` would not know."""
    if name in DATASET_NAMES or name.startswith(DATASET_PREFIXES):
        return
    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}, "
        f"or a path after one of the prefixes {', '.join(DATASET_PREFIXES)}"
    )


def experiment_config(
    method: str,
    dataset: str,
    epochs: int,
    batch_size: int,
    device: str,
    seed: int,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The checked config of one run (unknown method, dataset or key: ValueError)."""
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHOD_NAMES)}")
    check_dataset_name(dataset)
    keys = {
        "method": method,
        "data": dataset,
        "epochs": epochs,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "out": str(Path(out_dir) / "run"),
    }
    keys.update(overrides or {})
    return build_config(keys)


def check_training_run(parameters: dict[str, Any]) -> None:
    """A sweep's `check_run` for `train.ipynb`: build each run's config the way the run will.

    So a bad method, dataset or override key fails before the first run starts, not hours
    into the sweep. Parameters of another notebook (no `method`) pass unchecked.
    """
    if "method" not in parameters:  # not the training template's contract
        return
    experiment_config(
        parameters.get("method", "moco"),
        parameters.get("dataset", "cifar10-mini"),
        parameters.get("epochs", 1),
        parameters.get("batch_size", 256),
        "cpu",  # the device is checked when the run starts (a GPU may be named here)
        parameters.get("seed", 0),
        "unused",
        parameters.get("overrides"),
    )
    check_processes(parameters.get("processes", 1))


def run_experiment(
    config: TrainConfig, out_dir: str | Path, linear: bool = True, processes: int = 1
) -> dict[str, Any]:
    """Train (resuming when a checkpoint exists), evaluate kNN (+ linear probe), write the summary.

    `processes` > 1 trains under torchrun, one DDP worker per GPU (a sweep point that owns
    a node); evaluation then runs here on the trained checkpoint."""
    check_processes(processes)
    code = {"version": code_version(), "commit": git_commit()}  # what this run starts on
    start = time.perf_counter()
    if processes > 1:
        from interlab.lab.torchrun_training import train_under_torchrun

        result = train_under_torchrun(config, processes)
    else:
        result = train(config)
    scores = final_knn(result)
    if linear:
        scores.update(
            evaluate_method(
                result.method,
                load_dataset(config.data, "train", root=config.data_root),
                load_dataset(config.data, "test", root=config.data_root),
                knn=False,
                linear=True,
                device=resolve_device(config.device),
            )
        )
    return write_summary(out_dir, config, result, scores, time.perf_counter() - start, code)


def check_processes(processes: Any) -> None:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an int >= 1 (training processes); got {processes!r}")


def final_knn(result: TrainResult) -> dict[str, float]:
    """The kNN scores of the run's last epoch (every protocol it logged)."""
    return {k: v for k, v in result.final.items() if k.startswith("knn_top1")}


def write_summary(
    out_dir: str | Path,
    config: TrainConfig,
    result: TrainResult,
    scores: dict[str, float],
    wall_time_s: float,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`metrics.json` beside the executed notebook (what sweeps and reports read): the
    evaluation's scores, the final and per-epoch records, config and device. Returns it."""
    summary = {
        **scores,
        "final": result.final,
        "per_epoch": result.metrics,
        "method": config.method,
        "dataset": config.data,
        "epochs": config.epochs,
        "device": device_name(config.device),
        "wall_time_s": wall_time_s,
        "config": config.to_dict(),
        "code": code or {"version": code_version(), "commit": git_commit()},
        "precision": run_precision(config, resolve_device(config.device)).describe(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(out_dir) / SUMMARY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=list))
    return summary
