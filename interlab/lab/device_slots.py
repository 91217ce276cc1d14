"""Where a sweep's next run goes: at most K runs at once per device, and a run starts on a GPU
only when the memory it needs is free there.

A CIFAR-scale run uses a small share of a large GPU, so several runs can share one. Free
memory comes from `nvidia-smi`, not torch: the sweep modules stay free of training code, and
a CUDA context in the sweep's own process would take memory from its runs.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# What a run is assumed to need on a GPU when several share it and no --min-free-gb is given:
# one `moco_cifar10` run (ResNet-18, batch 512, two views) took 4.9 GB on an H200 as
# nvidia-smi sees it (benchmarks/concurrent_runs.py, 2026-12-04); 8 leaves room for more.
DEFAULT_RUN_GB = 8.0


@dataclass(frozen=True)
class DeviceMemory:
    """Free and total memory of one GPU, in GB (2**30 bytes)."""

    free_gb: float
    total_gb: float


MemoryProbe = Callable[[str], "DeviceMemory | None"]
"""A device name (`cuda:1`, `cpu`) -> its memory, or None when it is no GPU or cannot tell."""


def nvidia_smi_id(device: str) -> str | None:
    """The id nvidia-smi knows `cuda:N` by: the N-th entry of CUDA_VISIBLE_DEVICES when it is
    set (nvidia-smi ignores that variable), else N; None for a non-CUDA or hidden device."""
    if not device.startswith("cuda"):
        return None
    index_text = device.partition(":")[2] or "0"
    if not index_text.isdigit():
        raise ValueError(f"device {device!r}: expected cuda or cuda:N")
    index = int(index_text)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if index >= len(entries) or entries[index].startswith("-"):
        return None
    return entries[index]


def gpu_memory(device: str) -> DeviceMemory | None:
    """Free and total memory of a CUDA device from nvidia-smi; None for the CPU, a device
    nvidia-smi cannot report (no driver, a MIG slice) or a failed query."""
    ident = nvidia_smi_id(device)
    if ident is None:
        return None
    query = ["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run([*query, "-i", ident], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines() if result.returncode == 0 else []
    try:
        free_mib, total_mib = (float(value) for value in lines[0].split(","))
    except (IndexError, ValueError):
        return None
    return DeviceMemory(free_mib / 1024, total_mib / 1024)


def resolve_run_device(name: str, probe: MemoryProbe = gpu_memory) -> str:
    """The device a run's `device` parameter lands on, as the trainer resolves it: `auto`
    is cuda:0 when a GPU answers, else cpu; `cuda` is cuda:0."""
    if name == "auto":
        return "cuda:0" if probe("cuda:0") is not None else "cpu"
    if name == "cuda":
        return "cuda:0"
    return name


class DeviceSlots:
    """At most `per_device` runs at once on each device; on a GPU, a run starts only when
    `need_gb` is free there (None: no memory check).

    The free memory a new run may count on is the lower of what nvidia-smi reports now and
    what the device had before our first run there minus `need_gb` for each of our runs on
    it: a run that has just started has not allocated its memory yet.
    """

    def __init__(
        self,
        per_device: int,
        need_gb: float | None,
        probe: MemoryProbe = gpu_memory,
        poll_s: float = 5.0,
        say: Callable[[str], None] = print,
    ) -> None:
        if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
            raise ValueError(f"runs per device must be an int >= 1; got {per_device!r}")
        if need_gb is not None and not need_gb > 0:
            raise ValueError(f"the memory a run needs must be > 0 GB; got {need_gb!r}")
        self.per_device, self.need_gb, self.probe = per_device, need_gb, probe
        self.poll_s, self.say = poll_s, say
        self.running: Counter[str] = Counter()
        self.free_alone: dict[str, float] = {}  # free memory with none of our runs there
        self.condition = threading.Condition()
        self.stopped = False
        self.waiting = False  # a waiting line has been said since the last start

    def check_fits(self, devices: list[str]) -> None:
        """Refuse at once a GPU too small for even one run (waiting would never end)."""
        if self.need_gb is None:
            return
        for device in devices:
            memory = self.probe(device)
            if memory is not None and memory.total_gb < self.need_gb:
                raise ValueError(
                    f"{device} has {memory.total_gb:.1f} GB in all; a run needs "
                    f"{self.need_gb:.1f} GB free (--min-free-gb): lower it or use another device"
                )

    def acquire(self, candidates: list[str]) -> tuple[str, int] | None:
        """The least busy of `candidates` with room for one more run, and how many of our
        runs then share it (this one included); waits for room, None once stopped."""
        with self.condition:
            while not self.stopped:
                shortages = []
                for device in sorted(candidates, key=lambda d: self.running[d]):
                    if self.running[device] >= self.per_device:
                        continue
                    shortage = self.shortage(device)
                    if shortage is None:
                        self.running[device] += 1
                        self.waiting = False
                        return device, self.running[device]
                    shortages.append(shortage)
                if shortages and not self.waiting:
                    self.say(f"waiting for GPU memory: {'; '.join(shortages)}")
                    self.waiting = True
                self.condition.wait(timeout=self.poll_s)
            return None

    def shortage(self, device: str) -> str | None:
        """None when a new run fits on `device`, else a line saying what is missing."""
        if self.need_gb is None:
            return None
        memory = self.probe(device)
        if memory is None:
            return None
        if self.running[device] == 0:
            self.free_alone[device] = memory.free_gb
        reserved = self.free_alone.get(device, memory.free_gb) - self.need_gb * self.running[device]
        free = min(memory.free_gb, reserved)
        if free >= self.need_gb:
            return None
        return (
            f"{device} has {free:.1f} of {memory.total_gb:.1f} GB free for a new run "
            f"({self.running[device]} of ours there), a run needs {self.need_gb:.1f} GB "
            "(--min-free-gb)"
        )

    def release(self, device: str) -> None:
        with self.condition:
            self.running[device] -= 1
            self.condition.notify_all()

    def stop(self) -> None:
        """Waiting runs give up (Ctrl-C): `acquire` returns None."""
        with self.condition:
            self.stopped = True
            self.condition.notify_all()
