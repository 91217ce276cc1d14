"""An ordered queue of GPU measurements sized for short, lent GPU calls.

    PYTHONPATH=. python3 benchmarks/gpu_pack.py --budget-s 540 --out benchmarks/results \
        --data npz:.gpudata/cifar10.npz
    python benchmarks/gpu_pack.py --list                    # the queue and its estimates
    python benchmarks/gpu_pack.py --merge PATH/gpu.jsonl    # a call's records into OUT/gpu.jsonl
    python benchmarks/gpu_pack.py --tables                  # RESULTS.md tables from OUT/gpu.jsonl

GPU time comes as single calls of about ten minutes on a fresh machine, so the queue runs the
most valuable measurement first and writes each finished item at once to OUT/gpu.jsonl (and to
$OUT/gpu.jsonl, which a call cut off by its limit still returns). Items recorded as ok are
skipped, so the next call continues where this one stopped. An item is not started when its
estimate or an earlier attempt's duration says it will not fit the budget left; each runs as a
subprocess whose timeout is the budget left, and a failure is recorded and the queue goes on.

Long training runs are sliced with `--stop-after-epochs` into items that resume one run folder
(benchmarks/out/gpu_pack/RUN). That folder (its checkpoint is over 100 MB) cannot leave the
machine, so a run must finish within one call: its first slice starts only when all its slices
fit the budget left, and on a fresh machine an unfinished run starts over from its first slice.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import operator
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# `python3` on the lent machine is the interpreter running the pack; locally (tests) it is the venv's.
PYTHON = sys.executable or "python3"
RECORDS_NAME = "gpu.jsonl"
# The files holding tests marked gpu (`make test-gpu`); none imports papermill or widgets.
GPU_TEST_FILES = ["tests/test_gpu.py", "tests/test_augment.py", "tests/test_data.py"]
COMPILE_TESTS = "every_method_trains_on_cuda"  # the torch.compile tests of tests/test_gpu.py
RUNS = ROOT / "benchmarks" / "out" / "gpu_pack"  # git-ignored: run folders that slices resume
BEGIN = "<!-- gpu-pack:begin -->"
END = "<!-- gpu-pack:end -->"

# Estimates for an H200 until the pack has measured it: a MoCo-recipe epoch (ResNet-18 cifar
# stem, batch 512, symmetric) and the start of a process (torch, CUDA, 60k JPEG decodes).
# Once `moco_throughput` and `kmeans` are recorded, training estimates use their figures.
DEFAULT_EPOCH_S = 6.0
EVAL_OVERHEAD = 1.1  # kNN every 10 epochs and the epoch's bookkeeping on top of the steps
START_S = 30.0
SLICE_EPOCHS = 50  # a multiple of checkpoint_every (10), about 5 minutes at 5 s per epoch

Record = dict[str, Any]


def last_json(stdout: str, item: Item) -> dict[str, Any]:
    """The last line of stdout that is a JSON object: what every benchmark script prints."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON line in the output")


def pytest_counts(stdout: str, item: Item) -> dict[str, Any]:
    """passed / failed / skipped / ... counts from pytest's summary line."""
    for line in reversed(stdout.splitlines()):
        counts = re.findall(
            r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line
        )
        if counts:
            figures = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
            for number, word in counts:
                key = "errors" if word.startswith("error") else word
                figures[key] = figures.get(key, 0) + int(number)
            return figures
        if "no tests ran" in line:
            return {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    raise ValueError("no pytest summary line in the output")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file, [] when it is missing; a torn last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def rounded(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    return None if value is None else round(value, 4)


def run_figures(stdout: str, item: Item) -> dict[str, Any]:
    """A training run's kNN curve (backbone, head) and training time, from its metrics.jsonl."""
    assert item.slice is not None
    metrics = read_jsonl(item.slice.run_dir / "metrics.jsonl")
    if not metrics:
        raise ValueError(f"no metrics in {item.slice.run_dir}")
    evaluated = [r for r in metrics if "knn_top1" in r]
    figures: dict[str, Any] = {
        "run": item.slice.run,
        "epochs": item.slice.epochs,
        "epoch": metrics[-1]["epoch"],
        "train_s": round(sum(r.get("epoch_time_s", 0.0) for r in metrics), 1),
        "knn_curve": {
            str(r["epoch"]): [rounded(r, "knn_top1"), rounded(r, "knn_top1_head")]
            for r in evaluated
        },
    }
    if evaluated:
        last = evaluated[-1]
        for key in ("knn_top1", "knn_top1_head", "nmi", "false_negative_rate"):
            if key in last:
                figures[key] = rounded(last, key)
    return figures


@dataclass(frozen=True)
class Slice:
    """Epochs (start, stop] of training run `run` (`epochs` long), kept in `run_dir`."""

    run: str
    run_dir: Path
    start: int
    stop: int
    epochs: int


@dataclass
class Item:
    """One measurement: a command, its estimated seconds (or a function of the records so
    far), the kind of table it goes to, how to read its figures and the goals they meet."""

    name: str
    command: list[str]
    estimate_s: float | Callable[[list[Record]], float]
    kind: str = "other"
    read: Callable[[str, Item], dict[str, Any]] = last_json
    goals: dict[str, str] = field(default_factory=dict)  # figure -> "op number", e.g. ">= 0.6"
    slice: Slice | None = None  # a slice of a training run; the pack adds --stop-after-epochs

    def estimate(self, records: list[Record]) -> float:
        return self.estimate_s(records) if callable(self.estimate_s) else float(self.estimate_s)


# ---- running the queue ------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """Device name and torch version, without importing torch (no CUDA context in the pack)."""
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        name = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout
        device = name.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        device = f"cpu ({platform.processor() or platform.machine()})"
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return {"device": device, "torch": torch_version}


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch a run folder resumes from (0 when it has no checkpoint)."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0
    import torch  # only here: the pack itself never needs torch otherwise

    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"])


def ok_records(records: list[Record], name: str) -> list[Record]:
    return [r for r in records if r.get("item") == name and r.get("status") == "ok"]


def run_finished(records: list[Record], part: Slice) -> bool:
    return any(
        r.get("status") == "ok"
        and r.get("run") == part.run
        and r["figures"]["epoch"] >= part.epochs
        for r in records
    )


def is_done(item: Item, records: list[Record]) -> bool:
    """Recorded as ok; for a slice, also still present here (or its whole run finished)."""
    if item.slice is not None and run_finished(records, item.slice):
        return True
    if not ok_records(records, item.name):
        return False
    return item.slice is None or checkpoint_epoch(item.slice.run_dir) >= item.slice.stop


def same_command(record: Record, item: Item) -> bool:
    """An attempt ran this item's present command (interpreter aside); a slice's always counts,
    its command varies with where the run stands."""
    if item.slice is not None:
        return True
    return shlex.split(record.get("command", ""))[1:] == item.command[1:]


def need_s(item: Item, records: list[Record]) -> float:
    """Seconds to allow: the estimate, or the last attempt's duration when that was longer.
    An attempt of an older command of the item is not evidence about the present one."""
    tried = [
        r["duration_s"]
        for r in records
        if r.get("item") == item.name and "duration_s" in r and same_command(r, item)
    ]
    return max(item.estimate(records), tried[-1] if tried else 0.0)


def tail(stdout: str, stderr: str) -> str:
    """The end of both streams: pytest reports on stdout, a traceback ends stderr."""
    parts = [text.strip().splitlines()[-lines:] for text, lines in ((stdout, 10), (stderr, 20))]
    return "\n".join(line for part in parts for line in part)[-3000:]


def run_command(command: list[str], timeout: float, cwd: Path) -> tuple[str, float, str, str]:
    """Run one command in its own process group; (status, seconds, stdout, error tail)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # one killpg ends the item and anything it started
    )
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1.0))
        status = "ok" if proc.returncode == 0 else "failed"
        error = "" if status == "ok" else f"exit code {proc.returncode}\n{tail(stdout, stderr)}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        status, error = "failed", f"timed out after {timeout:.0f} s\n{tail(stdout, stderr)}"
    except BaseException:  # Ctrl-C, or SIGTERM (main makes it SystemExit): leave no orphans
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return status, time.monotonic() - start, stdout, error


def attempt(item: Item, command: list[str], timeout: float, cwd: Path) -> Record:
    """Run an item and read its figures: status, duration_s, figures and error."""
    status, seconds, stdout, error = run_command(command, timeout, cwd)
    result: Record = {"status": status, "duration_s": round(seconds, 1)}
    try:
        result["figures"] = item.read(stdout, item)
    except Exception as exc:  # figures are optional for a failed item, not for an ok one
        if status == "ok":
            result["status"], error = "failed", f"could not read figures: {exc}"
    if result["status"] != "ok":
        result["error"] = error
    return result


def run_wall_s(records: list[Record], part: Slice, at: int, seconds: float) -> float:
    """A sliced run's wall time so far: this slice plus the slices it resumed from."""
    chain = [
        r
        for r in records
        if r.get("status") == "ok" and r.get("run") == part.run and r["figures"]["epoch"] == at
    ]
    previous = chain[-1].get("run_wall_s", 0.0) if chain and at else 0.0
    return round(previous + seconds, 1)


def append(record: Record, paths: list[Path]) -> None:
    line = json.dumps(record) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line)


def run_pack(
    items: list[Item],
    budget_s: float,
    out_dir: str | Path,
    copy_dir: str | Path | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> list[Record]:
    """Run `items` in order within `budget_s` seconds; returns this call's records.

    Every record goes at once to OUT_DIR/gpu.jsonl and to COPY_DIR/gpu.jsonl (default $OUT,
    when set). Items already ok there are skipped; an item that does not fit the budget left
    is recorded as refused and a later, smaller one may still run.
    """
    start = time.monotonic()
    path = Path(out_dir) / RECORDS_NAME
    records = read_jsonl(path)
    paths = [path]
    copy_dir = copy_dir if copy_dir is not None else os.environ.get("OUT")
    if copy_dir and (Path(copy_dir) / RECORDS_NAME).resolve() != path.resolve():
        paths.append(Path(copy_dir) / RECORDS_NAME)
    info = env or environment()
    new: list[Record] = []
    refused_runs: set[str] = set()
    for index, item in enumerate(items):
        part = item.slice
        if is_done(item, records):
            print(f"[gpu_pack] {item.name}: recorded ok, skipped", flush=True)
            continue
        if part is not None and part.run in refused_runs:
            continue  # its run was refused a moment ago: one refusal per run is enough
        left = budget_s - (time.monotonic() - start)
        need = need_s(item, records)
        if part is not None:  # the whole rest of its run must fit: the folder dies with the call
            rest = [i for i in items[index:] if i.slice is not None and i.slice.run == part.run]
            need = sum(need_s(i, records) for i in rest)
        command = list(item.command)
        record: Record = {"item": item.name, "kind": item.kind, **info}
        record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if part is not None:
            record["run"] = part.run
            at = checkpoint_epoch(part.run_dir)
            command += ["--stop-after-epochs", str(max(part.stop - at, 0))]
        record.update(command=shlex.join(command), estimate_s=round(need, 1))
        if item.goals:
            record["goals"] = item.goals
        if need > left:
            record.update(status="refused", reason=f"needs ~{need:.0f} s, {left:.0f} s left")
        elif part is not None and at < part.start:
            reason = f"run folder at epoch {at}, the slice starts at {part.start}"
            record.update(status="refused", reason=reason)
        else:
            print(f"[gpu_pack] {item.name}: start ({left:.0f} s left)", flush=True)
            record.update(attempt(item, command, left, cwd))
            if part is not None:
                record["run_wall_s"] = run_wall_s(records, part, at, record["duration_s"])
        if record["status"] == "refused" and part is not None:
            refused_runs.add(part.run)
        said = record.get("reason") or record.get("error", "").strip().split("\n")[-1]
        took = f" in {record['duration_s']:.0f} s" if "duration_s" in record else ""
        print(f"[gpu_pack] {item.name}: {record['status']}{took} {said}", flush=True)
        append(record, paths)
        records.append(record)
        new.append(record)
    return new


# ---- the default queue ------------------------------------------------------------------------


def latest_figure(records: list[Record], name: str, key: str) -> float | None:
    values = [r["figures"][key] for r in ok_records(records, name) if key in r.get("figures", {})]
    return values[-1] if values else None


def slice_estimate(config: str, epochs: int) -> Callable[[list[Record]], float]:
    """Seconds for `epochs` epochs of `config` plus a start, from the measured step rates."""

    def estimate(records: list[Record]) -> float:
        epoch_s = latest_figure(records, "moco_throughput", "cifar10_epoch_s")
        epoch_s = epoch_s * EVAL_OVERHEAD if epoch_s else DEFAULT_EPOCH_S
        if config.startswith("interclr"):
            epoch_s *= latest_figure(records, "kmeans", "interclr_over_moco") or 1.25
        return START_S + epochs * epoch_s

    return estimate


def training_items(
    run: str,
    config: str,
    epochs: int,
    data: str,
    sets: tuple[str, ...] = (),
    goals: dict[str, str] | None = None,
    slice_epochs: int = SLICE_EPOCHS,
    runs: Path = RUNS,
) -> list[Item]:
    """`interlab train` of a named config, sliced into items that resume benchmarks/out/gpu_pack/RUN."""
    run_dir = runs / run
    command = [PYTHON, "-m", "interlab", "train", "--config", config, "--data", data]
    command += ["--epochs", str(epochs), "--device", "cuda", "--no-progress"]
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    command += ["--out", str(shown)]
    for assignment in sets:
        command += ["--set", assignment]
    items = []
    for start in range(0, epochs, slice_epochs):
        stop = min(start + slice_epochs, epochs)
        name = run if slice_epochs >= epochs else f"{run}@{stop}"
        part = Slice(run, run_dir, start, stop, epochs)
        estimate = slice_estimate(config, stop - start)
        items.append(Item(name, command, estimate, "training", run_figures, goals or {}, part))
    return items


def study_variants() -> dict[str, dict[str, Any]]:
    """The InterCLR study variants of benchmarks/interclr_ablations.py (one definition)."""
    spec = importlib.util.spec_from_file_location(
        "interclr_ablations", ROOT / "benchmarks" / "interclr_ablations.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


def default_items(data: str = "npz:.gpudata/cifar10.npz") -> list[Item]:
    """The GPU queue, most valuable first; only modules the lent machine has (no papermill)."""
    on_data = ["--data", data, "--device", "cuda"]
    # -v names the test a time-out cut (the record keeps the output's tail); --timeout fails a
    # stuck test with its stack instead of letting it spend the call (first H200 call: a cold
    # torch.compile test ran until the budget was gone, 2026-11-30).
    pytest = [PYTHON, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"]
    tests = [*pytest, "--timeout=120", "-k", f"not {COMPILE_TESTS}", *GPU_TEST_FILES]
    compile_tests = [*pytest, "--timeout=240", "-k", COMPILE_TESTS, "tests/test_gpu.py"]
    no_failures = {"failed": "== 0", "errors": "== 0"}
    augment = [PYTHON, "benchmarks/augment_speed.py", "--device", "cuda", "--batch", "512"]
    augment += ["--iters", "200"]
    stream = [PYTHON, "benchmarks/stream_speed.py", "--device", "cuda", "--images", "2048"]
    stream += ["--batch", "256", "--workers", "8"]
    methods = ["moco", "interclr", "cyclecontrast", "dino", "scfs"]
    step_time = [PYTHON, "benchmarks/step_time.py", *on_data, "--configs"]
    step_time += [f"{method}_cifar10" for method in methods]
    kmeans_goals = {
        "kmeans_50k_x128_k391_s": "< 1",
        "kmeans_1.28M_x128_k10k_s": "< 2",
        "interclr_over_moco": "<= 1.25",
    }
    items = [
        Item("gpu_tests", tests, 60, "tests", pytest_counts, no_failures),
        Item("augment_speed", augment, 20, "speed", goals={"images_per_s": ">= 300000"}),
        Item(
            "moco_throughput",
            [PYTHON, "benchmarks/throughput.py", *on_data],
            45,
            "speed",
            goals={"ratio": ">= 0.6", "cifar10_epoch_s": "<= 3"},
        ),
        Item(
            "kmeans",
            [PYTHON, "benchmarks/interclr_overhead.py", *on_data],
            75,
            "kmeans",
            goals=kmeans_goals,
        ),
        Item("step_time", step_time, 100, "step"),
        Item("stream_speed", stream, 90, "speed"),  # shards: nvJPEG + crops vs DataLoader
        # the ImageNet configs' real step at their own batch: memory and time per GPU
        Item("config_cost", [PYTHON, "benchmarks/config_cost.py", "--measure", "cuda"], 90),
        # every method under bf16 + channels_last + compile: minutes of cold compiling, so it
        # runs after the measurements it would otherwise crowd out
        Item("gpu_compile_tests", compile_tests, 360, "tests", pytest_counts, no_failures),
    ]
    published = {"knn_top1_head": ">= 0.853"}  # the MoCo CIFAR-10 demo after 200 epochs
    items += training_items("moco_100ep", "moco_cifar10", 100, data)
    items += training_items("moco_200ep", "moco_cifar10", 200, data, goals=published)
    items += training_items("interclr_100ep", "interclr_cifar10", 100, data)
    for variant, changes in study_variants().items():
        if variant in ("moco_v2", "interclr_default"):  # moco_100ep and interclr_100ep
            continue
        sets = tuple(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in changes.items()
        )
        items += training_items(f"interclr_100ep_{variant}", "interclr_cifar10", 100, data, sets)
    return items


# ---- tables for RESULTS.md --------------------------------------------------------------------

TITLES = {
    "tests": "GPU tests",
    "speed": "Speeds",
    "kmeans": "k-means and the InterCLR step",
    "step": "Step time of each method relative to MoCo v2",
    "training": "Training runs: kNN top-1 and wall time",
}
CONTEXT = {"batch", "size", "iters", "threads", "blur_p", "warmup", "steps"}
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
OPERATORS["=="] = operator.eq


def goal_met(value: Any, goal: str) -> str:
    op, number = goal.split()
    if not isinstance(value, (int, float)):
        return "-"
    return "yes" if OPERATORS[op](value, float(number)) else "**no**"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def knn(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def outcome(record: Record) -> str:
    """Why a record has no figures: refused, or the last line of its error."""
    if record["status"] == "refused":
        return f"not run: {record['reason']}"
    lines = record.get("error", "").strip().splitlines()
    return "failed: " + (lines[-1][:120] if lines else "?").replace("|", "/")


def provenance(record: Record) -> str:
    took = f", {record['duration_s']:.0f} s" if "duration_s" in record else ""
    when = f"{record['device']}, torch {record['torch']}, {record['date'][:10]}{took}"
    return f"- `{record['item']}` ({when}): `{record['command']}`"


def figures_table(latest: list[Record]) -> list[str]:
    lines = ["| item | figure | value | goal | met |", "|---|---|---|---|---|"]
    for record in latest:
        figures, goals = record.get("figures", {}), record.get("goals", {})
        if record["status"] != "ok":
            lines.append(f"| {record['item']} | {outcome(record)} | | | |")
        if not figures:
            continue
        shown = [*goals, *(k for k in figures if k not in goals and k not in CONTEXT)]
        for key in shown:
            value = figures.get(key)
            if key in goals or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                goal = goals.get(key, "")
                met = goal_met(value, goal) if goal else ""
                lines.append(f"| {record['item']} | {key} | {fmt(value)} | {goal} | {met} |")
    return lines


def training_tables(records: list[Record]) -> list[str]:
    """One row per run (its furthest ok slice), then the kNN curves side by side."""
    runs: dict[str, list[Record]] = {}
    for record in records:
        if record.get("kind") == "training":
            runs.setdefault(record["run"], []).append(record)
    lines = [
        "| run | status | epoch | kNN backbone | kNN head | goal | train s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best: dict[str, Record] = {}
    for run, attempts in runs.items():
        ok = [r for r in attempts if r["status"] == "ok"]
        if ok:
            best[run] = max(reversed(ok), key=lambda r: r["figures"]["epoch"])
            f, last = best[run]["figures"], attempts[-1]
            status = "done" if f["epoch"] >= f["epochs"] else "partial"
            if status == "partial" and last["status"] != "ok":
                status += f" ({outcome(last)})"
            goals = best[run].get("goals", {})
            goal = "; ".join(f"{k} {g}: {goal_met(f.get(k), g)}" for k, g in goals.items())
            row = [status, f"{f['epoch']} of {f['epochs']}", knn(f.get("knn_top1"))]
            row += [knn(f.get("knn_top1_head")), goal, fmt(f["train_s"])]
            row.append(fmt(best[run].get("run_wall_s")))
        else:
            row = [outcome(attempts[-1]), "-", "-", "-", "", "-", "-"]
        lines.append(f"| {run} | " + " | ".join(row) + " |")
    if best:
        epochs = sorted({int(e) for r in best.values() for e in r["figures"]["knn_curve"]})
        lines += ["", "kNN top-1 per evaluated epoch (backbone / head):", ""]
        lines.append("| epoch | " + " | ".join(best) + " |")
        lines.append("|---" * (len(best) + 1) + "|")
        for epoch in epochs:
            cells = []
            for record in best.values():
                pair = record["figures"]["knn_curve"].get(str(epoch))
                cells.append(" / ".join(knn(v) for v in pair) if pair else "")
            lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def tables(records: list[Record], source: str = "benchmarks/results/gpu.jsonl") -> str:
    """The markdown that goes between the markers of RESULTS.md, one table per kind of item."""
    head = f"Generated by `python benchmarks/gpu_pack.py --tables` from `{source}`; do not edit."
    if not records:
        return f"{head}\n\n**Not measured yet**: `{source}` holds no record. See README, GPU.\n"
    latest: dict[str, Record] = {}
    for record in records:  # the last record of each item, unless an earlier one was ok
        if record["status"] == "ok" or latest.get(record["item"], {}).get("status") != "ok":
            latest[record["item"]] = record
    kinds = list(dict.fromkeys([*TITLES, *(r["kind"] for r in latest.values())]))
    out = [head]
    for kind in kinds:
        chosen = [r for r in latest.values() if r["kind"] == kind]
        if not chosen:
            continue
        out += ["", f"### {TITLES.get(kind, kind)}", ""]
        if kind == "training":
            out += training_tables(records)
            firsts: dict[str, Record] = {}  # one command per run: its first slice's
            for record in chosen:
                firsts.setdefault(record["run"], record)
            out += ["", *(provenance(r) for r in firsts.values())]
        else:
            out += figures_table(chosen)
            out += ["", *(provenance(r) for r in chosen)]
    return "\n".join(out) + "\n"


def write_tables(records_path: Path, results_path: Path) -> None:
    """Rewrite the part of RESULTS.md between the gpu-pack markers."""
    text = results_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{results_path} lacks the markers {BEGIN} and {END}")
    try:
        source = str(records_path.resolve().relative_to(ROOT))
    except ValueError:
        source = str(records_path)
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    body = tables(read_jsonl(records_path), source)
    results_path.write_text(f"{before}{BEGIN}\n{body}{END}{after}")


def merge(source: Path, target: Path) -> int:
    """Append the records of `source` (a call's $OUT/gpu.jsonl) not yet in `target`."""
    have = {json.dumps(r, sort_keys=True) for r in read_jsonl(target)}
    fresh = [r for r in read_jsonl(source) if json.dumps(r, sort_keys=True) not in have]
    for record in fresh:
        append(record, [target])
    return len(fresh)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for this call")
    parser.add_argument("--out", default="benchmarks/results", help="folder of gpu.jsonl")
    parser.add_argument("--data", default="npz:.gpudata/cifar10.npz")
    parser.add_argument("--only", nargs="+", help="item or run names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the queue and exit")
    parser.add_argument("--tables", action="store_true", help="rewrite RESULTS.md's GPU tables")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--merge", metavar="JSONL", help="append a call's records to OUT")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a running item is ended too
    records_path = Path(args.out) / RECORDS_NAME
    if args.merge:
        print(f"{merge(Path(args.merge), records_path)} new records in {records_path}")
        return
    if args.tables:
        write_tables(records_path, Path(args.results))
        return
    items = default_items(args.data)
    if args.only:
        items = [i for i in items if i.name in args.only or (i.slice and i.slice.run in args.only)]
    if args.list:
        records = read_jsonl(records_path)
        for item in items:
            print(f"{item.name:34} ~{item.estimate(records):5.0f} s  {shlex.join(item.command)}")
        return
    run_pack(items, args.budget_s, args.out)


if __name__ == "__main__":
    main()
