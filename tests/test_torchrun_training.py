"""A notebook run with `processes` > 1 trains under torchrun (two gloo workers on the CPU),
then evaluates here from the checkpoint; a failing launch names the workers' error, and a
killed launcher leaves no worker training on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interlab.lab.experiment import check_training_run, experiment_config, run_experiment
from interlab.lab.torchrun_training import torchrun_command, worker_environment
from interlab.run_lock import lock_holder

OVERRIDES = {"backbone": "convnet", "cifar_stem": False, "queue_size": 192, "knn_k": 20,
             "eval_every": 1, "checkpoint_every": 1, "log_every": 2}  # fmt: skip


@pytest.mark.slow  # starts torchrun and two workers: 8 s
def test_two_processes_train_as_two_ddp_ranks_and_evaluate_here(tmp_path, tiny_npz, capsys):
    config = experiment_config("moco", f"npz:{tiny_npz}", 1, 32, "cpu", 0, tmp_path, OVERRIDES)
    summary = run_experiment(config, tmp_path, linear=False, processes=2)
    # 256 images, batch 32 per rank: 8 steps on one process, 4 on each of two ranks
    assert [r["step"] for r in summary["per_epoch"]] == [4]
    assert 0.1 < summary["knn_top1"] <= 1 and summary["knn_top1"] == summary["final"]["knn_top1"]
    assert json.loads((tmp_path / "metrics.json").read_text())["knn_top1"] == summary["knn_top1"]
    assert lock_holder(tmp_path / "run") is None  # the workers released the run folder
    assert "epoch 1" in capsys.readouterr().out  # the workers' output was relayed here


@pytest.mark.slow
def test_a_failing_launch_raises_with_the_workers_last_output(tmp_path, tiny_npz):
    config = experiment_config(
        "moco", f"npz:{tmp_path / 'missing.npz'}", 1, 32, "cpu", 0, tmp_path, OVERRIDES
    )
    with pytest.raises(RuntimeError, match=r"torchrun \(2 processes\) failed.*missing\.npz"):
        run_experiment(config, tmp_path, linear=False, processes=2)


def test_processes_is_checked_before_anything_runs():
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="processes must be an int >= 1"):
            check_training_run({"method": "moco", "processes": bad})
    check_training_run({"method": "moco", "processes": 4})


def test_workers_get_a_share_of_the_cores_and_die_with_their_launcher():
    env = worker_environment(2)
    cores = len(os.sched_getaffinity(0))
    assert env["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert env["INTERLAB_DIE_WITH_PARENT"] == "1"
    command = torchrun_command(Path("c.yaml"), 4, progress=False)
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                           "-m", "interlab", "train", "--config", "c.yaml", "--no-progress"]  # fmt: skip


def _pids_training_in(folder: Path) -> list[int]:
    """Processes whose command line names `folder` (the launcher and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and str(folder) in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_kill_9_of_the_launcher_leaves_no_worker(tmp_path, tiny_npz):
    """The notebook's process is killed mid-training: torchrun and both workers die with it
    and the run folder's lock is free for the rerun."""
    launcher = (
        "import sys\n"
        "from interlab.lab.experiment import experiment_config, run_experiment\n"
        f"config = experiment_config('moco', 'npz:{tiny_npz}', 200, 32, 'cpu', 0, "
        f"sys.argv[1], {OVERRIDES!r})\n"
        "run_experiment(config, sys.argv[1], linear=False, processes=2)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", launcher, str(tmp_path)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metrics.exists(), "training never started"
    workers = [p for p in _pids_training_in(tmp_path) if p != process.pid]
    assert len(workers) >= 3, (
        workers
    )  # torchrun and its two workers (their command line names the run)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    # a killed process leaves /proc's command line before the kernel closes its files (the
    # flock): wait for both
    while time.monotonic() < deadline and (
        _pids_training_in(tmp_path) or lock_holder(tmp_path / "run") is not None
    ):
        time.sleep(0.2)
    survivors = {
        p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in _pids_training_in(tmp_path)
    }
    assert survivors == {}
    assert lock_holder(tmp_path / "run") is None
