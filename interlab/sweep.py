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
import copy
import itertools
import json
import os
import re
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def load_sweep(path: str | Path, small: bool = False) -> Sweep:
    """Read, expand and check a grid file; every problem is a ValueError naming the key."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"grid file {path} does not exist")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
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
    base = dict(spec.get("base") or {})
    if small:
        base = merge_parameters(base, spec.get("small") or {})
    runs = expand_runs(base, spec.get("grid") or {}, spec.get("runs") or [], seeds_of(spec))
    defaults = declared_defaults(declared)
    for run in runs:
        check_parameters(run.parameters, declared, notebook)
        check_semantics({**defaults, **run.parameters})
    return Sweep(notebook, runs, source, declared)


def seeds_of(spec: dict[str, Any]) -> Any:
    seeds = spec.get("seeds", [0])
    return [0] if seeds is None else seeds


def resolve_notebook(name: str, source: Path | None) -> Path:
    candidates = [Path(name), REPO_ROOT / name]
    if source is not None:
        candidates.insert(0, source.parent / name)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ValueError(
        f"notebook {name!r} not found (looked in {', '.join(str(c) for c in candidates)})"
    )


def declared_parameters(notebook: Path) -> dict[str, dict[str, Any]]:
    """The notebook's `parameters` cell as papermill reads it: name -> type name, default."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")
    return declared


def declared_defaults(declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parameters cell's default values (those written as Python literals)."""
    defaults = {}
    for name, info in declared.items():
        try:
            defaults[name] = ast.literal_eval(info.get("default", ""))
        except (ValueError, SyntaxError):
            continue
    return defaults


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


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9=,.+_-]", "_", str(name))


def check_parameters(
    parameters: dict[str, Any], declared: dict[str, dict[str, Any]], notebook: Path
) -> None:
    """Names the notebook declares, values of the declared type."""
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(
                f"{notebook.name} declares no parameter {key!r}; valid: {', '.join(declared)}"
            )
        type_name = declared[key].get("inferred_type_name", "None")
        expected = TYPE_NAMES.get(type_name.split("|")[0].strip())
        if expected is None or value is None:
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(
                f"parameter {key!r} of {notebook.name} expects {type_name}; got {value!r}"
            )


def check_semantics(parameters: dict[str, Any]) -> None:
    """Method, dataset and override keys checked the way a run would, before any run starts."""
    from interlab.experiment import experiment_config

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


def execute_run(notebook: Path, run: SweepRun, run_dir: Path, device: str | None) -> dict[str, Any]:
    """Execute one run with papermill into `run_dir`; never raises (the error is recorded)."""
    import papermill

    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**run.parameters, "out_dir": str(run_dir)}
    if device is not None:
        parameters["device"] = device
    start = time.perf_counter()
    status: dict[str, Any] = {"run": run.name, "setting": run.setting, "seed": run.seed}
    status["parameters"] = parameters
    try:
        with open(run_dir / "run.log", "w") as log:
            papermill.execute_notebook(
                str(notebook),
                str(run_dir / "executed.ipynb"),
                parameters=parameters,
                cwd=str(REPO_ROOT),
                progress_bar=False,
                stdout_file=log,
                stderr_file=log,
            )
        status.update(state="done")
    except Exception as error:  # a failing run is recorded; the others go on
        status.update(state="failed", error=f"{type(error).__name__}: {short_error(error)}")
        with open(run_dir / "run.log", "a") as log:
            log.write(traceback.format_exc())
    status["seconds"] = round(time.perf_counter() - start, 2)
    write_status(run_dir, status)
    return status


def short_error(error: Exception) -> str:
    """papermill errors carry the whole traceback; keep the last meaningful line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else repr(error)


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
    overrides the run's `device` parameter; otherwise `workers` runs go in parallel.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep_record(sweep), sort_keys=False))
    pending = [r for r in sweep.runs if (read_status(out / r.name) or {}).get("state") != "done"]
    slots: Queue = Queue()
    for slot in devices or [None] * max(1, workers):
        slots.put(slot)
    bar = tqdm(
        total=len(sweep.runs),
        initial=len(sweep.runs) - len(pending),
        desc="sweep",
        disable=not progress,
    )
    lock = threading.Lock()

    def work(run: SweepRun) -> dict[str, Any]:
        device = slots.get()
        try:
            status = execute_run(sweep.notebook, run, out / run.name, device)
        finally:
            slots.put(device)
        with lock:
            bar.update(1)
            if status["state"] == "failed":
                bar.write(f"{run.name} failed: {status['error']}")
            if on_finish is not None:
                on_finish(status)
        return status

    pool = ThreadPoolExecutor(max_workers=slots.qsize())
    futures = [pool.submit(work, run) for run in pending]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:  # finished runs are on disk; cut-off ones have no status
        pool.shutdown(wait=False, cancel_futures=True)
        raise
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
