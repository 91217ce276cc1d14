"""The quickstart: train a method on the embedded data and compare with the untrained network.

`notebooks/00_quickstart.ipynb` calls these functions; `interlab quickstart` (and `make demo`)
executes that notebook headless with papermill.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from interlab.config import TrainConfig, build_config
from interlab.devices import resolve_device
from interlab.evaluate import evaluate_method
from interlab.lab.experiment import SUMMARY_NAME, final_knn, write_summary
from interlab.lab.paths import notebook_path, project_root
from interlab.train import Trainer, train

# CPU: a small ConvNet that visibly learns in minutes on 2 cores (measured on the mini data:
# kNN 0.30 untrained -> 0.42 after 20 epochs, ~100 s of training); GPU: the CIFAR ResNet-18.
CPU_SETTINGS = {
    "backbone": "convnet",
    "cifar_stem": False,
    "batch_size": 256,
    "epochs": 20,
    "lr": 0.06,
    "eval_every": 5,
}
GPU_SETTINGS = {
    "backbone": "resnet18",
    "cifar_stem": True,
    "batch_size": 512,
    "epochs": 100,
    "lr": 0.06,
    "eval_every": 10,
}
# MoCo on 5,000 images: a queue well under an epoch (stale keys otherwise); on the CPU a BN in
# the MLP head and t=0.2 learn fastest in few epochs, on the GPU the CIFAR-10 recipe's loss.
MOCO_CPU = {"queue_size": 1024, "temperature": 0.2, "proj_bn": True}
MOCO_GPU = {"queue_size": 2048, "temperature": 0.1, "symmetric": True, "split_bn": 8}
# SCFS (06 notebook's small run): learns something in minutes on 2 CPU cores with narrow heads
# and 4 local crops; on the GPU its own defaults with the CIFAR ResNet-18.
SCFS_CPU = {
    "lr": 0.05,
    "weight_decay": 1e-4,
    "eval_every": 0,
    "out_dim": 1024,
    "head_hidden": 512,
    "shallow_hidden": 256,
    "n_local": 4,
}
SCFS_GPU = {"batch_size": 256, "lr": 0.1}


def quickstart_config(
    method: str = "moco",
    dataset: str = "cifar10-mini",
    epochs: int | None = None,
    device: str = "auto",
    out_dir: str = "runs/quickstart",
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """A config sized for the device: minutes on a 2-core CPU, the CIFAR recipe on a GPU."""
    on_gpu = resolve_device(device).type == "cuda"
    keys = {
        "method": method,
        "data": dataset,
        "device": device,
        "out": str(Path(out_dir) / "run"),
        "checkpoint_every": 5,
        **(GPU_SETTINGS if on_gpu else CPU_SETTINGS),
    }
    if method in ("moco", "interclr", "cyclecontrast"):  # their intra branch is MoCo v2
        keys.update(MOCO_GPU if on_gpu else MOCO_CPU)
    if method == "cyclecontrast":  # both queues under the mini set's 5,000 items per epoch
        keys.update({"symmetric": False, "cycle_queue_size": 2048, "support_size": 512})
    if method == "scfs":
        keys.update(SCFS_GPU if on_gpu else SCFS_CPU)
    if epochs is not None:
        keys["epochs"] = epochs
    keys.update(overrides or {})
    return build_config(keys)


def untrained_knn(config: TrainConfig) -> float:
    """kNN top-1 of the same network, same seed, before any training: the baseline to beat.

    The trainer's own set-up and evaluation, stopped before the first step.
    """
    trainer = Trainer(config, progress=False)
    scores = evaluate_method(
        trainer.method,
        trainer.memory_set,
        trainer.test_set,
        k=config.knn_k,
        temperature=config.knn_temperature,
        device=trainer.device,
        embedding=False,
    )
    return scores["knn_top1"]


def run_quickstart(config: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Untrained kNN, training from scratch, trained kNN; writes and returns the summary."""
    start = time.perf_counter()
    untrained = untrained_knn(config)
    result = train(config, resume=False)
    scores = {**final_knn(result), "knn_top1_untrained": untrained}
    summary = write_summary(out_dir, config, result, scores, time.perf_counter() - start)
    return {"summary_path": Path(out_dir) / SUMMARY_NAME, "result": result, **summary}


def execute_quickstart_notebook(
    method: str = "moco",
    dataset: str = "cifar10-mini",
    epochs: int | None = None,
    device: str = "auto",
    out_dir: str | Path = "runs/quickstart",
    progress: bool = False,
) -> dict[str, Path]:
    """Run the quickstart notebook headless with papermill; returns the output paths.

    `progress` shows papermill's per-cell bar (the training cell is the long one).
    """
    import papermill

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / "00_quickstart.ipynb"
    params = {
        "method": method,
        "dataset": dataset,
        "epochs": epochs,
        "device": device,
        "out_dir": str(out),
    }
    papermill.execute_notebook(
        str(notebook_path("00_quickstart.ipynb")),
        str(executed),
        parameters=params,
        cwd=str(project_root()),
        progress_bar=progress,
    )
    return {
        "notebook": executed,
        "metrics": out / "metrics.json",
        "run": out / "run",
        "curves": out / "curves.png",
    }
