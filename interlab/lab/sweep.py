"""Batches of parameterized notebooks: a YAML grid in, one papermill execution per run out.

A grid file names a notebook, base parameters, a grid (every combination) and/or a list of
explicit runs, and seeds:

    notebook: notebooks/train.ipynb
    base: {method: interclr, dataset: cifar10, epochs: 100}
    grid: {overrides.neg_sampling: [semihard, hard]}     # dotted keys reach into a dict
    runs: [{name: moco_v2, method: moco}]               # optional explicit settings
    seeds: [0, 1, 2]
    small: {dataset: cifar10-mini, epochs: 4, device: cpu}  # merged in by --small

Each run executes into OUT/<setting>-seed<S>/ (`executed.ipynb`, `metrics.json`, `run.log`,
`status.json`). `status.json` is written last and atomically: a finished run is skipped
when the sweep is run again, a failed one is retried, a run cut off by Ctrl-C simply has no
status yet. Everything is checked before the first run starts.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

from interlab.lab.paths import in_project, project_root

STATUS_NAME = "status.json"
GRID_KEYS = ("notebook", "base", "grid", "runs", "seeds", "small", "description")
TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}


@dataclass
class SweepRun:
    """One notebook execution: its folder name, setting (name without seed) and parameters."""

    name: str
    setting: str
    seed: int
    parameters: dict[str, Any]


@dataclass
class Sweep:
    notebook: Path
    runs: list[SweepRun]
    source: Path | None = None
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- reading and checking a grid ---------------------------------------------------------------


def load_sweep(path: str | Path, small: bool = False, seeds: list[int] | None = None) -> Sweep:
    """Read, expand and check a grid file; every problem is a ValueError naming the key.

    `seeds` replaces the file's own list (a 3-seed run of a 1-seed grid, say).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"grid file {path} does not exist")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
    if seeds is not None:
        spec["seeds"] = list(seeds)
    return sweep_from_spec(spec, small=small, source=path)


def sweep_from_spec(spec: dict[str, Any], small: bool = False, source: Path | None = None) -> Sweep:
    unknown = set(spec) - set(GRID_KEYS)
    if unknown:
        raise ValueError(
            f"unknown grid key(s) {sorted(unknown)}; valid keys: {', '.join(GRID_KEYS)}"
        )
    if "notebook" not in spec:
        raise ValueError("the grid names no notebook (key 'notebook')")
    notebook = resolve_notebook(spec["notebook"], source)
    declared = declared_parameters(notebook)
    defaults = declared_defaults(declared)
    base = dict(spec.get("base") or {})
    for name, default in defaults.items():  # dotted keys extend the notebook's own dict
        if isinstance(default, dict) and name not in base:
            base[name] = copy.deepcopy(default)
    if small:
        base = merge_parameters(base, spec.get("small") or {})
    runs = expand_runs(base, spec.get("grid") or {}, spec.get("runs") or [], seeds_of(spec))
    for run in runs:
        check_parameters(run.parameters, declared, notebook)
        check_semantics({**defaults, **run.parameters})
    return Sweep(notebook, runs, source, declared)


def seeds_of(spec: dict[str, Any]) -> Any:
    seeds = spec.get("seeds", [0])
    return [0] if seeds is None else seeds


def resolve_notebook(name: str, source: Path | None) -> Path:
    candidates = [Path(name), in_project(name)]
    if source is not None:
        candidates.insert(0, source.parent / name)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ValueError(
        f"notebook {name!r} not found (looked in {', '.join(str(c) for c in candidates)})"
    )


def declared_parameters(notebook: Path) -> dict[str, dict[str, Any]]:
    """The notebook's `parameters` cell read with `ast`: name -> {type, optional, default}.

    The type is the annotation (`int`, `float | None`, `Optional[str]`, ...) or, without
    one, the type of the literal default; papermill's own reader drops `X | None` names.
    """
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")
    declared: dict[str, dict[str, Any]] = {}
    for node in ast.parse(tagged[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, value = node.target.id, node.annotation, node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        default = literal_or_missing(value)
        type_name, optional = annotation_type(annotation)
        if type_name is None and default is not MISSING and default is not None:
            type_name = type(default).__name__
        optional = optional or default is None
        declared[name] = {"type": type_name, "optional": optional, "default": default}
    return declared


MISSING = object()


def literal_or_missing(node: ast.expr | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else MISSING
    except (ValueError, SyntaxError):
        return MISSING


def annotation_type(node: ast.expr | None) -> tuple[str | None, bool]:
    """(`int`, True) for `int | None` or `Optional[int]`; (None, False) when unknown."""
    if node is None:
        return None, False
    if isinstance(node, ast.Name):
        return node.id, False
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [node.left, node.right]
        names = [n.id if isinstance(n, ast.Name) else None for n in sides]
        is_none = [isinstance(n, ast.Constant) and n.value is None for n in sides]
        if any(is_none):
            other = names[1] if is_none[0] else names[0]
            return other, True
        return None, False
    optional_of = (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Optional"
        and isinstance(node.slice, ast.Name)
    )
    if optional_of:
        return node.slice.id, True
    return None, False


def declared_defaults(declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parameters cell's default values (those written as Python literals)."""
    return {
        name: info["default"] for name, info in declared.items() if info["default"] is not MISSING
    }


def merge_parameters(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`; dotted keys (`overrides.margin`) and dicts merge one level in."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".", 1)
            merged.setdefault(outer, {})
            if not isinstance(merged[outer], dict):
                raise ValueError(f"{key}: {outer!r} is not a dict parameter")
            merged[outer][inner] = value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def expand_runs(
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    explicit: list[dict[str, Any]],
    seeds: list[int],
) -> list[SweepRun]:
    """Every grid combination and every explicit run, times every seed."""
    if not isinstance(grid, dict):
        raise ValueError("'grid' must map parameter names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid key {key!r} needs a non-empty list of values; got {values!r}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"'seeds' must be a non-empty list of integers; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"'seeds' repeats a seed: {seeds!r}")
    settings: list[tuple[str, dict[str, Any]]] = []
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            changes = dict(zip(keys, values, strict=True))
            settings.append((setting_name(changes), merge_parameters(base, changes)))
    for entry in explicit:
        if not isinstance(entry, dict):
            raise ValueError(f"each entry of 'runs' must be a mapping; got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None) or setting_name(entry)
        settings.append((safe_name(name), merge_parameters(base, entry)))
    if not settings:
        raise ValueError("the grid is empty: give 'grid' values and/or a list of 'runs'")
    names = [name for name, _ in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two settings share the name(s) {duplicates}; name the explicit runs")
    runs = []
    for name, parameters in settings:
        for seed in seeds:
            runs.append(SweepRun(f"{name}-seed{seed}", name, seed, {**parameters, "seed": seed}))
    return runs


def setting_name(changes: dict[str, Any]) -> str:
    if not changes:
        return "base"
    parts = [f"{key.split('.')[-1]}={value}" for key, value in changes.items()]
    return safe_name(",".join(parts))


def safe_name(name: str, limit: int = 80) -> str:
    """A folder-safe name; long ones are cut and keep a short hash so they stay distinct."""
    name = re.sub(r"[^A-Za-z0-9=,.+_-]", "_", str(name))
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"


def fingerprint(parameters: dict[str, Any]) -> str:
    """What makes a run's result: its parameters without device and output folder."""
    kept = {k: v for k, v in parameters.items() if k not in ("device", "out_dir")}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def check_parameters(
    parameters: dict[str, Any], declared: dict[str, dict[str, Any]], notebook: Path
) -> None:
    """Names the notebook declares, values of the declared type (None where optional)."""
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(
                f"{notebook.name} declares no parameter {key!r}; valid: {', '.join(declared)}"
            )
        info = declared[key]
        expected = TYPE_NAMES.get(info["type"] or "")
        if expected is None:
            continue
        shown = info["type"] + (" | None" if info["optional"] else "")
        if value is None:
            if info["optional"]:
                continue
            raise ValueError(f"parameter {key!r} of {notebook.name} expects {shown}; got None")
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (
            expected in (int, float) and isinstance(value, bool)
        ):
            raise ValueError(f"parameter {key!r} of {notebook.name} expects {shown}; got {value!r}")


def check_semantics(parameters: dict[str, Any]) -> None:
    """Method, dataset and override keys checked the way a run would, before any run starts."""
    from interlab.lab.experiment import experiment_config

    if "method" not in parameters:  # not the training template's contract
        return
    experiment_config(
        parameters.get("method", "moco"),
        parameters.get("dataset", "cifar10-mini"),
        parameters.get("epochs", 1),
        parameters.get("batch_size", 256),
        "cpu",  # the device is checked when the run starts (a GPU may be named here)
        parameters.get("seed", 0),
        "unused",
        parameters.get("overrides"),
    )


# ---- running ------------------------------------------------------------------------------


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATUS_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    tmp = run_dir / (STATUS_NAME + ".tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    os.replace(tmp, run_dir / STATUS_NAME)  # atomic: never half a status


class SweepInterrupted(Exception):
    """Ctrl-C: running notebooks were stopped; they keep no status and run again next time."""


class RunExecutor:
    """Runs notebooks as papermill subprocesses so Ctrl-C can stop them and cwd stays ours."""

    def __init__(self, notebook: Path, threads_per_run: int | None) -> None:
        self.notebook = notebook
        self.threads_per_run = threads_per_run
        self.stopping = threading.Event()
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def execute(self, run: SweepRun, run_dir: Path, device: str | None) -> dict[str, Any] | None:
        """Execute one run into `run_dir` and record its status; None if interrupted."""
        run_dir.mkdir(parents=True, exist_ok=True)
        parameters = {**run.parameters, "out_dir": str(run_dir)}
        if device is not None:
            parameters["device"] = device
        status: dict[str, Any] = {"run": run.name, "setting": run.setting, "seed": run.seed}
        status.update(parameters=parameters, fingerprint=fingerprint(run.parameters))
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
        env = dict(os.environ)
        if self.threads_per_run:  # parallel CPU runs share the cores instead of fighting
            env.update(
                OMP_NUM_THREADS=str(self.threads_per_run), MKL_NUM_THREADS=str(self.threads_per_run)
            )
        with open(run_dir / "run.log", "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            with self.lock:
                self.running.add(process)
            try:
                return process.wait()
            finally:
                with self.lock:
                    self.running.discard(process)

    def stop_all(self) -> None:
        self.stopping.set()
        with self.lock:
            for process in self.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)


def outcome(returncode: int, run_dir: Path) -> dict[str, Any]:
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
    on_finish: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Execute the sweep's unfinished runs; returns every run's status (finished ones included).

    With `devices` (e.g. ["cuda:0", "cuda:1"]) each device runs one notebook at a time and
    overrides the run's `device` parameter; otherwise `workers` runs go in parallel, each with
    its share of the CPU threads. Ctrl-C stops the running notebooks and raises
    SweepInterrupted; finished runs stay recorded.
    """
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(sweep, out)
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep_record(sweep), sort_keys=False))
    pending = [r for r in sweep.runs if (read_status(out / r.name) or {}).get("state") != "done"]
    slots: Queue = Queue()
    for slot in devices or [None] * max(1, workers):
        slots.put(slot)
    parallel = slots.qsize()
    threads = None if devices or parallel == 1 else max(1, (os.cpu_count() or 1) // parallel)
    executor = RunExecutor(sweep.notebook, threads)
    bar = tqdm(
        total=len(sweep.runs),
        initial=len(sweep.runs) - len(pending),
        desc="sweep",
        disable=not progress,
    )
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
        with lock:
            bar.update(1)
            if status["state"] == "failed":
                bar.write(f"{run.name} failed: {status['error']}")
            if on_finish is not None:
                on_finish(status)

    pool = ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(work, run) for run in pending]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        executor.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise SweepInterrupted(
            f"interrupted: finished runs are kept in {out}; rerun to continue"
        ) from None
    finally:
        bar.close()
    pool.shutdown()
    return [read_status(out / r.name) or {"run": r.name, "state": "missing"} for r in sweep.runs]


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
