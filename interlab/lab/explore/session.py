"""The run the explore notebook looks at: a given run folder, or a small one trained here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interlab.data import ImageSet, load_dataset
from interlab.lab.paths import in_project


def explore_run(
    run_dir: str = "",
    dataset: str = "cifar10-mini",
    epochs: int = 6,
    device: str = "auto",
) -> tuple[Path, Any, ImageSet]:
    """(run folder, trained InterCLR method, its training images); trains one if none given.

    An empty `run_dir` means `runs/explore/run`, trained here with the quickstart's CPU/GPU
    settings and a bank snapshot every epoch (minutes on a CPU), unless it already holds a
    finished checkpoint.
    """
    from interlab.lab.quickstart import quickstart_config
    from interlab.train import load_trained, train

    if run_dir:
        path = in_project(run_dir)
        if not (path / "checkpoint.pt").exists():
            raise ValueError(f"{path} has no checkpoint.pt; give a run folder of `interlab train`")
    else:
        config = quickstart_config(
            method="interclr",
            dataset=dataset,
            epochs=epochs,
            device=device,
            out_dir=str(in_project("runs/explore")),
            overrides={"snapshot_every": 1},
        )
        train(config)
        path = Path(config.out)
    config, method = load_trained(path / "checkpoint.pt", device="cpu")
    if config.method != "interclr":
        raise ValueError(f"{path} is a {config.method} run; the explorers need an interclr run")
    return path, method, load_dataset(config.data, "train", root=config.data_root)
