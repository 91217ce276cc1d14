"""One writer per run folder: the trainer's lock, a stale lock taken over, the sweep's lock and
its children's parent-death signal (a `kill -9` of a sweep leaves no notebook training on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interlab.child_processes import die_with_parent
from interlab.config import build_config
from interlab.lab.sweep import SWEEP_LOCK
from interlab.run_lock import LOCK_NAME, RunFolderLocked, RunLock, lock_holder
from interlab.train import Trainer


def small_config(out: Path, data: str):
    keys = {"method": "moco", "data": data, "device": "cpu", "backbone": "convnet",
            "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1, "out": str(out)}  # fmt: skip
    return build_config(keys)


def test_a_second_trainer_on_a_locked_folder_stops_naming_the_holder(tmp_path, tiny_npz):
    out = tmp_path / "run"
    with RunLock(out):  # the first writer (another process would hold it the same way)
        trainer = Trainer(small_config(out, f"npz:{tiny_npz}"), progress=False)
        with pytest.raises(RunFolderLocked, match=rf"pid {os.getpid()} on "):
            trainer.fit()
        assert not (out / "metrics.jsonl").exists()  # refused before writing anything
    assert lock_holder(out) is None
    Trainer(small_config(out, f"npz:{tiny_npz}"), progress=False).fit()  # free again
    assert lock_holder(out) is None  # released when fit returns


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "x"}))
    assert lock_holder(tmp_path) is None  # a file without a live flock is free
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["pid"] == os.getpid()


def test_another_process_holding_the_lock_is_reported(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from interlab.run_lock import RunLock; l = RunLock({str(tmp_path)!r}).acquire();"
         "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path)["pid"] == holder.pid
        with pytest.raises(RunFolderLocked, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None  # the kernel released it with the process


def test_a_run_another_sweep_holds_is_reported_running_not_started(tmp_path, monkeypatch):
    from interlab.lab.grids import SweepRun
    from interlab.lab.sweep import RunExecutor

    executor = RunExecutor(tmp_path / "nb.ipynb", None)
    started = []
    monkeypatch.setattr(executor, "_papermill", lambda *a: started.append(a) or 0)
    run = SweepRun(name="a=1-seed0", setting="a=1", seed=0, parameters={"a": 1})
    with RunLock(tmp_path / run.name, SWEEP_LOCK):
        status = executor.execute(run, tmp_path / run.name, None)
    assert status["state"] == "running" and "pid" in status["error"] and started == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_children_die_with_their_parent_even_by_kill_9(tmp_path):
    """A parent starts a child with the hook and is killed with SIGKILL: the child, which
    would sleep a minute, is gone within seconds (no orphan trains on)."""
    parent_code = (
        "import subprocess, sys, time\n"
        "from interlab.child_processes import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True, preexec_fn=die_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)
    assert die_with_parent() is not None


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_of_a_sweep_leaves_no_writer_and_a_rerun_finishes_cleanly(tmp_path, tiny_npz):
    """The bug found by hand: a sweep killed with `kill -9` while its second run trained left
    that run training as an orphan, and an immediate rerun wrote the same folder, leaving
    epochs 2, 1, 2, 3, 3, ... in metrics.jsonl. Now the orphan dies with the sweep, and the
    rerun finishes every run with each epoch once, in order."""
    import yaml

    epochs = 24  # long enough (~20 s a run) that an orphan would still be training below
    spec = {
        "notebook": str(Path(__file__).parents[1] / "notebooks" / "train.ipynb"),
        "base": {"method": "moco", "dataset": f"npz:{tiny_npz}", "epochs": epochs,
                 "batch_size": 64, "device": "cpu",
                 "overrides": {"backbone": "convnet", "cifar_stem": False, "queue_size": 256,
                               "knn_k": 20, "eval_every": 0, "checkpoint_every": 1}},
        "grid": {"seed": [0, 1, 2]},
    }  # fmt: skip
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "interlab",
        "sweep",
        str(grid),
        "--out",
        str(out),
        "--no-report",
    ]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    deadline = time.monotonic() + 600
    while second is None and time.monotonic() < deadline:  # wait for run 2's first epoch
        done = [p for p in out.glob("*/status.json")]
        logs = sorted(out.glob("*/run/metrics.jsonl"))
        if len(done) == 1 and any(p.parent.parent != done[0].parent for p in logs):
            second = next(p.parent for p in logs if p.parent.parent != done[0].parent)
        time.sleep(0.2)
    assert second is not None, "the sweep never reached its second run"
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 5  # the kernel's parent poller notices within a second
    while lock_holder(second) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lock_holder(second) is None  # the orphan died with its sweep
    killed_at = len((second / "metrics.jsonl").read_text().splitlines())
    assert killed_at < epochs  # it really was cut mid-run
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for metrics in sorted(out.glob("*/run/metrics.jsonl")):
        epochs_logged = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
        assert epochs_logged == list(range(1, epochs + 1)), (metrics, epochs_logged)
    assert len(list(out.glob("*/run/metrics.jsonl"))) == 3


def test_sweep_status_reads_each_runs_state_without_touching_it(tmp_path, capsys):
    import yaml

    from interlab.cli import main as cli_main
    from interlab.lab.sweep import write_status

    runs = [{"name": n, "setting": n, "seed": 0, "parameters": {}} for n in "abcd"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"notebook": "x", "runs": runs}))
    for name, state in (("a", "done"), ("b", "failed")):
        (tmp_path / name).mkdir()
        write_status(
            tmp_path / name, {"run": name, "state": state, "error": "boom" if name == "b" else ""}
        )
    with RunLock(tmp_path / "c", SWEEP_LOCK):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        assert cli_main(["sweep", "--status", str(tmp_path)]) == 0
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["a", "done"]
    assert lines[1].split() == ["b", "failed", "boom"]
    assert lines[2].split()[:3] == ["c", "running", "pid"] and str(os.getpid()) in lines[2]
    assert lines[3].split() == ["d", "pending"]
    assert lines[4] == "1 done, 1 running, 1 failed, 1 pending"
    assert cli_main(["sweep", "--status", str(tmp_path / "nope")]) == 2


def test_the_report_names_a_running_run_and_a_pending_one(tmp_path):
    import yaml

    from interlab.lab.report import write_report
    from interlab.lab.sweep import write_status

    names = ("a=1-seed0", "a=2-seed0", "a=3-seed0")
    runs = [{"name": n, "setting": n[:3], "seed": 0, "parameters": {}} for n in names]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"notebook": "x", "runs": runs}))
    for name in names:
        (tmp_path / name).mkdir()
    write_status(tmp_path / "a=1-seed0", {"run": "a=1-seed0", "setting": "a=1", "seed": 0,
                                          "state": "failed", "error": "boom"})  # fmt: skip
    with RunLock(tmp_path / "a=2-seed0", SWEEP_LOCK):
        paths = write_report(tmp_path)
    text = Path(paths["markdown"]).read_text()
    assert f"a=2-seed0: running (pid {os.getpid()}" in text
    assert "a=3-seed0: pending" in text and "a=1-seed0: boom" in text
