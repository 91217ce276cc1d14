"""A training step captured once as a CUDA graph and replayed: no per-step host work.

A CIFAR-sized step issues about a thousand small kernels; launched one by one from Python
the host, not the GPU, sets the pace. Captured once, a step is one graph launch. What a graph
needs, the trainer provides: static shapes (full batches only), no host syncs in the step,
the learning rate as a device tensor the step reads (fused SGD), and the augmentation's
generator registered with the graph, so every replay draws fresh random numbers from the
same stream an eager step would use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

StepBody = Callable[[Tensor], dict[str, Tensor]]
WARMUP_STEPS = 3  # eager steps before capture (cuDNN autotune, optimiser state, lazy caches)


class GraphedStep:
    """Calls `body(indices)` eagerly for the first `warmup` steps, then captures it and
    replays the graph. `body` must do all its work on the device and return the same
    tensors' values each call (the graph's outputs are static tensors, overwritten by each
    replay: read them before the next step)."""

    def __init__(
        self,
        body: StepBody,
        batch_size: int,
        device: torch.device,
        generators: list[torch.Generator],
        warmup: int = WARMUP_STEPS,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, got {device}")
        self.body = body
        self.generators = generators
        self.warmup = warmup
        self.calls = 0
        self.indices = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: dict[str, Tensor] = {}
        self.side_stream = torch.cuda.Stream(device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, indices: Tensor) -> dict[str, Tensor]:
        if indices.shape != self.indices.shape:
            raise ValueError(
                f"a graphed step takes batches of {len(self.indices)} indices, got "
                f"{tuple(indices.shape)} (full batches only)"
            )
        self.indices.copy_(indices, non_blocking=True)
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            return self._eager()
        if self.graph is None:
            self._capture()
        assert self.graph is not None
        self.graph.replay()
        return self.outputs

    def _eager(self) -> dict[str, Tensor]:
        """A warm-up step, on a side stream as capture requires of the work before it."""
        current = torch.cuda.current_stream()
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            outputs = self.body(self.indices)
        current.wait_stream(self.side_stream)
        return outputs

    def _capture(self) -> None:
        """Record one step (capture runs nothing: the caller replays it right after)."""
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            self.outputs = self.body(self.indices)
        self.graph = graph
