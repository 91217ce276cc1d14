"""Thin helpers over torch.distributed so single-process code paths stay unchanged."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> None:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU)."""
    if is_distributed() or not launched_by_torchrun():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)


def shut_down() -> None:
    """Leave the process group before the interpreter exits: a gloo group still alive at
    exit can abort the process (`terminate called without an active exception`) after its
    work is done, and torchrun then reports the run failed."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


@torch.no_grad()
def gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate a tensor from all ranks along dim 0 (no gradient), rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_cat_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate from all ranks keeping the gradient path to every rank's own slice."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Make every rank's buffers (BN statistics, queues, banks) equal to rank 0's."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
