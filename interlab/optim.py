"""Optimisers and the learning-rate schedule shared by all methods."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_lr(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0
) -> float:
    """Linear warm-up from ~0 to `base_lr`, then half a cosine down to `min_lr` (per step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al.), for large batches.

    Parameters in groups marked `lars=False` (biases and norm layers, by convention) take plain
    SGD steps without weight decay, as in SimCLR/BYOL.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["lars"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = p.norm(), update.norm()
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(
    model: nn.Module, name: str, lr: float | torch.Tensor, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD over every trainable parameter (the MoCo recipe decays all), or LARS.

    SGD is fused on CUDA (one kernel for every parameter's update) and multi-tensor on a CPU:
    the same arithmetic as the per-parameter loop in a few kernels. `lr` may be a 0-dim tensor
    on the parameters' device (a CUDA-graphed step reads it there); fused SGD takes it as is.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        on_cuda = bool(params) and params[0].is_cuda
        kernel = {"fused": True} if on_cuda else {"foreach": True}
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kernel
        )
    if name == "lars":
        adapted = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups = [{"params": adapted}, {"params": plain, "lars": False, "weight_decay": 0.0}]
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, lars")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate; a tensor rate (a graphed step's) is filled in place, one
    small kernel and no host sync."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
