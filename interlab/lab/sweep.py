"""Running a sweep: one papermill subprocess per run, a status file each, resumable.

Each run executes into OUT/<setting>-seed<S>/ (`executed.ipynb`, `metrics.json`, `run.log`,
`status.json`). `status.json` is written last and atomically: a finished run is skipped
when the sweep is run again, a failed one is retried, a run cut off by Ctrl-C simply has no
status yet. A failing run is recorded and the others go on.

Reading and checking grid files lives in `interlab.lab.grids` (and the notebook's declared
parameters in `interlab.lab.notebook_params`); their public names are re-exported here so
`from interlab.lab.sweep import load_sweep, run_sweep` keeps working.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

from interlab.child_processes import die_with_parent
from interlab.lab.grids import (
    GRID_KEYS,
    RunCheck,
    Sweep,
    SweepRun,
    fingerprint,
    load_sweep,
    sweep_from_spec,
)
from interlab.lab.paths import project_root
from interlab.run_lock import RunFolderLocked, RunLock, lock_holder

SWEEP_LOCK = ".sweep.lock"  # the trainer inside the notebook locks the run folder itself

__all__ = [
    "GRID_KEYS",
    "STATUS_NAME",
    "RunCheck",
    "RunExecutor",
    "Sweep",
    "SweepInterrupted",
    "SweepRun",
    "check_resumable",
    "load_sweep",
    "read_status",
    "run_sweep",
    "sweep_from_spec",
    "sweep_record",
    "write_status",
]

STATUS_NAME = "status.json"
Status = dict[str, Any]


def read_status(run_dir: Path) -> Status | None:
    """The run's recorded status; None when it has none yet (or a torn one)."""
    path = run_dir / STATUS_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_status(run_dir: Path, status: Status) -> None:
    tmp = run_dir / (STATUS_NAME + ".tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    os.replace(tmp, run_dir / STATUS_NAME)  # atomic: never half a status


class SweepInterrupted(Exception):
    """Ctrl-C: running notebooks were stopped; they keep no status and run again next time."""


class RunExecutor:
    """Runs notebooks as papermill subprocesses so Ctrl-C can stop them and cwd stays ours."""

    def __init__(
        self, notebook: Path, threads_per_run: int | None,
        extra_parameters: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.notebook = notebook
        self.threads_per_run = threads_per_run
        self.extra_parameters = dict(extra_parameters or {})  # the executor's, e.g. processes
        self.stopping = threading.Event()
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def execute(self, run: SweepRun, run_dir: Path, device: str | None) -> Status | None:
        """Execute one run into `run_dir` and record its status; None if interrupted."""
        run_dir.mkdir(parents=True, exist_ok=True)
        parameters = {**run.parameters, **self.extra_parameters, "out_dir": str(run_dir)}
        if device is not None:
            parameters["device"] = device
        status: Status = {"run": run.name, "setting": run.setting, "seed": run.seed}
        status.update(parameters=parameters, fingerprint=fingerprint(run.parameters))
        try:  # one writer per run folder: another sweep (or its orphan) may hold this run
            lock = RunLock(run_dir, SWEEP_LOCK).acquire()
        except RunFolderLocked as error:
            return {**status, "state": "running", "error": str(error)}
        try:
            return self._execute_locked(status, parameters, run_dir)
        finally:
            lock.release()

    def _execute_locked(self, status: Status, parameters: dict, run_dir: Path) -> Status | None:
        start = time.perf_counter()
        returncode = self._papermill(parameters, run_dir)
        if self.stopping.is_set():
            return None
        status.update(outcome(returncode, run_dir))
        status["seconds"] = round(time.perf_counter() - start, 2)
        write_status(run_dir, status)
        return status

    def _papermill(self, parameters: dict[str, Any], run_dir: Path) -> int:
        command = [
            sys.executable, "-m", "papermill", str(self.notebook), str(run_dir / "executed.ipynb"),
            "-y", yaml.safe_dump(parameters), "--cwd", str(project_root()), "--no-progress-bar",
        ]  # fmt: skip
        with open(run_dir / "run.log", "w") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            with self.lock:
                self.running.add(process)
            try:
                return process.wait()
            finally:
                with self.lock:
                    self.running.discard(process)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.threads_per_run:  # parallel CPU runs share the cores instead of fighting
            threads = str(self.threads_per_run)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    def stop_all(self) -> None:
        self.stopping.set()
        with self.lock:
            for process in self.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)


def outcome(returncode: int, run_dir: Path) -> Status:
    """done, or failed with the notebook's own error (exception name and message)."""
    if returncode == 0 and (run_dir / "metrics.json").exists():
        return {"state": "done"}
    if returncode == 0:
        return {"state": "failed", "error": "the notebook finished but wrote no metrics.json"}
    return {
        "state": "failed",
        "error": notebook_error(run_dir / "executed.ipynb", run_dir / "run.log"),
    }


def notebook_error(executed: Path, log: Path) -> str:
    """The first error output of the executed notebook, else the log's last line."""
    if executed.exists():
        import nbformat

        with contextlib.suppress(Exception):
            for cell in nbformat.read(executed, as_version=4).cells:
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "error":
                        return f"{output['ename']}: {output['evalue']}"[:500]
    lines = (
        [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if log.exists()
        else []
    )
    return lines[-1][:500] if lines else "papermill failed before the notebook ran"


def check_resumable(sweep: Sweep, out: Path) -> None:
    """A folder holding runs made with other parameters is an error, not a silent skip."""
    stale = []
    for run in sweep.runs:
        status = read_status(out / run.name)
        if status and status.get("fingerprint") not in (None, fingerprint(run.parameters)):
            stale.append(run.name)
    if stale:
        raise ValueError(
            f"{out} holds run(s) made with other parameters: {', '.join(stale[:5])}"
            f"{' ...' if len(stale) > 5 else ''}; use another --out or delete those folders"
        )


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    workers: int = 1,
    devices: list[str] | None = None,
    on_finish: Callable[[Status], None] | None = None,
    progress: bool = True,
) -> list[Status]:
    """Execute the sweep's unfinished runs; returns every run's status (finished ones included).

    With `devices` (e.g. ["cuda:0", "cuda:1"]) each device runs one notebook at a time and
    overrides the run's `device` parameter; otherwise `workers` runs go in parallel, each with
    its share of the CPU threads. Ctrl-C stops the running notebooks and raises
    SweepInterrupted; finished runs stay recorded.
    """
    from tqdm.auto import tqdm

    out = prepare_sweep_folder(sweep, out)
    pending = [r for r in sweep.runs if (read_status(out / r.name) or {}).get("state") != "done"]
    slots = run_slots(devices, workers)
    parallel = slots.qsize()
    executor = RunExecutor(sweep.notebook, cpu_threads_per_run(devices, parallel))
    done_before = len(sweep.runs) - len(pending)
    bar = tqdm(total=len(sweep.runs), initial=done_before, desc="sweep", disable=not progress)
    lock = threading.Lock()

    def work(run: SweepRun) -> None:
        if executor.stopping.is_set():
            return
        device = slots.get()
        try:
            status = executor.execute(run, out / run.name, device)
        finally:
            slots.put(device)
        if status is None:
            return
        if status["state"] == "running":  # another sweep process holds this run: not ours
            bar.write(f"{run.name} is running elsewhere: {status['error']}")
            return
        with lock:  # one thread at a time reports, so on_finish needs no lock of its own
            bar.update(1)
            if status["state"] == "failed":
                bar.write(f"{run.name} failed: {status['error']}")
            if on_finish is not None:
                on_finish(status)

    try:
        run_in_threads(work, pending, parallel, executor, out)
    finally:
        bar.close()
    return [read_status(out / r.name) or {"run": r.name, "state": "missing"} for r in sweep.runs]


def prepare_sweep_folder(sweep: Sweep, out: str | Path) -> Path:
    """The absolute sweep folder, checked for stale runs, with `sweep.yaml` (what is run)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(sweep, out)
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep_record(sweep), sort_keys=False))
    return out


def run_slots(devices: list[str] | None, workers: int) -> Queue:
    """One slot per device (None: a CPU worker); a run holds a slot while it executes."""
    slots: Queue = Queue()
    for slot in devices or [None] * max(1, workers):
        slots.put(slot)
    return slots


def cpu_threads_per_run(devices: list[str] | None, parallel: int) -> int | None:
    """Parallel CPU runs split the cores; a lone run or a GPU run keeps the default."""
    if devices or parallel == 1:
        return None
    return max(1, (os.cpu_count() or 1) // parallel)


def run_in_threads(
    work: Callable[[SweepRun], None],
    runs: list[SweepRun],
    parallel: int,
    executor: RunExecutor,
    out: Path,
) -> None:
    """`work` on every run, `parallel` at a time; Ctrl-C stops them all (SweepInterrupted)."""
    pool = ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(work, run) for run in runs]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        executor.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise SweepInterrupted(
            f"interrupted: finished runs are kept in {out}; rerun to continue"
        ) from None
    pool.shutdown()


def sweep_record(sweep: Sweep) -> dict[str, Any]:
    """What was run, for the report: notebook and every run's parameters."""
    return {
        "notebook": str(sweep.notebook),
        "source": str(sweep.source) if sweep.source else None,
        "runs": [
            {"name": r.name, "setting": r.setting, "seed": r.seed, "parameters": r.parameters}
            for r in sweep.runs
        ],
    }


def sweep_states(out: str | Path) -> list[tuple[str, str, str]]:
    """(run, state, detail) for every run of the sweep folder `out`, read without touching
    anything: done / failed (its error) from status.json, running where a live process holds
    the run's lock (its pid and host), pending otherwise."""
    out = Path(out)
    record = out / "sweep.yaml"
    if not record.is_file():
        raise FileNotFoundError(f"{out} is not a sweep folder (no sweep.yaml)")
    rows = []
    for run in yaml.safe_load(record.read_text())["runs"]:
        run_dir = out / run["name"]
        holder = lock_holder(run_dir, SWEEP_LOCK) if run_dir.is_dir() else None
        status = read_status(run_dir) or {}
        if holder is not None:
            rows.append(
                (run["name"], "running", f"pid {holder.get('pid')} on {holder.get('host')}")
            )
        elif status.get("state") in ("done", "failed"):
            rows.append((run["name"], status["state"], status.get("error", "")))
        else:
            job = run_dir / "slurm.json"  # submitted to SLURM, not started yet
            detail = f"slurm job {json.loads(job.read_text())['job_id']}" if job.exists() else ""
            rows.append((run["name"], "pending", detail))
    return rows
