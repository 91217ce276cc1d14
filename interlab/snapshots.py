"""Memory-bank snapshots saved during training, for explorers that replay how clusters evolve.

`OUT/snapshots/epoch_NNNN.npz` holds what the method's `snapshot()` returns (InterCLR: bank
features as float16, pseudo-labels as int32, centroids), written every `snapshot_every`
epochs, after the initial clustering (epoch 0) and at the end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

SNAPSHOT_DIR = "snapshots"
NAME = re.compile(r"epoch_(\d{4,})\.npz$")


def save_snapshot(out: str | Path, epoch: int, arrays: dict[str, np.ndarray]) -> Path:
    folder = Path(out) / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch:04d}.npz"
    tmp = folder / f".epoch_{epoch:04d}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: an explorer never reads half a snapshot
    return path


def list_snapshots(out: str | Path) -> dict[int, Path]:
    """Epoch -> snapshot file, sorted; a clear error when the run saved none."""
    folder = Path(out) / SNAPSHOT_DIR
    found = {int(m.group(1)): p for p in folder.glob("epoch_*.npz") if (m := NAME.search(p.name))}
    if not found:
        raise ValueError(
            f"{Path(out)} holds no memory-bank snapshots (expected {folder}/epoch_NNNN.npz); "
            "train a bank method (interclr) with snapshot_every > 0"
        )
    return dict(sorted(found.items()))


def load_snapshot(out: str | Path, epoch: int) -> dict[str, np.ndarray]:
    snapshots = list_snapshots(out)
    if epoch not in snapshots:
        raise ValueError(f"no snapshot for epoch {epoch}; saved epochs: {list(snapshots)}")
    with np.load(snapshots[epoch]) as archive:
        return {key: archive[key] for key in archive.files}
