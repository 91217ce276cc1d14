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
from torch import Tensor, nn

from interlab.config import TrainConfig, config_from_dict
from interlab.devices import resolve_device, run_precision
from interlab.methods import build_method
from interlab.methods.base import Method
from interlab.run_folder import CHECKPOINT_NAME

ENCODER_PREFIX = "encoder."  # the query encoder's entries in a checkpoint's method state


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


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or the checkpoint inside the run folder `path` names; a one-line error
    naming the file when there is none (a typo must not start a run from scratch)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"init_from: no checkpoint at {path}")
    return path


def read_encoder_weights(file: Path, device: torch.device) -> dict[str, Tensor]:
    """The query encoder's weights in checkpoint `file`, read with `weights_only=True`: a
    warm start takes tensors from another run's file, never code."""
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as error:  # not a torch file, or one holding more than tensors
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(f"init_from: {file} is not a readable checkpoint ({first_line})") from None
    method_state = state.get("method") if isinstance(state, dict) else None
    weights = {
        name[len(ENCODER_PREFIX) :]: value
        for name, value in (method_state or {}).items()
        if name.startswith(ENCODER_PREFIX)
    }
    if not weights:
        raise ValueError(f"init_from: {file} holds no query encoder ({ENCODER_PREFIX}* weights)")
    return weights


def encoder_mismatch(weights: dict[str, Tensor], encoder: nn.Module) -> str | None:
    """How `weights` fail to fit `encoder` (missing, unexpected or other-shaped entries), or None."""
    expected = encoder.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    extra = sorted(weights.keys() - expected.keys())
    if missing or extra:
        return (
            f"{len(missing)} weights missing (e.g. {(missing or ['-'])[0]}), "
            f"{len(extra)} unexpected (e.g. {(extra or ['-'])[0]})"
        )
    for name, value in expected.items():
        if weights[name].shape != value.shape:
            shapes = f"{tuple(weights[name].shape)} there, {tuple(value.shape)} here"
            return f"{name} is {shapes}"
    return None


def warm_start(method: Method, path: str | Path, device: torch.device) -> Path:
    """Load a trained run's query encoder into `method`'s query encoder and its momentum copies
    (`Method.warm_start_encoders`); queues, banks, optimiser and counters keep their fresh
    state. Returns the checkpoint file read."""
    encoders = method.warm_start_encoders()
    if not encoders:
        raise ValueError(f"init_from: method {method.name!r} has no query encoder to start from")
    file = checkpoint_file(path)
    weights = read_encoder_weights(file, device)
    problem = encoder_mismatch(weights, encoders[0])
    if problem is not None:
        raise ValueError(
            f"init_from: {file} does not fit this run's encoder (another backbone or head?): {problem}"
        )
    for encoder in encoders:
        encoder.load_state_dict(weights)
    return file


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
