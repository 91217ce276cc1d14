"""Training one notebook run under torchrun: one process per GPU, DDP as `interlab train` does it.

A sweep point that owns several GPUs (`interlab sweep --executor slurm --gpus-per-run 4`)
still executes its notebook in one process. The notebook hands training to
`torchrun --standalone --nproc_per_node G -m interlab train` on the run's own config, relays
its output into the notebook, then loads what was trained (the run folder's checkpoint and
per-epoch metrics) for the evaluation cells. Resume works as for any run: the workers' trainer
resumes from the run folder's checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import NamedTuple

from interlab.checkpoint import load_trained
from interlab.child_processes import DIE_WITH_PARENT_ENV, die_with_parent
from interlab.config import TrainConfig
from interlab.run_folder import CHECKPOINT_NAME, read_metrics
from interlab.train import TrainResult

LAUNCH_CONFIG = "torchrun_config.yaml"  # in the run folder: what every worker builds


def torchrun_command(config_path: Path, processes: int, progress: bool = True) -> list[str]:
    """torchrun on this machine (`--standalone`: one node, a free rendezvous port)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={processes}", "-m", "interlab", "train", "--config", str(config_path),
    ]  # fmt: skip
    return command if progress else [*command, "--no-progress"]


def worker_environment(processes: int) -> dict[str, str]:
    """Each worker gets its share of this process's cores (torchrun would give it one) and
    dies with torchrun, which dies with us."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cores or 1) // processes))
    return {**os.environ, "OMP_NUM_THREADS": threads, DIE_WITH_PARENT_ENV: "1"}


def train_under_torchrun(config: TrainConfig, processes: int, progress: bool = True) -> TrainResult:
    """Train `config` with `processes` DDP workers and return the trained run, as `train` does."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 2:
        raise ValueError(f"train_under_torchrun needs processes >= 2; got {processes!r}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / LAUNCH_CONFIG
    config_path.write_text(json.dumps(config.to_dict(), indent=1))  # JSON is YAML
    tail = relay(torchrun_command(config_path, processes, progress), worker_environment(processes))
    if tail.returncode != 0:
        raise RuntimeError(
            f"training under torchrun ({processes} processes) failed with exit code "
            f"{tail.returncode}: {tail.error or 'no error line'}; its last output:\n"
            + "\n".join(tail.lines)
        )
    _, method = load_trained(out / CHECKPOINT_NAME, device=config.device)
    return TrainResult(out, method, read_metrics(out))


# a worker's own error: the CLI's message or an exception line (not torchrun's summary)
WORKER_ERROR = re.compile(r"^(interlab train: error: .*|[\w.]*(Error|Exception): .*)$")


class Finished(NamedTuple):
    returncode: int
    lines: list[str]  # the last lines of output
    error: str | None  # the first worker error line


def first_error(line: str, found: str | None) -> str | None:
    if found is None and WORKER_ERROR.match(line) and "ChildFailedError" not in line:
        return line.strip()
    return found


def relay(command: list[str], env: dict[str, str], keep: int = 20) -> Finished:
    """Run `command`, copying its output here as it comes (progress bars included); its exit
    code, last `keep` lines and first worker error, for the error message."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        preexec_fn=die_with_parent(),
    )  # fmt: skip
    last: deque[str] = deque(maxlen=keep)
    error, pending = None, ""
    assert process.stdout is not None
    while chunk := process.stdout.read1(65536):
        text = chunk.decode(errors="replace")
        sys.stdout.write(text)
        sys.stdout.flush()
        pending += text
        *complete, pending = pending.replace("\r", "\n").split("\n")
        for line in complete:
            if line.strip():
                last.append(line)
                error = first_error(line, error)
    if pending.strip():
        last.append(pending)
        error = first_error(pending, error)
    return Finished(process.wait(), list(last), error)
