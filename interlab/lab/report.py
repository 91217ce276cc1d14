"""Summaries of a sweep folder: one row per setting (mean and std over seeds) and plots.

`interlab report runs/sweeps/NAME` writes `summary.csv`, `summary.md`, `final_knn.png` and
`curves.png` into the sweep folder; `notebooks/report.ipynb` shows the same.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from interlab.lab.sweep import STATUS_NAME, SWEEP_LOCK, read_status
from interlab.run_lock import lock_holder

METRIC_KEYS = (
    "knn_top1",
    "knn_top1_head",
    "linear_top1",
    "nmi",
    "false_negative_rate",
    "fnr_random",
    "fnr_hard",
    "fnr_semihard",
    "fnr_semieasy",
    "label_change_ratio",
    "wall_time_s",
)
PROTOCOL_PREFIX = "knn_top1_k"  # kNN under a published protocol, e.g. knn_top1_k20_t0.07


def metric_keys(summary: dict[str, Any]) -> list[str]:
    """The figures a run summary reports: the fixed list, then any extra kNN protocols."""
    final = summary.get("final", {})
    protocols = sorted(k for k in {*summary, *final} if k.startswith(PROTOCOL_PREFIX))
    return [*METRIC_KEYS[:2], *protocols, *METRIC_KEYS[2:]]


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every run folder's status and figures, in the order the sweep listed them."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep folder {sweep_dir} does not exist")
    order = listed_order(sweep_dir)
    if order:  # the runs of the sweep as last launched; old folders of another grid are left out
        rows = [run_row(sweep_dir / name) for name in order]
    else:
        rows = [run_row(path.parent) for path in sorted(sweep_dir.glob(f"*/{STATUS_NAME}"))]
    if not any(row["state"] != "missing" for row in rows):
        raise ValueError(f"{sweep_dir} holds no finished or failed runs (no */{STATUS_NAME})")
    return rows


def finished_checkpoint(sweep_dir: str | Path, *settings: str, method: str | None = None) -> Path:
    """The checkpoint of a finished run of the sweep (of `method` when given).

    `settings` are tried in order; each names a setting or its first grid values
    (`neg_sampling=semihard` matches `neg_sampling=semihard,pool_share=0.3`). None given, or
    none found: the first finished run.
    """
    finished = []
    for row in collect_runs(sweep_dir):
        run = Path(sweep_dir) / row["run"] / "run"
        if row["state"] != "done" or not (run / "checkpoint.pt").exists():
            continue
        if method is not None and run_method(run) != method:
            continue
        finished.append((f"{row['setting']},", run / "checkpoint.pt"))
    for setting in settings:
        for name, checkpoint in finished:
            if name.startswith(f"{setting},"):
                return checkpoint
    if finished:
        return finished[0][1]
    kind = f"{method} " if method else ""
    raise ValueError(f"no finished {kind}run with a checkpoint in {sweep_dir}")


def run_method(run: Path) -> str | None:
    """The method a run folder trained, from its config.yaml (None without one)."""
    config = run / "config.yaml"
    return yaml.safe_load(config.read_text()).get("method") if config.exists() else None


def listed_order(sweep_dir: Path) -> dict[str, int]:
    record = sweep_dir / "sweep.yaml"
    if not record.exists():
        return {}
    runs = (yaml.safe_load(record.read_text()) or {}).get("runs", [])
    return {run["name"]: i for i, run in enumerate(runs)}


def run_row(run_dir: Path) -> dict[str, Any]:
    status = read_status(run_dir) or {}
    if not status and run_dir.is_dir():  # unfinished: running now (its lock held) or pending
        holder = lock_holder(run_dir, SWEEP_LOCK)
        if holder is not None:
            status = {"error": f"running (pid {holder.get('pid')} on {holder.get('host')})"}
    row: dict[str, Any] = {
        "run": status.get("run", run_dir.name),
        "setting": status.get("setting", run_dir.name.rsplit("-seed", 1)[0]),
        "seed": status.get("seed"),
        "state": status.get("state", "missing"),
        "error": status.get("error"),
        "curve": {},
    }
    metrics_path = run_dir / "metrics.json"
    if row["state"] == "done" and metrics_path.exists():
        summary = json.loads(metrics_path.read_text())
        final = summary.get("final", {})
        for key in metric_keys(summary):
            value = summary.get(key, final.get(key))
            if isinstance(value, (int, float)):
                row[key] = float(value)
        row["curve"] = {
            r["epoch"]: r["knn_top1"] for r in summary.get("per_epoch", []) if "knn_top1" in r
        }
    return row


def ordered_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Every figure key that any of the rows holds, in report order."""
    held = {key for row in rows for key in row}
    return [key for key in metric_keys(dict.fromkeys(held)) if key in held]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per setting: mean and std over its finished seeds, and its failures."""
    lines = []
    for setting in dict.fromkeys(row["setting"] for row in rows):
        runs = [r for r in rows if r["setting"] == setting]
        done = [r for r in runs if r["state"] == "done"]
        line: dict[str, Any] = {
            "setting": setting,
            "seeds": len(done),
            "failed": sum(r["state"] == "failed" for r in runs),
            "missing": sum(r["state"] == "missing" for r in runs),
        }
        for key in ordered_metrics(runs):
            values = [r[key] for r in done if key in r]
            if values:
                line[f"{key}_mean"] = statistics.fmean(values)
                line[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(line)
    return lines


def markdown_table(lines: list[dict[str, Any]]) -> str:
    keys = dict.fromkeys(k[: -len("_mean")] for line in lines for k in line if k.endswith("_mean"))
    shown = [key for key in metric_keys(dict.fromkeys(keys)) if key in keys]
    counts = ["seeds", "failed"] + (["missing"] if any(line["missing"] for line in lines) else [])
    columns = ["setting", *counts, *shown]
    body = []
    for line in lines:
        cells = [str(line["setting"])] + [str(line[key]) for key in counts]
        for key in shown:
            if f"{key}_mean" not in line:
                cells.append("-")
            elif key == "wall_time_s":
                cells.append(f"{line[f'{key}_mean']:.0f}")
            else:
                cells.append(f"{line[f'{key}_mean']:.4f} ± {line[f'{key}_std']:.4f}")
        body.append("| " + " | ".join(cells) + " |")
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([header, rule, *body]) + "\n"


def write_report(sweep_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write summary.csv / summary.md (and the plots) into the sweep folder; return the paths."""
    sweep_dir = Path(sweep_dir)
    rows = collect_runs(sweep_dir)
    lines = summarise(rows)
    paths = {"csv": sweep_dir / "summary.csv", "markdown": sweep_dir / "summary.md"}
    columns = sorted({key for line in lines for key in line}, key=column_order)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(lines)
    failures = [f"- {r['run']}: {r['error']}" for r in rows if r["state"] == "failed"]
    failures += [
        f"- {r['run']}: {r['error'] or 'pending: not run yet, queued, or cut off'}"
        for r in rows
        if r["state"] == "missing"
    ]
    text = markdown_table(lines)
    if failures:
        text += "\nFailed runs (rerun the sweep to retry them):\n\n" + "\n".join(failures) + "\n"
    paths["markdown"].write_text(text)
    if plots:
        paths.update(save_plots(sweep_dir, rows, lines))
    return paths


def column_order(key: str) -> tuple[int, str]:
    fixed = ["setting", "seeds", "failed", "missing"]
    return (fixed.index(key), "") if key in fixed else (len(fixed), key)


def save_plots(
    sweep_dir: Path, rows: list[dict[str, Any]], lines: list[dict[str, Any]]
) -> dict[str, Path]:
    from interlab.lab.plots import plot_setting_bars, plot_setting_curves

    paths = {}
    if any("knn_top1_mean" in line for line in lines):
        fig = plot_setting_bars(lines, "knn_top1", "final kNN top-1")
        paths["final_knn"] = sweep_dir / "final_knn.png"
        fig.savefig(paths["final_knn"], dpi=120, bbox_inches="tight")
    if any(r["curve"] for r in rows):
        fig = plot_setting_curves(rows, "kNN top-1")
        paths["curves"] = sweep_dir / "curves.png"
        fig.savefig(paths["curves"], dpi=120, bbox_inches="tight")
    return paths
