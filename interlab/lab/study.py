"""A study: a sweep whose finished runs become committed records, and whose tables and
verdicts are generated from those records.

A study file (`benchmarks/studies/NAME.yaml`) is a sweep grid (notebook, base, runs, seeds,
executor) plus what the study asks: `comparisons` (pairs of arm names, "a vs b") and
`metrics` (the first is the one the verdicts rest on). `interlab study NAME` runs the
grid's unfinished runs (resumable, locally, several per device, or on SLURM, exactly as
`interlab sweep`), appends one record per finished run to
`benchmarks/results/studies/NAME.jsonl`, and writes the report beside it.

A record holds what a reader needs to re-derive a table and to know whether two arms can be
compared: arm, seed, the config's hash, the code version and commit, the precision setting,
the final metrics and the per-epoch curve.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlab.lab.grids import GRID_KEYS, Sweep, sweep_from_spec
from interlab.lab.paths import in_project

STUDY_KEYS = ("comparisons", "metrics", "findings")
STUDIES_DIR = "benchmarks/studies"
RECORDS_DIR = "benchmarks/results/studies"
RUNS_DIR = "benchmarks/scratch/studies"
DEFAULT_METRICS = ("knn_top1", "knn_top1_head", "linear_top1")
# Per-epoch figures a record keeps (the curves that say why an arm did what it did).
CURVE_KEYS = (
    "epoch", "loss", "knn_top1", "knn_top1_head", "nmi", "ari", "purity", "label_change_ratio",
    "pn_gap", "positive_cosine", "negative_cosine", "false_negative_rate",
)  # fmt: skip
# Final figures a record keeps besides the metrics: the diagnostics of the inter branch.
DIAGNOSTIC_KEYS = (
    "nmi", "ari", "purity", "label_change_ratio", "pn_gap", "positive_cosine",
    "negative_cosine", "false_negative_rate", "fnr_random", "fnr_hard", "fnr_semihard",
    "fnr_semieasy",
)  # fmt: skip
PRECISION_KEYS = ("amp", "channels_last", "compile", "cuda_graph", "deterministic")
# Config keys that do not change what a run computes: left out of the config hash.
UNHASHED_KEYS = ("out", "seed", "device", "log_every", "checkpoint_every", "snapshot_every")


@dataclass
class Study:
    name: str
    sweep: Sweep
    comparisons: dict[str, list[tuple[str, str]]]  # family -> pairs; Holm within a family
    metrics: list[str]
    description: str = ""
    findings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # claim -> a > b

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(run.setting for run in self.sweep.runs))

    @property
    def records_path(self) -> Path:
        return in_project(RECORDS_DIR) / f"{self.name}.jsonl"

    @property
    def report_path(self) -> Path:
        return in_project(RECORDS_DIR) / f"{self.name}.md"

    @property
    def runs_dir(self) -> Path:
        return in_project(RUNS_DIR) / self.name


def study_path(name: str | Path) -> Path:
    """A study file by name (benchmarks/studies/NAME.yaml) or by path; a missing one is named."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = in_project(STUDIES_DIR) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in in_project(STUDIES_DIR).glob("*.yaml"))
        raise ValueError(f"no study {str(name)!r} ({path} not found); studies: {', '.join(known)}")
    return path


def load_study(
    name: str | Path,
    seeds: list[int] | None = None,
    check_run: Callable[[dict[str, Any]], None] | None = None,
) -> Study:
    """Read and check a study file: its grid, and that every comparison names two arms."""
    path = study_path(name)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a study file is a mapping (a sweep grid plus {STUDY_KEYS})")
    unknown = set(spec) - set(GRID_KEYS) - set(STUDY_KEYS)
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(GRID_KEYS + STUDY_KEYS)}"
        )
    grid = {k: v for k, v in spec.items() if k in GRID_KEYS}
    anchor_warm_starts(grid)
    if seeds is not None:
        grid["seeds"] = list(seeds)
    sweep = sweep_from_spec(grid, source=path, check_run=check_run)
    study = Study(
        name=path.stem,
        sweep=sweep,
        comparisons=parse_families(spec.get("comparisons") or []),
        metrics=list(spec.get("metrics") or DEFAULT_METRICS),
        description=str(spec.get("description", "")),
        findings=parse_findings(spec.get("findings") or {}),
    )
    compared = {pair for pairs in study.comparisons.values() for pair in pairs}
    for claim, pairs in study.findings.items():
        for a, b in pairs:
            if (a, b) not in compared:
                raise ValueError(
                    f"{path}: finding {claim!r} expects {a} > {b}, which no comparison makes"
                )
    for a, b in compared:
        for arm in (a, b):
            if arm not in study.arms:
                raise ValueError(
                    f"{path}: comparison {a} vs {b} names no arm {arm!r}; arms: "
                    f"{', '.join(study.arms)}"
                )
    return study


def anchor_warm_starts(grid: dict[str, Any]) -> None:
    """A relative `init_from` (a checkpoint an earlier study trained) is taken from the
    project root, wherever the notebook process starts."""
    sections = [grid.get("base") or {}, *(grid.get("runs") or [])]
    for section in sections:
        overrides = section.get("overrides") if isinstance(section, dict) else None
        if isinstance(overrides, dict) and isinstance(overrides.get("init_from"), str):
            overrides["init_from"] = str(in_project(overrides["init_from"]))


def parse_families(spec: Any) -> dict[str, list[tuple[str, str]]]:
    """A list of comparisons (one family) or a mapping family name -> list. A family is the
    set of comparisons one question makes: Holm's correction runs within it."""
    families = spec if isinstance(spec, dict) else {"comparisons": spec}
    if not all(isinstance(pairs, list) for pairs in families.values()):
        raise ValueError(f"comparisons: a list of 'a vs b', or family: [list]; got {spec!r}")
    return {str(name): [parse_comparison(c) for c in pairs] for name, pairs in families.items()}


def parse_findings(spec: Any) -> dict[str, list[tuple[str, str]]]:
    """claim -> the comparisons it predicts, each 'a > b' (the paper's direction)."""
    if not isinstance(spec, dict):
        raise ValueError(f"findings: a mapping claim -> ['a > b', ...]; got {spec!r}")
    findings = {}
    for claim, expected in spec.items():
        if not isinstance(expected, list) or not expected:
            raise ValueError(f"finding {claim!r}: give a non-empty list of 'a > b'")
        pairs = []
        for text in expected:
            parts = str(text).split(" > ")
            if len(parts) != 2:
                raise ValueError(f"finding {claim!r}: each expectation is 'a > b'; got {text!r}")
            pairs.append((parts[0].strip(), parts[1].strip()))
        findings[str(claim)] = pairs
    return findings


def parse_comparison(text: Any) -> tuple[str, str]:
    """'a vs b' or [a, b] -> (a, b)."""
    parts = text.split(" vs ") if isinstance(text, str) else text
    if not isinstance(parts, list | tuple) or len(parts) != 2:
        raise ValueError(f"a comparison is 'a vs b' or [a, b]; got {text!r}")
    return str(parts[0]).strip(), str(parts[1]).strip()


# ---- records -----------------------------------------------------------------------------
def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits identifying what a run computes: its config without the run's folder,
    seed, device or logging cadence (every seed of one arm shares it); a warm start's
    checkpoint counts by its path inside the project, so two checkouts agree."""
    kept = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    if isinstance(kept.get("init_from"), str):
        kept["init_from"] = project_relative(kept["init_from"])
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def project_relative(path: str) -> str:
    root = in_project(".").resolve()
    resolved = Path(path).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else path


def file_digest(path: str | None) -> str | None:
    """12 hex digits of a file's SHA-256 (a warm start's checkpoint), None when absent."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def precision_of(config: dict[str, Any], device: str) -> str:
    """The numeric setting a run trained under: device kind and the precision switches."""
    kind = "cpu" if device.lower().startswith("cpu") else "cuda"
    switches = ",".join(f"{k}={config.get(k)}" for k in PRECISION_KEYS if k in config)
    return f"{kind}:{switches}"


def run_record(study: str, arm: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """One finished run's record, read from its `metrics.json` summary."""
    import torch

    summary_path = run_dir / "metrics.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{summary_path}: no readable run summary ({error})") from None
    config, final = summary.get("config", {}), summary.get("final", {})
    code = summary.get("code") or {}
    metrics = {k: summary.get(k, final.get(k)) for k in DEFAULT_METRICS}
    return {
        "study": study,
        "arm": arm,
        "seed": seed,
        "run": run_dir.name,
        "config_hash": config_hash(config),
        "code_version": code.get("version"),
        "commit": code.get("commit"),
        "precision": summary.get("precision")
        or precision_of(config, str(summary.get("device", ""))),
        "device": summary.get("device"),
        "torch": torch.__version__.split("+")[0],
        "date": summary.get("finished")
        or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(summary_path.stat().st_mtime)),
        "init_from": file_digest(config.get("init_from")),
        "epochs": summary.get("epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "diagnostics": {k: final[k] for k in DIAGNOSTIC_KEYS if k in final},
        "per_epoch": [
            {k: r[k] for k in CURVE_KEYS if k in r} for r in summary.get("per_epoch", [])
        ],
    }


def train_run_record(
    study: str, arm: str, seed: int, run_dir: Path, device: str, torch_version: str
) -> dict[str, Any] | None:
    """The record of a finished `interlab train` folder (config.yaml + metrics.jsonl, no
    notebook summary: the GPU pack's runs), or None while it has not reached its last epoch.
    No linear probe is run there: the record has the kNN metrics only. Reads no torch, so
    the pack that calls it holds no CUDA context."""
    from interlab.lab.provenance import code_version, git_commit

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    per_epoch = [json.loads(line) for line in lines if line.strip()]
    if not per_epoch or per_epoch[-1]["epoch"] < config["epochs"]:
        return None
    evaluated = [r for r in per_epoch if "knn_top1" in r]
    final = {**per_epoch[-1], **(evaluated[-1] if evaluated else {})}
    flat = {**config, **config.get("method_options", {})}
    return {
        "study": study,
        "arm": arm,
        "seed": seed,
        "run": run_dir.name,
        "config_hash": config_hash(flat),
        "code_version": code_version(),
        "commit": git_commit(),
        "precision": precision_of(flat, device),
        "device": device,
        "torch": torch_version.split("+")[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "epochs": config["epochs"],
        "wall_time_s": round(sum(r.get("epoch_time_s", 0.0) for r in per_epoch), 1),
        "metrics": {k: final[k] for k in DEFAULT_METRICS if k in final},
        "diagnostics": {k: final[k] for k in DIAGNOSTIC_KEYS if k in final},
        "per_epoch": [{k: r[k] for k in CURVE_KEYS if k in r} for r in per_epoch],
    }


def append_records(path: Path, records: list[dict[str, Any]]) -> int:
    """Append the records not yet in the file (by arm, seed, run, code and date)."""
    known = {record_key(r) for r in read_records(path)}
    fresh = [r for r in records if record_key(r) not in known]
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            for record in fresh:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
    return len(fresh)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a study file, in the order written; a torn line is named."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON record") from None
    return records


def record_key(record: dict[str, Any]) -> tuple:
    return (record["arm"], record["seed"], record["run"], record["code_version"], record["date"])


def record_finished_runs(study: Study) -> int:
    """Append a record for each finished run of the study's folder not yet recorded; returns
    how many were added. Runs are recorded once (by arm, seed, code and finish time)."""
    from interlab.lab.sweep import read_status

    finished = [
        run_record(study.name, run.setting, run.seed, study.runs_dir / run.name)
        for run in study.sweep.runs
        if (read_status(study.runs_dir / run.name) or {}).get("state") == "done"
    ]
    return append_records(study.records_path, finished)


# ---- report ------------------------------------------------------------------------------
RESULTS_FILE = "benchmarks/RESULTS.md"


def write_study_report(study: Study) -> Path:
    """Regenerate NAME.md from the records, and the study's section of RESULTS.md where it
    has one (between `<!-- study:NAME:begin -->` and `<!-- study:NAME:end -->`)."""
    from interlab.lab.study_plots import plot_study_curves
    from interlab.lab.study_report import study_markdown

    records = read_records(study.records_path)
    text = study_markdown(
        study.name,
        study.description,
        records,
        study.arms,
        study.comparisons,
        study.metrics,
        study.findings,
    )
    curves = plot_study_curves(records, study.report_path.with_suffix(".png"))
    if curves is not None:
        text += f"\nPer-epoch curves (mean over seeds): `{RECORDS_DIR}/{curves.name}`.\n"
    study.report_path.parent.mkdir(parents=True, exist_ok=True)
    study.report_path.write_text(text)
    splice_section(in_project(RESULTS_FILE), f"study:{study.name}", text)
    return study.report_path


def splice_section(path: Path, marker: str, text: str) -> bool:
    """Replace what lies between the file's begin/end markers; False when it has none."""
    if not path.exists():
        return False
    content = path.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True
