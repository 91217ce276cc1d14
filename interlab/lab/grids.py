"""Grid files: a YAML spec in, the checked list of runs (setting x seed) out.

A grid file names a notebook, base parameters, a grid (every combination) and/or a list of
explicit runs, and seeds:

    notebook: notebooks/train.ipynb
    base: {method: interclr, dataset: cifar10, epochs: 100}
    grid: {overrides.neg_sampling: [semihard, hard]}     # dotted keys reach into a dict
    runs: [{name: moco_v2, method: moco}]               # optional explicit settings
    seeds: [0, 1, 2]
    small: {dataset: cifar10-mini, epochs: 4, device: cpu}  # merged in by --small

Every run is checked against the notebook's `parameters` cell, and by the caller's
`check_run` if it gives one, before anything runs. This module knows nothing about
training: the training template's own check (`interlab.lab.experiment.check_training_run`)
comes in through `check_run`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlab.lab.notebook_params import (
    NotebookParameter,
    check_parameters,
    declared_defaults,
    declared_parameters,
)
from interlab.lab.paths import in_project

GRID_KEYS = ("notebook", "base", "grid", "runs", "seeds", "small", "description", "executor")

RunCheck = Callable[[dict[str, Any]], None]
"""Raises ValueError for a run the notebook would reject; gets the defaults plus the run's."""


@dataclass
class SweepRun:
    """One notebook execution: its folder name, setting (name without seed) and parameters."""

    name: str
    setting: str
    seed: int
    parameters: dict[str, Any]


@dataclass
class Sweep:
    """The notebook, every run to execute, the grid file it came from and the declared cell."""

    notebook: Path
    runs: list[SweepRun]
    source: Path | None = None
    declared: dict[str, NotebookParameter] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)  # the grid's `executor:` section


def load_sweep(
    path: str | Path,
    small: bool = False,
    seeds: list[int] | None = None,
    check_run: RunCheck | None = None,
) -> Sweep:
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
    return sweep_from_spec(spec, small=small, source=path, check_run=check_run)


def sweep_from_spec(
    spec: dict[str, Any],
    small: bool = False,
    source: Path | None = None,
    check_run: RunCheck | None = None,
) -> Sweep:
    """Expand a grid spec (a loaded grid file) and check every run before returning it."""
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
    base = base_parameters(spec, defaults, small)
    runs = expand_runs(base, spec.get("grid") or {}, spec.get("runs") or [], seeds_of(spec))
    for run in runs:
        check_parameters(run.parameters, declared, notebook)
        if check_run is not None:
            check_run({**defaults, **run.parameters})
    executor = spec.get("executor") or {}
    if not isinstance(executor, dict):
        raise ValueError(
            f"'executor' must be a mapping (name: local | slurm, ...); got {executor!r}"
        )
    return Sweep(notebook, runs, source, declared, dict(executor))


def base_parameters(spec: dict[str, Any], defaults: dict[str, Any], small: bool) -> dict[str, Any]:
    """The spec's `base` (plus `small` if asked), holding copies of the notebook's dicts.

    The copies let a dotted grid key (`overrides.margin`) extend the notebook's own dict
    instead of replacing it.
    """
    base = dict(spec.get("base") or {})
    for name, default in defaults.items():
        if isinstance(default, dict) and name not in base:
            base[name] = copy.deepcopy(default)
    if small:
        base = merge_parameters(base, spec.get("small") or {})
    return base


def seeds_of(spec: dict[str, Any]) -> Any:
    seeds = spec.get("seeds", [0])
    return [0] if seeds is None else seeds


def resolve_notebook(name: str, source: Path | None) -> Path:
    """The notebook beside the grid file, as given, or in the project, in that order."""
    candidates = [Path(name), in_project(name)]
    if source is not None:
        candidates.insert(0, source.parent / name)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ValueError(
        f"notebook {name!r} not found (looked in {', '.join(str(c) for c in candidates)})"
    )


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
    check_grid(grid)
    check_seeds(seeds)
    settings = grid_settings(base, grid) + explicit_settings(base, explicit)
    if not settings:
        raise ValueError("the grid is empty: give 'grid' values and/or a list of 'runs'")
    names = [name for name, _ in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two settings share the name(s) {duplicates}; name the explicit runs")
    return [
        SweepRun(f"{name}-seed{seed}", name, seed, {**parameters, "seed": seed})
        for name, parameters in settings
        for seed in seeds
    ]


def check_grid(grid: Any) -> None:
    if not isinstance(grid, dict):
        raise ValueError("'grid' must map parameter names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid key {key!r} needs a non-empty list of values; got {values!r}")


def check_seeds(seeds: Any) -> None:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"'seeds' must be a non-empty list of integers; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"'seeds' repeats a seed: {seeds!r}")


Setting = tuple[str, dict[str, Any]]  # (setting name, parameters without the seed)


def grid_settings(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[Setting]:
    """One setting per combination of the grid's values; none for an empty grid."""
    if not grid:
        return []
    keys = list(grid)
    settings = []
    for values in itertools.product(*(grid[k] for k in keys)):
        changes = dict(zip(keys, values, strict=True))
        settings.append((setting_name(changes), merge_parameters(base, changes)))
    return settings


def explicit_settings(base: dict[str, Any], explicit: list[dict[str, Any]]) -> list[Setting]:
    settings = []
    for entry in explicit:
        if not isinstance(entry, dict):
            raise ValueError(f"each entry of 'runs' must be a mapping; got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None) or setting_name(entry)
        settings.append((safe_name(name), merge_parameters(base, entry)))
    return settings


def setting_name(changes: dict[str, Any]) -> str:
    """`a=1,b=0.5` from the values that differ from `base` (the last part of dotted keys)."""
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
