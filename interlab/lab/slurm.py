"""Sweeps on a SLURM cluster through submitit: one array job per sweep, one task per run
(or per K runs that share one GPU, `runs_per_gpu`).

Each task runs exactly what a local sweep runs for its runs (`RunExecutor.execute`: the
run-folder lock, papermill, `status.json`), so run folders look the same whichever executor
made them. A task that SLURM stops for its time limit or a preemption is requeued by
submitit's checkpointing hook and its notebooks' trainers resume from their checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from interlab.lab.device_slots import resolve_run_device
from interlab.lab.grids import Sweep, SweepRun
from interlab.lab.sweep import (
    SWEEP_LOCK,
    RunExecutor,
    Status,
    default_device,
    prepare_sweep_folder,
    read_status,
    write_status,
)
from interlab.run_lock import lock_holder

SUBMITIT_FOLDER = ".slurm"  # submitit's pickles and logs, inside the sweep folder
JOB_RECORD = "slurm.json"  # in each run folder: the SLURM job id of its latest submission
# squeue states of a job that has yet to run or is running (not COMPLETING, CANCELLED, ...)
WILL_RUN = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "CONFIGURING",
    "SUSPENDED",
    "RESIZING",
}

UNSETTLED = WILL_RUN | {"COMPLETING", "STAGE_OUT", "SIGNALING"}  # ending, or not ended yet


@dataclass
class ClusterSettings:
    """Resources of one run; the grid's `executor:` section or `interlab sweep` flags."""

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    max_parallel: int | None = None
    runs_per_gpu: int = 1  # runs of one array task, side by side on its one GPU
    slurm_args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("gpus_per_run", "cpus_per_run", "time_min", "max_parallel", "runs_per_gpu"):
            value = getattr(self, name)
            low = 0 if name == "gpus_per_run" else 1
            if value is None and name == "max_parallel":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"executor setting {name} must be an int >= {low}; got {value!r}")
        if not isinstance(self.slurm_args, dict):
            raise ValueError(f"slurm_args must be a mapping; got {self.slurm_args!r}")
        if self.runs_per_gpu > 1 and self.gpus_per_run != 1:
            raise ValueError(
                f"runs_per_gpu={self.runs_per_gpu} puts several runs on one GPU: it needs "
                f"gpus_per_run 1; got {self.gpus_per_run}"
            )

    @property
    def processes(self) -> int:
        """Training processes per run: one per GPU (torchrun inside the job when > 1)."""
        return max(1, self.gpus_per_run)

    def run_parameters(self, sweep: Sweep) -> dict[str, Any]:
        """What the executor sets in every run: `processes` when a run has several GPUs. The
        notebook must declare it, and no run may ask for another count."""
        if self.processes == 1:
            return {}
        if "processes" not in sweep.declared:
            raise ValueError(
                f"gpus_per_run={self.gpus_per_run}: {sweep.notebook.name} declares no "
                "'processes' parameter to train under torchrun with (notebooks/train.ipynb does)"
            )
        for run in sweep.runs:
            asked = run.parameters.get("processes", self.processes)
            if asked != self.processes:
                raise ValueError(
                    f"run {run.name} sets processes={asked!r} but gpus_per_run is "
                    f"{self.gpus_per_run}; leave 'processes' to the executor"
                )
        return {"processes": self.processes}


def slurm_parameters(settings: ClusterSettings) -> dict[str, Any]:
    """submitit's parameters of one array task: a run's resources, times the runs that share
    the task's GPU (CPUs and memory; the GPU itself once)."""
    shared = settings.runs_per_gpu
    parameters: dict[str, Any] = {
        "timeout_min": settings.time_min, "cpus_per_task": settings.cpus_per_run * shared,
        "slurm_additional_parameters": dict(settings.slurm_args),
    }  # fmt: skip
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if settings.gpus_per_run:
        parameters["gpus_per_node"] = settings.gpus_per_run
    if settings.mem_gb:
        parameters["mem_gb"] = settings.mem_gb * shared
    if settings.max_parallel:
        parameters["slurm_array_parallelism"] = settings.max_parallel
    return parameters


def task_groups(runs: list[SweepRun], runs_per_gpu: int) -> list[list[SweepRun]]:
    """The runs of each array task, in the sweep's order: `runs_per_gpu` a task, the last
    task takes what is left."""
    return [runs[i : i + runs_per_gpu] for i in range(0, len(runs), runs_per_gpu)]


def cluster_settings(section: dict[str, Any] | None, **flags: Any) -> ClusterSettings:
    """The grid's `executor:` keys (besides `name`), then the command line's flags over them."""
    values = {k: v for k, v in (section or {}).items() if k != "name"}
    values.update({k: v for k, v in flags.items() if v is not None and v != {}})
    known = {f.name for f in fields(ClusterSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown executor setting(s) {unknown}; valid: {', '.join(sorted(known))}"
        )
    return ClusterSettings(**values)


class NotebookJob:
    """The callable a SLURM task runs: its sweep runs, side by side (one thread each), each
    exactly as the local executor runs it.

    submitit calls `checkpoint` when SLURM signals a time-out or preemption: the same task
    is requeued, its finished runs are skipped and the others' trainers resume from their
    checkpoints."""

    def __init__(
        self, notebook: str, runs: list[tuple[SweepRun, str]], threads: int,
        extra_parameters: dict[str, Any] | None = None, default_device: str = "auto",
    ) -> None:  # fmt: skip
        if not runs:
            raise ValueError("a SLURM task needs at least one run")
        self.notebook, self.runs, self.threads = notebook, list(runs), threads
        self.extra_parameters = dict(extra_parameters or {})
        self.default_device = default_device  # the notebook's, for runs that set none

    def __call__(self) -> list[Status | None]:
        executor = RunExecutor(Path(self.notebook), self.threads, self.extra_parameters)
        todo = [
            (run, Path(run_dir)) for run, run_dir in self.runs
            if (read_status(Path(run_dir)) or {}).get("state") != "done"
        ]  # fmt: skip
        devices = [
            resolve_run_device(str(run.parameters.get("device") or self.default_device))
            for run, _ in todo
        ]  # on the node: cuda:0 is the task's GPU

        def execute(index: int) -> Status | None:
            run, run_dir = todo[index]
            placement = task_placement(devices[index], devices.count(devices[index]))
            return executor.execute(run, run_dir, None, placement)

        # result() raises what a run's thread raised, so the task fails with its traceback
        with ThreadPoolExecutor(max(1, len(todo))) as pool:
            futures = [pool.submit(execute, index) for index in range(len(todo))]
            return [future.result() for future in futures]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def task_placement(device: str, sharing: int) -> dict[str, Any]:
    """What a task's run records: its device, how many runs share it, the node and the GPU
    SLURM gave the task."""
    placement: dict[str, Any] = {"device": device, "runs_on_device": sharing}
    placement["host"] = socket.gethostname()
    gpus = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        placement["gpus"] = gpus  # the node's ids of the task's GPUs
    return placement


def slurm_executor(out: Path, settings: ClusterSettings) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=out / SUBMITIT_FOLDER)
    if executor.cluster != "slurm":
        raise ValueError("--executor slurm: no SLURM here (sbatch is not on PATH)")
    executor.update_parameters(**slurm_parameters(settings))
    return executor


def array_jobs(
    sweep: Sweep, runs: list[SweepRun], out: Path, settings: ClusterSettings
) -> list[NotebookJob]:
    """One job per array task: `runs_per_gpu` runs each, every run with its CPU threads."""
    extra_parameters = settings.run_parameters(sweep)
    default = default_device(sweep)
    jobs = []
    for group in task_groups(runs, settings.runs_per_gpu):
        runs_here = [(run, str(out / run.name)) for run in group]
        jobs.append(
            NotebookJob(
                str(sweep.notebook), runs_here, settings.cpus_per_run, extra_parameters, default
            )
        )
    return jobs


def submit_sweep(
    sweep: Sweep, out: str | Path, settings: ClusterSettings, poll_s: float = 5.0,
    wait: bool = True, timeout_s: float | None = None,
) -> list[Status]:  # fmt: skip
    """Submit the sweep's unfinished runs as one array job (`runs_per_gpu` runs a task);
    with `wait`, return every run's status once the jobs end (a job SLURM killed is recorded
    failed with SLURM's state)."""
    settings.run_parameters(sweep)  # checked before anything is submitted
    out = prepare_sweep_folder(sweep, out)
    executor = slurm_executor(out, settings)
    busy = record_slurm_states(out, sweep.runs)  # what SLURM did to the last submission's jobs
    pending = [
        r for r in sweep.runs
        if (read_status(out / r.name) or {}).get("state") != "done" and out / r.name not in busy
    ]  # fmt: skip
    if not pending:  # everything finished or still in the queue: nothing to submit
        if wait:
            wait_for([], poll_s, timeout_s, [out / r.name for r in sweep.runs])
        return [
            read_status(out / r.name) or {"run": r.name, "state": "pending"} for r in sweep.runs
        ]
    tasks = array_jobs(sweep, pending, out, settings)
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    for task, job in zip(tasks, jobs, strict=True):
        record = {"job_id": job.job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _, run_dir in task.runs:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / JOB_RECORD).write_text(json.dumps(record))
    if wait:
        wait_for(jobs, poll_s, timeout_s, [out / r.name for r in sweep.runs])
        record_slurm_states(out, sweep.runs)
    return [read_status(out / r.name) or {"run": r.name, "state": "pending"} for r in sweep.runs]


def active_runs(run_dirs: list[Path]) -> set[Path]:
    """The runs some job is executing (their sweep lock is held) or that still wait in the
    queue (their recorded job PENDING / RUNNING / REQUEUED / ...): one squeue call for all."""
    busy = {d for d in run_dirs if lock_holder(d, SWEEP_LOCK) is not None}
    jobs: dict[str, list[Path]] = {}  # a task's job id -> its runs (several share a GPU)
    for run_dir in run_dirs:
        record = run_dir / JOB_RECORD
        if run_dir not in busy and record.exists():
            jobs.setdefault(json.loads(record.read_text())["job_id"], []).append(run_dir)
    if not jobs:
        return busy
    command = ["squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i %T"]  # -r: a line per task
    queue = subprocess.run(command, capture_output=True, text=True)
    for line in queue.stdout.splitlines() if queue.returncode == 0 else []:
        job_id, state = line.split()[:2]
        if state in WILL_RUN and job_id in jobs:
            busy.update(jobs[job_id])
    return busy


def wait_for(jobs: list[Any], poll_s: float, timeout_s: float | None, run_dirs: list[Path]) -> None:
    """Until our jobs are done and no run of the sweep is active elsewhere."""
    start = time.monotonic()
    while not all(job.done() for job in jobs) or active_runs(run_dirs):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"SLURM jobs still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def slurm_job_state(job_id: str) -> str | None:
    """SLURM's state of a job (COMPLETED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, PREEMPTED, ...):
    from `scontrol`, which keeps an ended job for a few minutes without accounting, else
    from `sacct`; None when neither knows it."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True
    )
    found = re.search(r"\bJobState=(\S+)", shown.stdout) if shown.returncode == 0 else None
    if found:
        return found.group(1)
    accounted = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
    )
    lines = accounted.stdout.split() if accounted.returncode == 0 else []
    return lines[0].split()[0] if lines else None  # "CANCELLED by 0" -> CANCELLED


def final_job_state(job_id: str, wait_s: float = 30.0) -> str | None:
    """The job's state once SLURM has settled it (not COMPLETING, which ends in seconds)."""
    deadline = time.monotonic() + wait_s
    state = slurm_job_state(job_id)
    while state in UNSETTLED and time.monotonic() < deadline:
        time.sleep(0.5)
        state = slurm_job_state(job_id)
    return None if state in UNSETTLED else state


def record_slurm_states(out: Path, runs: list[SweepRun]) -> set[Path]:
    """Each ended job that did not finish its run: the run is recorded failed with SLURM's
    state (a time-out, out of memory, cancelled, ...) beside the error the run itself wrote.
    Returns the runs still active (`active_runs`), which it had to ask for anyway."""
    run_dirs = [out / run.name for run in runs]
    busy = active_runs(run_dirs)
    states: dict[str, str | None] = {}  # runs that shared a task share its state
    for run, run_dir in zip(runs, run_dirs, strict=True):
        record = run_dir / JOB_RECORD
        status = read_status(run_dir) or {}
        if run_dir in busy or not record.exists() or status.get("state") == "done":
            continue
        job_id = json.loads(record.read_text())["job_id"]
        if status.get("slurm_job") == job_id:
            continue  # already recorded
        if job_id not in states:
            states[job_id] = final_job_state(job_id)
        state = states[job_id]
        if state in (None, "COMPLETED") and status:
            continue  # the run recorded its own failure and SLURM adds nothing
        state = state or "UNKNOWN"
        error = status.get("error") or "the job ended without a status"
        write_status(run_dir, {
            "run": run.name, "setting": run.setting, "seed": run.seed, **status,
            "state": "failed", "slurm_state": state, "slurm_job": job_id,
            "error": error if error.startswith("SLURM ") else f"SLURM {state}: {error}",
        })  # fmt: skip
    return busy
