"""Sweeps on a SLURM cluster through submitit: one array job per sweep, one task per run.

Each task runs exactly what a local sweep runs for that run (`RunExecutor.execute`: the
run-folder lock, papermill, `status.json`), so run folders look the same whichever executor
made them. A task that SLURM stops for its time limit or a preemption is requeued by
submitit's checkpointing hook and its notebook's trainer resumes from its checkpoint.
"""

from __future__ import annotations

import json
import re
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
    slurm_args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("gpus_per_run", "cpus_per_run", "time_min", "max_parallel"):
            value = getattr(self, name)
            low = 0 if name == "gpus_per_run" else 1
            if value is None and name == "max_parallel":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"executor setting {name} must be an int >= {low}; got {value!r}")
        if not isinstance(self.slurm_args, dict):
            raise ValueError(f"slurm_args must be a mapping; got {self.slurm_args!r}")

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

    def __init__(
        self, notebook: str, run: SweepRun, run_dir: str, threads: int,
        extra_parameters: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.notebook, self.run, self.run_dir, self.threads = notebook, run, run_dir, threads
        self.extra_parameters = dict(extra_parameters or {})

    def __call__(self) -> Status | None:
        executor = RunExecutor(Path(self.notebook), self.threads, self.extra_parameters)
        return executor.execute(self.run, Path(self.run_dir), None)

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
    extra_parameters = settings.run_parameters(sweep)  # checked before anything is submitted
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
    notebook, threads = str(sweep.notebook), settings.cpus_per_run
    with executor.batch():
        jobs = [
            executor.submit(NotebookJob(notebook, r, str(out / r.name), threads, extra_parameters))
            for r in pending
        ]
    for run, job in zip(pending, jobs, strict=True):
        (out / run.name).mkdir(parents=True, exist_ok=True)
        record = {"job_id": job.job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / run.name / JOB_RECORD).write_text(json.dumps(record))
    if wait:
        wait_for(jobs, poll_s, timeout_s, [out / r.name for r in sweep.runs])
        record_slurm_states(out, sweep.runs)
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
    for run, run_dir in zip(runs, run_dirs, strict=True):
        record = run_dir / JOB_RECORD
        status = read_status(run_dir) or {}
        if run_dir in busy or not record.exists() or status.get("state") == "done":
            continue
        job_id = json.loads(record.read_text())["job_id"]
        if status.get("slurm_job") == job_id:
            continue  # already recorded
        state = final_job_state(job_id)
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
