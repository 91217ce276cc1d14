"""An ordered queue of GPU measurements sized for short GPU allocations.

    PYTHONPATH=. python3 benchmarks/gpu_pack.py --budget-s 540 --out benchmarks/results \
        --data npz:.gpudata/cifar10.npz [--copy-dir DIR]
    python benchmarks/gpu_pack.py --list                    # the queue and its estimates
    python benchmarks/gpu_pack.py --merge DIR/gpu.jsonl     # a call's records (and logs) into RESULTS_DIR
    python benchmarks/gpu_pack.py --tables                  # RESULTS.md tables from RESULTS_DIR/gpu.jsonl

GPU time comes as single commands of about ten minutes on a fresh machine, so the queue runs
the most valuable measurement first and writes each finished item at once to RESULTS_DIR/gpu.jsonl
and to COPY_DIR/gpu.jsonl (`--copy-dir`, default $GPU_PACK_COPY_DIR): a folder that the
machine hands back even when the command is cut off. Every item's whole output (stdout and
stderr as they come) goes to one log file per call, RESULTS_DIR/logs/gpu_pack_STAMP.log and
COPY_DIR/gpu_pack_STAMP.log, under a header per item; each record names it. Items recorded as
ok are skipped, so the next call continues where this one stopped. An item is not started
when its estimate or an earlier attempt's duration says it will not fit the budget left; each
runs as a subprocess whose timeout is the budget left, and a failure (a missing script
included) is recorded and the queue goes on.

Long training runs are sliced with `--stop-after-epochs` into items that resume one run folder
(benchmarks/scratch/gpu_pack/RUN). That folder (its checkpoint is over 100 MB) cannot leave the
machine, so a run must finish within one call: its first slice starts only when all its slices
fit the budget left, and on a fresh machine an unfinished run starts over from its first slice.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
# `python3` on the GPU machine is the interpreter running the pack; locally (tests) it is the venv's.
PYTHON = sys.executable or "python3"
RECORDS_NAME = "gpu.jsonl"
LOGS_DIR = "logs"  # RESULTS_DIR/logs/: one log file per call, beside the records
COPY_DIR_VARIABLE = "GPU_PACK_COPY_DIR"
# Characters of one item's output a log keeps: its start and its end, the middle of a larger
# output is cut. Once a call's log holds CALL_LOG_CHARS, later items keep MIN_ITEM_LOG_CHARS.
ITEM_LOG_CHARS = 1 << 20
CALL_LOG_CHARS = 6 << 20
MIN_ITEM_LOG_CHARS = 64 << 10
# Tests marked gpu live in tests/test_gpu*.py and these (`make test-gpu` globs the same);
# none imports papermill or widgets.
OTHER_GPU_TEST_FILES = ["tests/test_augment.py", "tests/test_data.py"]
COMPILE_TESTS = "every_method_trains_on_cuda"  # the torch.compile tests of tests/test_gpu.py
RUNS = ROOT / "benchmarks" / "scratch" / "gpu_pack"  # git-ignored: run folders that slices resume
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


def smoke_counts(stdout: str, item: Item) -> dict[str, Any]:
    """gpu_smoke's JSON line as counts (ok, failed, skipped), the failures' lines kept."""
    line = last_json(stdout, item)
    failures, skipped = line.get("failed", []), line.get("skipped", [])
    return {
        "combinations": line.get("combinations"),
        "ok": line.get("ok"),
        "failed": len(failures),
        "skipped": len(skipped),
        "seconds": line.get("seconds"),
        "failures": failures,
    }


GROUP_FIGURES = ("speedup_vs_sequential", "aggregate_images_per_s", "slowdown", "wall_s")


def largest_n_speedup(stdout: str, item: Item) -> dict[str, Any]:
    """concurrent_runs' JSON line with each group's figures flat (`KEY_nN`, `mps_KEY_nN` for
    a mode other than the default) and `speedup_vs_sequential` at the largest N, the goal's
    figure. Reads `results: {mode: [{runs: N, ...}]}`, `speedup_vs_sequential_nN` keys or a
    `speedup_vs_sequential: {N: value}` dict, whichever the line has."""
    figures = last_json(stdout, item)
    found = figures.get("speedup_vs_sequential")
    per_n: dict[int, Any] = {int(n): v for n, v in found.items()} if isinstance(found, dict) else {}
    for key, value in list(figures.items()):
        matched = re.fullmatch(r"speedup_vs_sequential_n(\d+)", key)
        if matched:
            per_n[int(matched.group(1))] = value
    results = figures.get("results")
    for mode, groups in results.items() if isinstance(results, dict) else []:
        prefix = "" if mode == "default" else f"{mode}_"
        for group in groups if isinstance(groups, list) else []:
            n = group.get("runs")
            for key in GROUP_FIGURES:
                if isinstance(group.get(key), (int, float)):
                    figures[f"{prefix}{key}_n{n}"] = group[key]
            if mode == "default" and isinstance(n, int):
                per_n[n] = group.get("speedup_vs_sequential")
    if per_n:
        largest = max(per_n)
        figures["speedup_vs_sequential"], figures["largest_n"] = per_n[largest], largest
    return figures


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
    if item.slice.study is not None and metrics[-1]["epoch"] >= item.slice.epochs:
        figures["study_record"] = study_record(item.slice)
    return figures


def study_record(part: Slice) -> dict[str, Any] | None:
    """The finished run's record for its study (merged into benchmarks/results/studies/)."""
    from interlab.lab.study import train_run_record

    assert part.study is not None
    study, arm, seed = part.study
    machine = environment()  # the device's name from nvidia-smi: no CUDA context here
    return train_run_record(study, arm, seed, part.run_dir, machine["device"], machine["torch"])


@dataclass(frozen=True)
class Slice:
    """Epochs (start, stop] of training run `run` (`epochs` long), kept in `run_dir`."""

    run: str
    run_dir: Path
    start: int
    stop: int
    epochs: int
    study: tuple[str, str, int] | None = None  # (study, arm, seed) of a study's run


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


class CallLog:
    """One log file per call holding every item's whole output under a header, written as
    it comes to each of `paths` (RESULTS_DIR/logs/NAME and COPY_DIR/NAME): a call cut off by its
    limit still hands back what its items printed. Opened at the first item that runs."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.name = paths[0].name
        self.files: list[IO[str]] = []
        self.written = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            if not self.files:
                for path in self.paths:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.files.append(open(path, "a", encoding="utf-8"))  # noqa: SIM115
            for f in self.files:
                f.write(text)
                f.flush()
            self.written += len(text)

    def item(self, name: str, command: list[str], left: float) -> ItemOutput:
        """Start an item's section; its output then goes through the returned ItemOutput."""
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.write(f"\n======== {name} ({when}, {left:.0f} s left) ========\n")
        self.write(f"$ {shlex.join(command)}\n")
        room = max(MIN_ITEM_LOG_CHARS, min(ITEM_LOG_CHARS, CALL_LOG_CHARS - self.written))
        return ItemOutput(self, name, head=room // 4, tail=room - room // 4)

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []


class ItemOutput:
    """An item's lines as they arrive: the first `head` characters straight to the log, then a
    rolling window of the last `tail`, written when the item ends after a note of the cut."""

    def __init__(self, log: CallLog, name: str, head: int, tail: int) -> None:
        self.log, self.name = log, name
        self.head_left, self.tail_limit = head, tail
        self.tail: deque[str] = deque()
        self.tail_chars = 0
        self.cut = 0
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            if self.head_left > 0:
                self.head_left -= len(line)
                self.log.write(line)
                return
            line = line[-self.tail_limit :]
            self.tail.append(line)
            self.tail_chars += len(line)
            while self.tail_chars > self.tail_limit:
                dropped = self.tail.popleft()
                self.tail_chars -= len(dropped)
                self.cut += len(dropped)

    def finish(self, summary: str) -> None:
        with self.lock:
            if self.cut:
                self.log.write(f"[... {self.cut} characters of output cut here ...]\n")
            self.log.write("".join(self.tail))
            self.tail.clear()
            self.log.write(f"-------- {self.name}: {summary} --------\n")


def pump(stream: IO[str], lines: list[str], output: ItemOutput | None) -> None:
    """Read one of a child's pipes to its end, keeping its lines and logging them."""
    for line in stream:
        lines.append(line)
        if output is not None:
            output.add(line)
    stream.close()


def run_command(
    command: list[str], timeout: float, cwd: Path, output: ItemOutput | None = None
) -> tuple[str, float, str, str]:
    """Run one command in its own process group; (status, seconds, stdout, error tail).

    Both pipes are read as the child writes (unbuffered), so `output` gets stdout and stderr
    interleaved as they happened, and a killed item's last words are not lost in a buffer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # one killpg ends the item and anything it started
    )
    out_lines: list[str] = []
    err_lines: list[str] = []
    pumps = [
        threading.Thread(target=pump, args=(pipe, lines, output), daemon=True)
        for pipe, lines in ((proc.stdout, out_lines), (proc.stderr, err_lines))
    ]
    for thread in pumps:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        timed_out = True
    except BaseException:  # Ctrl-C, or SIGTERM (main makes it SystemExit): leave no orphans
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    for thread in pumps:
        thread.join(timeout=10)  # a grandchild that left the group may still hold a pipe
    stdout, stderr = "".join(out_lines), "".join(err_lines)
    if timed_out:
        status, error = "failed", f"timed out after {timeout:.0f} s\n{tail(stdout, stderr)}"
    elif proc.returncode == 0:
        status, error = "ok", ""
    else:
        status, error = "failed", f"exit code {proc.returncode}\n{tail(stdout, stderr)}"
    return status, time.monotonic() - start, stdout, error


def missing_scripts(command: list[str], cwd: Path) -> list[str]:
    """The benchmark scripts a command names that this checkout does not have."""
    return [
        part
        for part in command[1:]
        if part.startswith("benchmarks/") and part.endswith(".py") and not (cwd / part).exists()
    ]


def attempt(
    item: Item, command: list[str], timeout: float, cwd: Path, output: ItemOutput | None = None
) -> Record:
    """Run an item and read its figures: status, duration_s, figures and error."""
    missing = missing_scripts(command, cwd)
    if missing:
        return {"status": "failed", "error": f"not run: {', '.join(missing)} does not exist"}
    status, seconds, stdout, error = run_command(command, timeout, cwd, output)
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


def default_copy_dir() -> str | None:
    """$GPU_PACK_COPY_DIR: where each record and the call's log are also written (a folder
    the GPU machine hands back)."""
    return os.environ.get(COPY_DIR_VARIABLE) or None


def call_log(out_dir: Path, copy_dir: Path | None) -> CallLog:
    """This call's log: RESULTS_DIR/logs/gpu_pack_STAMP.log and, when there is one, COPY_DIR/ the
    same name (one file per call there: such folders return a few files at most)."""
    name = f"gpu_pack_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.log"
    paths = [out_dir / LOGS_DIR / name]
    if copy_dir is not None and copy_dir.resolve() != out_dir.resolve():
        paths.append(copy_dir / name)
    return CallLog(paths)


def begin_record(item: Item, info: dict[str, str]) -> tuple[Record, list[str], int]:
    """An item's record so far, the command to run and (a slice) the epoch its run folder is
    at: a slice's command stops at the slice's last epoch, wherever its folder stands."""
    command = list(item.command)
    record: Record = {"item": item.name, "kind": item.kind, **info}
    record["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    at = 0
    if item.slice is not None:
        record["run"] = item.slice.run
        at = checkpoint_epoch(item.slice.run_dir)
        command += ["--stop-after-epochs", str(max(item.slice.stop - at, 0))]
    return record, command, at


def refusal(
    item: Item, index: int, items: list[Item], records: list[Record], left: float, at: int
) -> tuple[float, str | None]:
    """(seconds needed, why the item cannot start now or None). A slice needs the whole rest
    of its run: the run folder dies with the call."""
    need = need_s(item, records)
    part = item.slice
    if part is not None:
        rest = [i for i in items[index:] if i.slice is not None and i.slice.run == part.run]
        need = sum(need_s(i, records) for i in rest)
    if need > left:
        return need, f"needs ~{need:.0f} s, {left:.0f} s left"
    if part is not None and at < part.start:
        return need, f"run folder at epoch {at}, the slice starts at {part.start}"
    return need, None


def run_item(item: Item, command: list[str], left: float, cwd: Path, log: CallLog) -> Record:
    """Run one item with its output in the call's log; its record's outcome fields."""
    print(f"[gpu_pack] {item.name}: start ({left:.0f} s left)", flush=True)
    output = log.item(item.name, command, left)
    try:
        result = attempt(item, command, left, cwd, output)
    except BaseException:  # the pack itself is stopped: keep what the item printed
        output.finish("interrupted: the pack was stopped")
        raise
    took = f" in {result['duration_s']:.1f} s" if "duration_s" in result else ""
    why = result.get("error", "").split("\n")[0]  # the rest of its tail is just above
    output.finish(f"{result['status']}{took} {why}".strip())
    return {**result, "log": f"{LOGS_DIR}/{log.name}"}


def run_pack(
    items: list[Item],
    budget_s: float,
    out_dir: str | Path,
    copy_dir: str | Path | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> list[Record]:
    """Run `items` in order within `budget_s` seconds; returns this call's records.

    Every record goes at once to RESULTS_DIR/gpu.jsonl and to COPY_DIR/gpu.jsonl (default:
    `default_copy_dir()`), every item's output to the call's log in both. Items already ok
    there are skipped; an item that does not fit the budget left is recorded as refused and a
    later, smaller one may still run.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    path = out_dir / RECORDS_NAME
    records = read_jsonl(path)
    paths = [path]
    copy_dir = copy_dir if copy_dir is not None else default_copy_dir()
    copy = Path(copy_dir) if copy_dir else None
    if copy is not None and (copy / RECORDS_NAME).resolve() != path.resolve():
        paths.append(copy / RECORDS_NAME)
    log = call_log(out_dir, copy)
    info = env or environment()
    new: list[Record] = []
    refused_runs: set[str] = set()
    try:
        for index, item in enumerate(items):
            part = item.slice
            if is_done(item, records):
                print(f"[gpu_pack] {item.name}: recorded ok, skipped", flush=True)
                continue
            if part is not None and part.run in refused_runs:
                continue  # its run was refused a moment ago: one refusal per run is enough
            left = budget_s - (time.monotonic() - start)
            record, command, at = begin_record(item, info)
            need, reason = refusal(item, index, items, records, left, at)
            record.update(command=shlex.join(command), estimate_s=round(need, 1))
            if item.goals:
                record["goals"] = item.goals
            if reason is not None:
                record.update(status="refused", reason=reason)
            else:
                record.update(run_item(item, command, left, cwd, log))
                if part is not None:
                    took = record.get("duration_s", 0.0)
                    record["run_wall_s"] = run_wall_s(records, part, at, took)
            if record["status"] == "refused" and part is not None:
                refused_runs.add(part.run)
            said = record.get("reason") or record.get("error", "").strip().split("\n")[-1]
            took = f" in {record['duration_s']:.0f} s" if "duration_s" in record else ""
            print(f"[gpu_pack] {item.name}: {record['status']}{took} {said}", flush=True)
            append(record, paths)
            records.append(record)
            new.append(record)
    finally:
        log.close()
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
    """`interlab train` of a named config, sliced into items that resume benchmarks/scratch/gpu_pack/RUN."""
    run_dir = runs / run
    command = [PYTHON, "-m", "interlab", "train", "--config", config, "--data", data]
    command += ["--epochs", str(epochs), "--device", "cuda", "--no-progress"]
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    command += ["--out", str(shown)]
    for assignment in sets:
        command += ["--set", assignment]
    return sliced(run, run_dir, command, epochs, config, goals=goals, slice_epochs=slice_epochs)


def study_items(study: str, data: str, runs: Path = RUNS) -> list[Item]:
    """Every run of a GPU study (benchmarks/studies/STUDY.yaml: arms x seeds) as sliced
    `interlab train` runs, seeds outermost so that a first allocation covers every arm once.
    A run's last slice carries its study record, which `--merge` files under
    benchmarks/results/studies/. The study file is read as YAML only (the GPU machine has no
    notebook tools): base.overrides and each arm's overrides become `--set` pairs."""
    import yaml

    spec = yaml.safe_load((ROOT / "benchmarks" / "studies" / f"{study}.yaml").read_text())
    base = spec["base"]
    items = []
    for seed in spec["seeds"]:
        for arm in spec["runs"]:
            overrides = {**base.get("overrides", {}), **arm.get("overrides", {})}
            method = arm.get("method", base["method"])
            command = [PYTHON, "-m", "interlab", "train", "--method", method, "--data", data]
            command += ["--epochs", str(base["epochs"]), "--seed", str(seed), "--device", "cuda"]
            command += ["--batch-size", str(base["batch_size"]), "--no-progress"]
            run = f"{study}/{arm['name']}-seed{seed}"
            run_dir = runs / run
            shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
            command += ["--out", str(shown)]
            for key, value in overrides.items():
                command += [
                    "--set",
                    f"{key}={value if isinstance(value, str) else json.dumps(value)}",
                ]
            items += sliced(
                run, run_dir, command, base["epochs"], method, (study, arm["name"], seed)
            )
    return items


def sliced(
    run: str,
    run_dir: Path,
    command: list[str],
    epochs: int,
    method: str,
    study: tuple[str, str, int] | None = None,
    goals: dict[str, str] | None = None,
    slice_epochs: int = SLICE_EPOCHS,
) -> list[Item]:
    """One training run as items of `slice_epochs` epochs each, resuming its folder;
    `method` (or a config named after it) picks the per-epoch estimate."""
    items = []
    for start in range(0, epochs, slice_epochs):
        stop = min(start + slice_epochs, epochs)
        name = run if slice_epochs >= epochs else f"{run}@{stop}"
        part = Slice(run, run_dir, start, stop, epochs, study)
        estimate = slice_estimate(method, stop - start)
        items.append(Item(name, command, estimate, "training", run_figures, goals or {}, part))
    return items


def gpu_test_files(root: Path = ROOT) -> list[str]:
    """The files holding tests marked gpu: tests/test_gpu*.py (found when the queue is made,
    so a new one joins by its name) and OTHER_GPU_TEST_FILES."""
    found = sorted(str(p.relative_to(root)) for p in (root / "tests").glob("test_gpu*.py"))
    return [*found, *OTHER_GPU_TEST_FILES]


def measurement_items(data: str) -> list[Item]:
    """Everything but the training runs, most valuable first: correctness, then the speeds
    with goals, then the rest; the compile tests last (minutes of cold compiling)."""
    on_data = ["--data", data, "--device", "cuda"]
    # -v names every test in the log; --timeout fails a stuck test with its stack instead of
    # letting it spend the call (first H200 call: a cold torch.compile test ran until the
    # budget was gone, 2026-11-30).
    pytest = [PYTHON, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"]
    tests = [*pytest, "--timeout=120", "-k", f"not {COMPILE_TESTS}", *gpu_test_files()]
    compile_tests = [*pytest, "--timeout=240", "-k", COMPILE_TESTS, "tests/test_gpu.py"]
    no_failures = {"failed": "== 0", "errors": "== 0"}
    throughput = [PYTHON, "benchmarks/throughput.py", *on_data]
    fast_moco = {"ratio": ">= 0.6", "cifar10_epoch_s": "<= 2.5"}
    augment = [PYTHON, "benchmarks/augment_speed.py", "--device", "cuda", "--batch", "512"]
    augment += ["--iters", "200"]
    concurrent = [PYTHON, "benchmarks/concurrent_runs.py", *on_data, "--runs", "1", "2", "4"]
    concurrent += ["8", "--epochs", "3", "--mps", "--timeout-s", "150"]
    compile_time = [PYTHON, "benchmarks/compile_time.py", *on_data, "--configs"]
    compile_goals = {"cold_compile_s": "<= 120", "recompiles_after_warmup": "== 0"}
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
    smoke = [PYTHON, "benchmarks/gpu_smoke.py", *on_data]
    return [
        Item("gpu_tests", tests, 90, "tests", pytest_counts, no_failures),
        # every method, a few steps on CUDA from npz, folder, shards and frames shards
        Item("gpu_smoke", smoke, 120, "tests", smoke_counts, {"failed": "== 0"}),
        Item("moco_throughput", throughput, 45, "speed", goals=fast_moco),
        Item("moco_throughput_graph", [*throughput, "--cuda-graph"], 60, "speed", goals=fast_moco),
        Item("augment_speed", augment, 20, "speed", goals={"images_per_s": ">= 300000"}),
        Item(
            "concurrent_runs",
            concurrent,
            400,  # 390 s measured on an H200 with --mps (2026-12-04), 230 s without
            "concurrency",
            largest_n_speedup,
            {"speedup_vs_sequential": ">= 1.5"},  # at the largest N
        ),
        Item("compile_time", [*compile_time, "moco_cifar10"], 200, "compile", goals=compile_goals),
        Item("step_time", step_time, 100, "step"),
        # the ImageNet configs' real step at their own batch: memory and time per GPU
        Item("config_cost", [PYTHON, "benchmarks/config_cost.py", "--measure", "cuda"], 90),
        Item(
            "kmeans",
            [PYTHON, "benchmarks/interclr_overhead.py", *on_data],
            75,
            "kmeans",
            goals=kmeans_goals,
        ),
        Item("stream_speed", stream, 90, "speed"),  # shards: nvJPEG + crops vs DataLoader
        # cold and warm compile and the compiled step rate of the other methods, one item each
        *(
            Item(
                f"compile_time_{method}",
                [*compile_time, f"{method}_cifar10"],
                240,
                "compile",
                goals={"recompiles_after_warmup": "== 0"},
            )
            for method in methods[1:]
        ),
        # every method under bf16 + channels_last + compile: minutes of cold compiling, so it
        # runs after the measurements it would otherwise crowd out
        Item("gpu_compile_tests", compile_tests, 360, "tests", pytest_counts, no_failures),
    ]


def default_items(data: str = "npz:.gpudata/cifar10.npz") -> list[Item]:
    """The GPU queue, most valuable first; only modules the GPU machine has (no papermill)."""
    items = measurement_items(data)
    published = {"knn_top1_head": ">= 0.853"}  # the MoCo CIFAR-10 demo after 200 epochs
    items += training_items("moco_100ep", "moco_cifar10", 100, data)
    items += training_items("moco_200ep", "moco_cifar10", 200, data, goals=published)
    items += study_items("interclr_gpu", data)
    return items


# ---- tables for RESULTS.md --------------------------------------------------------------------

TITLES = {
    "tests": "GPU tests",
    "speed": "Speeds",
    "kmeans": "k-means and the InterCLR step",
    "step": "Step time of each method relative to MoCo v2",
    "concurrency": "Several runs on one GPU",
    "compile": "torch.compile",
    "other": "Other measurements",
    "training": "Training runs: kNN top-1 and wall time",
}
CONTEXT = {"batch", "size", "iters", "threads", "blur_p", "warmup", "steps", "cpu_count"}
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
    return f"- `{record['item']}` ({when}): `{shown_command(record['command'])}`"


def shown_command(command: str) -> str:
    """A record's command as a reader reruns it: `python3` for the GPU machine's interpreter
    path, without the pack's scratch run folder (`--out`, see RUNS)."""
    parts = shlex.split(command)
    if parts and Path(parts[0]).name.startswith("python"):
        parts[0] = "python3"
    if "--out" in parts:
        at = parts.index("--out")
        del parts[at : at + 2]
    return shlex.join(parts)


def is_lines(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def present_goals() -> dict[str, dict[str, str]]:
    """The queue's goals now, by item: a record is judged by them, not by those it was run
    with (a goal the issue tightened applies to the last measurement too)."""
    return {item.name: item.goals for item in measurement_items("npz:DATA")}


def figures_table(latest: list[Record], goals_now: dict[str, dict[str, str]]) -> list[str]:
    lines = ["| item | figure | value | goal | met |", "|---|---|---|---|---|"]
    for record in latest:
        figures = record.get("figures", {})
        goals = goals_now.get(record["item"], record.get("goals", {}))
        if record["status"] != "ok":
            lines.append(f"| {record['item']} | {outcome(record)} | | | |")
        if not figures:
            continue
        shown = [*goals, *(k for k in figures if k not in goals and k not in CONTEXT)]
        for key in shown:
            value = figures.get(key)
            if is_lines(value) and value:  # e.g. gpu_smoke's failed combinations
                text = "; ".join(value).replace("|", "/")
                lines.append(f"| {record['item']} | {key} | {text[:600]} | | |")
            elif key in goals or (isinstance(value, (int, float)) and not isinstance(value, bool)):
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
    head += " Goals are the queue's present ones."
    if not records:
        return f"{head}\n\n**Not measured yet**: `{source}` holds no record. See README, GPU.\n"
    latest: dict[str, Record] = {}
    for record in records:  # the last record of each item, unless an earlier one was ok
        if record["status"] == "ok" or latest.get(record["item"], {}).get("status") != "ok":
            latest[record["item"]] = record
    kinds = list(dict.fromkeys([*TITLES, *(r["kind"] for r in latest.values())]))
    goals_now = present_goals()
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
            out += figures_table(chosen, goals_now)
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
    """Append the records of `source` (a call's COPY_DIR/gpu.jsonl) not yet in `target`."""
    have = {json.dumps(r, sort_keys=True) for r in read_jsonl(target)}
    fresh = [r for r in read_jsonl(source) if json.dumps(r, sort_keys=True) not in have]
    for record in fresh:
        append(record, [target])
    return len(fresh)


def merge_study_records(source: Path, studies: Path = ROOT / "benchmarks/results/studies") -> dict:
    """File the study records that finished runs in `source` carry; {study: new records}."""
    from interlab.lab.study import append_records

    by_study: dict[str, list[dict[str, Any]]] = {}
    for record in read_jsonl(source):
        if record.get("status") != "ok":  # a slice that failed after its last epoch's line
            continue
        study_record_ = record.get("figures", {}).get("study_record")
        if study_record_:
            by_study.setdefault(study_record_["study"], []).append(study_record_)
    return {
        study: append_records(studies / f"{study}.jsonl", records)
        for study, records in by_study.items()
    }


def merge_logs(source: Path, target: Path) -> list[Path]:
    """Copy the logs that `source`'s records name (found beside it, or under its logs/) to
    `target`'s logs/, where those records say they are; the copies made."""
    copied = []
    for name in dict.fromkeys(r["log"] for r in read_jsonl(source) if r.get("log")):
        destination = target.parent / name
        found = [p for p in (source.parent / Path(name).name, source.parent / name) if p.exists()]
        if destination.exists() or not found:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], destination)
        copied.append(destination)
    return copied


def list_queue(items: list[Item], records: list[Record], cwd: Path = ROOT) -> list[str]:
    """One line per item: name, estimate, command, and a script this checkout lacks."""
    lines = []
    for item in items:
        missing = missing_scripts(item.command, cwd)
        note = f"  (missing: {', '.join(missing)})" if missing else ""
        line = f"{item.name:34} ~{item.estimate(records):5.0f} s  {shlex.join(item.command)}"
        lines.append(line + note)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for this call")
    parser.add_argument("--out", default="benchmarks/results", help="folder of gpu.jsonl")
    parser.add_argument(
        "--copy-dir",
        default=default_copy_dir(),
        help=f"also write the records and the call's log here (default ${COPY_DIR_VARIABLE})",
    )
    parser.add_argument("--data", default="npz:.gpudata/cifar10.npz")
    parser.add_argument("--only", nargs="+", help="item or run names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the queue and exit")
    parser.add_argument("--tables", action="store_true", help="rewrite RESULTS.md's GPU tables")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument(
        "--merge", metavar="JSONL", help="append a call's records to RESULTS_DIR (--out)"
    )
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a running item is ended too
    from interlab.lab.provenance import code_version

    code_version()  # the code this call's runs start on (study records name it)
    records_path = Path(args.out) / RECORDS_NAME
    if args.merge:
        source = Path(args.merge)
        if not source.exists():
            parser.error(f"--merge: {source} does not exist")
        print(f"{merge(source, records_path)} new records in {records_path}")
        for study, count in merge_study_records(source).items():
            print(f"{count} new records in benchmarks/results/studies/{study}.jsonl")
        for copied in merge_logs(source, records_path):
            print(f"log {copied}")
        return
    if args.tables:
        write_tables(records_path, Path(args.results))
        return
    items = default_items(args.data)
    if args.only:
        known = {i.name for i in items} | {i.slice.run for i in items if i.slice}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"--only: no item or run named {', '.join(unknown)} (see --list)")
        items = [i for i in items if i.name in args.only or (i.slice and i.slice.run in args.only)]
    if args.list:
        print("\n".join(list_queue(items, read_jsonl(records_path))))
        return
    run_pack(items, args.budget_s, args.out, copy_dir=args.copy_dir or "")


if __name__ == "__main__":
    main()
