"""Sweeps on a SLURM cluster through submitit: one array job per sweep, one task per run.

Each task runs exactly what a local sweep runs for that run (`RunExecutor.execute`: the
run-folder lock, papermill, `status.json`), so run folders look the same whichever executor
made them. A task that SLURM stops for its time limit or a preemption is requeued by
submitit's checkpointing hook and its notebook's trainer resumes from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from interlab.lab.grids import Sweep, SweepRun
from interlab.lab.sweep import (
    SWEEP_LOCK,
    RunExecutor,
    Status,
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


@dataclass
class ClusterSettings:
    """Resources of one run; the grid's `executor:` section or `interlab sweep` flags."""

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    max_parallel: int | None = None
    slurm_args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("gpus_per_run", "cpus_per_run", "time_min", "max_parallel"):
            value = getattr(self, name)
            low = 0 if name == "gpus_per_run" else 1
            if value is None and name == "max_parallel":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"executor setting {name} must be an int >= {low}; got {value!r}")
        if self.gpus_per_run > 1:
            raise ValueError(
                f"gpus_per_run={self.gpus_per_run}: runs with several GPUs (torchrun inside the "
                "job) are not built yet; use 0 or 1"
            )
        if not isinstance(self.slurm_args, dict):
            raise ValueError(f"slurm_args must be a mapping; got {self.slurm_args!r}")


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
    """The callable a SLURM task runs: one sweep run, exactly as the local executor runs it.

    submitit calls `checkpoint` when SLURM signals a time-out or preemption: the same run is
    requeued, and its trainer resumes from the run's checkpoint."""

    def __init__(self, notebook: str, run: SweepRun, run_dir: str, threads: int) -> None:
        self.notebook, self.run, self.run_dir, self.threads = notebook, run, run_dir, threads

    def __call__(self) -> Status | None:
        return RunExecutor(Path(self.notebook), self.threads).execute(
            self.run, Path(self.run_dir), None
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_executor(out: Path, settings: ClusterSettings) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=out / SUBMITIT_FOLDER)
    if executor.cluster != "slurm":
        raise ValueError("--executor slurm: no SLURM here (sbatch is not on PATH)")
    parameters: dict[str, Any] = {
        "timeout_min": settings.time_min, "cpus_per_task": settings.cpus_per_run,
        "slurm_additional_parameters": dict(settings.slurm_args),
    }  # fmt: skip
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if settings.gpus_per_run:
        parameters["gpus_per_node"] = settings.gpus_per_run
    if settings.mem_gb:
        parameters["mem_gb"] = settings.mem_gb
    if settings.max_parallel:
        parameters["slurm_array_parallelism"] = settings.max_parallel
    executor.update_parameters(**parameters)
    return executor


def submit_sweep(
    sweep: Sweep, out: str | Path, settings: ClusterSettings, poll_s: float = 5.0,
    wait: bool = True, timeout_s: float | None = None,
) -> list[Status]:  # fmt: skip
    """Submit the sweep's unfinished runs as one array job; with `wait`, return every run's
    status once the jobs end (a job SLURM killed is recorded failed with SLURM's state)."""
    out = prepare_sweep_folder(sweep, out)
    executor = slurm_executor(out, settings)
    busy = active_runs([out / r.name for r in sweep.runs])
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
    with executor.batch():
        jobs = [
            executor.submit(
                NotebookJob(str(sweep.notebook), r, str(out / r.name), settings.cpus_per_run)
            )
            for r in pending
        ]
    for run, job in zip(pending, jobs, strict=True):
        (out / run.name).mkdir(parents=True, exist_ok=True)
        record = {"job_id": job.job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / run.name / JOB_RECORD).write_text(json.dumps(record))
    if wait:
        wait_for(jobs, poll_s, timeout_s, [out / r.name for r in sweep.runs])
        for run, job in zip(pending, jobs, strict=True):
            record_outcome(out / run.name, run, job)
    return [read_status(out / r.name) or {"run": r.name, "state": "pending"} for r in sweep.runs]


def active_runs(run_dirs: list[Path]) -> set[Path]:
    """The runs some job is executing (their sweep lock is held) or that still wait in the
    queue (their recorded job PENDING / RUNNING / REQUEUED / ...): one squeue call for all."""
    busy = {d for d in run_dirs if lock_holder(d, SWEEP_LOCK) is not None}
    jobs = {}
    for run_dir in run_dirs:
        record = run_dir / JOB_RECORD
        if run_dir not in busy and record.exists():
            jobs[json.loads(record.read_text())["job_id"]] = run_dir
    if not jobs:
        return busy
    command = ["squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i %T"]  # -r: a line per task
    queue = subprocess.run(command, capture_output=True, text=True)
    for line in queue.stdout.splitlines() if queue.returncode == 0 else []:
        job_id, state = line.split()[:2]
        if state in WILL_RUN and job_id in jobs:
            busy.add(jobs[job_id])
    return busy


def wait_for(jobs: list[Any], poll_s: float, timeout_s: float | None, run_dirs: list[Path]) -> None:
    """Until our jobs are done and no run of the sweep is active elsewhere."""
    start = time.monotonic()
    while not all(job.done() for job in jobs) or active_runs(run_dirs):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"SLURM jobs still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def record_outcome(run_dir: Path, run: SweepRun, job: Any) -> None:
    """A run that wrote no final status (killed by SLURM) is recorded failed with its state."""
    status = read_status(run_dir) or {}
    if status.get("state") in ("done", "failed"):
        return
    try:
        if (job.result() or {}).get("state") == "running":
            return  # another job held the run: its own outcome is recorded there
        error = "the job ended without a status"
    except Exception as failure:  # submitit's FailedJobError / UncompletedJobError
        error = str(failure).strip().splitlines()[0] if str(failure).strip() else repr(failure)
    state = job.state
    write_status(run_dir, {"run": run.name, "setting": run.setting, "seed": run.seed,
                           "state": "failed", "slurm_state": state,
                           "error": f"SLURM {state}: {error}"})  # fmt: skip
