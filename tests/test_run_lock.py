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

from interlab.config import build_config
from interlab.lab.sweep import SWEEP_LOCK, die_with_parent
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
        "from interlab.lab.sweep import die_with_parent\n"
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
