"""Running a sweep: one papermill subprocess per run, a status file each, resumable.

Each run executes into OUT/<setting>-seed<S>/ (`executed.ipynb`, `metrics.json`, `run.log`,
`status.json`). `status.json` is written last and atomically: a finished run is skipped
when the sweep is run again, a failed one is retried, a run cut off by Ctrl-C simply has no
status yet. A failing run is recorded and the others go on. Several runs may share a device
(`runs_per_device`); `interlab.lab.device_slots` decides where each one starts.

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
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from interlab.child_processes import die_with_parent
from interlab.lab.device_slots import (
    DEFAULT_RUN_GB,
    DeviceSlots,
    MemoryProbe,
    gpu_memory,
    resolve_run_device,
)
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

    def execute(
        self, run: SweepRun, run_dir: Path, device: str | None,
        placement: dict[str, Any] | None = None,
    ) -> Status | None:  # fmt: skip
        """Execute one run into `run_dir` and record its status; None if interrupted.

        `device` overrides the run's `device` parameter; `placement` (the device it runs on,
        `runs_on_device`: how many runs shared it at its start) goes into the status."""
        run_dir.mkdir(parents=True, exist_ok=True)
        parameters = {**run.parameters, **self.extra_parameters, "out_dir": str(run_dir)}
        if device is not None:
            parameters["device"] = device
        status: Status = {"run": run.name, "setting": run.setting, "seed": run.seed}
        status.update(placement or {})
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
        status["started"] = now()
        returncode = self._papermill(parameters, run_dir)
        if self.stopping.is_set():
            return None
        status.update(outcome(returncode, run_dir))
        status["finished"] = now()
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


def now() -> str:
    """Local time to the millisecond: when runs that share a device overlapped."""
    return datetime.now().isoformat(timespec="milliseconds")


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
    runs_per_device: int | None = None,
    min_free_gb: float | None = None,
    memory_probe: MemoryProbe = gpu_memory,
    poll_s: float = 5.0,
) -> list[Status]:
    """Execute the sweep's unfinished runs; returns every run's status (finished ones included).

    With `devices` (e.g. ["cuda:0", "cuda:1"]) each device runs `runs_per_device` notebooks
    at a time (default 1) and overrides the run's `device` parameter. Without, each run keeps
    its own device and `runs_per_device` (or `workers`) runs share it, each with its share of
    the CPU threads. On a GPU shared by several runs a run starts only when `min_free_gb`
    (default `DEFAULT_RUN_GB`) is free there, else it waits. Every status names the run's
    `device` and `runs_on_device` (how many of the sweep's runs shared it at its start).
    Ctrl-C stops the running notebooks and raises SweepInterrupted; finished runs stay
    recorded.
    """
    from tqdm.auto import tqdm

    per_device = runs_at_once(workers, runs_per_device, devices)
    need_gb = memory_need(per_device, min_free_gb)
    places = run_places(sweep, sweep.runs, devices, memory_probe)
    used = sorted({device for candidates in places.values() for device in candidates})
    slots = DeviceSlots(per_device, need_gb, memory_probe, poll_s)
    slots.check_fits(used)  # before anything is written
    out = prepare_sweep_folder(sweep, out)
    pending = [r for r in sweep.runs if (read_status(out / r.name) or {}).get("state") != "done"]
    done_before = len(sweep.runs) - len(pending)
    bar = tqdm(total=len(sweep.runs), initial=done_before, desc="sweep", disable=not progress)
    slots.say = bar.write  # waiting lines above the bar
    parallel = per_device * len(used)
    executor = RunExecutor(sweep.notebook, cpu_threads_per_run(parallel))
    lock = threading.Lock()

    def work(run: SweepRun) -> None:
        if executor.stopping.is_set():
            return
        placed = slots.acquire(places[run.name])
        if placed is None:
            return
        device, sharing = placed
        try:
            status = executor.execute(
                run, out / run.name, device if devices else None,
                {"device": device, "runs_on_device": sharing},
            )  # fmt: skip
        finally:
            slots.release(device)
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

    def stop() -> None:
        executor.stop_all()
        slots.stop()

    try:
        run_in_threads(work, pending, parallel, stop, out)
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


def runs_at_once(
    workers: int, runs_per_device: int | None, devices: list[str] | None = None
) -> int:
    """Runs per device: `runs_per_device`, else `workers` (the CPU form of the same); with
    listed `devices`, 1 unless `runs_per_device` says otherwise (workers would be ambiguous:
    in all, or per device?)."""
    for name, value in (("workers", workers), ("runs_per_device", runs_per_device)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if runs_per_device is not None and workers > 1:
        raise ValueError(
            f"give workers ({workers}) or runs_per_device ({runs_per_device}), not both: "
            "runs_per_device is the runs at once on each device, the CPU included"
        )
    if devices and workers > 1:
        raise ValueError(
            f"with devices ({', '.join(devices)}) give runs_per_device, not workers ({workers}): "
            "runs_per_device is the runs at once on each listed device"
        )
    if devices:
        return runs_per_device or 1
    return runs_per_device or workers


def memory_need(per_device: int, min_free_gb: float | None) -> float | None:
    """GB a new run needs free on its GPU: as asked, else the default when runs share one
    (a lone run per device is not checked, as before devices could be shared)."""
    if min_free_gb is not None:
        if isinstance(min_free_gb, bool) or not min_free_gb > 0:
            raise ValueError(f"min_free_gb must be > 0; got {min_free_gb!r}")
        return float(min_free_gb)
    return DEFAULT_RUN_GB if per_device > 1 else None


def run_places(
    sweep: Sweep, runs: list[SweepRun], devices: list[str] | None, probe: MemoryProbe
) -> dict[str, list[str]]:
    """The devices each run may start on: any of `devices`, else the one its own `device`
    parameter (or the notebook's default, else auto) resolves to."""
    if devices is not None and not devices:
        raise ValueError("devices is an empty list: name at least one device, or give None")
    if devices:
        return {run.name: list(devices) for run in runs}
    default = default_device(sweep)
    resolved: dict[str, str] = {}
    places = {}
    for run in runs:
        name = str(run.parameters.get("device") or default)
        if name not in resolved:
            resolved[name] = resolve_run_device(name, probe)
        places[run.name] = [resolved[name]]
    return places


def default_device(sweep: Sweep) -> str:
    """The device of a run that sets none: the notebook's default, else auto."""
    declared = sweep.declared.get("device")
    return str(declared.default) if declared is not None and declared.default else "auto"


def cpu_threads_per_run(parallel: int) -> int | None:
    """Runs at once split the cores (GPU runs too: their processes share the CPU); a lone
    run keeps the default."""
    if parallel == 1:
        return None
    return max(1, (os.cpu_count() or 1) // parallel)


def run_in_threads(
    work: Callable[[SweepRun], None],
    runs: list[SweepRun],
    parallel: int,
    stop: Callable[[], None],
    out: Path,
) -> None:
    """`work` on every run, `parallel` at a time; Ctrl-C calls `stop` (SweepInterrupted)."""
    pool = ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(work, run) for run in runs]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        stop()
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
