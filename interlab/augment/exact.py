"""Full float32 arithmetic for the augmentation kernels, whatever the caller's settings.

The kernels' GEMMs *are* the resampling and colour arithmetic: TF32 (which the trainer
enables for the network) would round every pixel to 10 mantissa bits and autocast would even
return bf16. They are memory-bound, so full precision costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from interlab.devices import matmul_precision


@contextlib.contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """float32 GEMMs without TF32/bf16 shortcuts and outside autocast; restores the setting
    through the precision API the trainer uses (interlab.devices.set_tf32)."""
    with matmul_precision("highest"):
        if device.type in ("cpu", "cuda"):
            with torch.autocast(device.type, enabled=False):
                yield
        else:
            yield


def exact(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `fn` under full_float32 on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Tensor:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        with full_float32(device):
            return fn(*args, **kwargs)

    return wrapper
