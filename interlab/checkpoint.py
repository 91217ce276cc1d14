"""Checkpoints: what one holds, writing it atomically, resuming every random stream from it,
and rebuilding a trained method from it for evaluation or exploration.

A checkpoint holds the config, the method's weights and buffers (queues, banks), the
optimiser and every RNG: torch's (CPU and CUDA), the data order (shared by ranks) and each
rank's augmentation stream, so a run killed at any point resumes to the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interlab.config import TrainConfig, config_from_dict
from interlab.devices import resolve_device, run_precision
from interlab.methods import build_method
from interlab.methods.base import Method


def rng_state(
    order: torch.Generator, augment: torch.Generator, augment_per_rank: Tensor | None
) -> dict[str, Any]:
    """Every random stream of a run; `augment_per_rank` is each rank's augmentation state."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "order": order.get_state(),
        "augment": augment.get_state(),
        "augment_per_rank": augment_per_rank,
    }


def restore_rng(
    rng: dict[str, Any],
    order: torch.Generator,
    augment: torch.Generator,
    rank: int,
    world: int,
    reseed: int,
) -> None:
    """Continue every stream where the checkpoint left it.

    Each rank takes its own augmentation state back. Checkpoints without every rank's state
    (older ones, or another number of ranks) give rank 0's stream back and re-seed the
    others with `reseed` (distinct per rank and epoch) so they stay distinct.
    """
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    order.set_state(rng["order"].cpu())
    per_rank = rng.get("augment_per_rank")
    if per_rank is not None and len(per_rank) == world:
        # A copy of its own: set_state on a row view of the stacked states crashes.
        augment.set_state(per_rank[rank].cpu().clone())
        return
    augment.set_state(rng["augment"].cpu())
    if rank:
        augment.manual_seed(reseed)


def save_atomically(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint's contents on `device`; a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or "config" not in state or "method" not in state:
        raise ValueError(f"{path} is not an interlab checkpoint (no config/method entries)")
    return state


def load_trained(checkpoint: str | Path, device: str = "auto") -> tuple[TrainConfig, Method]:
    """Rebuild a method from a checkpoint (config included) for evaluation or exploration."""
    target = resolve_device(device)
    state = read_checkpoint(checkpoint, target)
    config = config_from_dict(state["config"])
    augment = config.augment_config(state["image_size"])
    method = build_method(config, augment, state.get("num_samples", 0)).to(target)
    method.load_state_dict(state["method"])
    method.precision = run_precision(config, target)
    method = method.precision.prepare(method)
    method.eval()
    return config, method
