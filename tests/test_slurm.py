"""Sweeps on SLURM: how runs become array tasks (CPU, no SLURM needed, in the fast suite)
and sweeps on a real single-node SLURM (`make test-slurm`, marker `slurm`).

The fixture starts Debian's slurm-wlm with munge as ../shared/reference/slurm.md describes
(root only) and stops what it started, by pid. Without `sbatch` the slurm tests skip, unless
INTERLAB_SLURM_REQUIRED=1 (CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from interlab.lab import slurm
from interlab.lab.grids import sweep_from_spec
from interlab.lab.slurm import (
    ClusterSettings,
    active_runs,
    array_jobs,
    cluster_settings,
    record_slurm_states,
    slurm_parameters,
    submit_sweep,
)
from interlab.lab.sweep import RunExecutor, read_status, sweep_states
from tests.test_sweep import (  # noqa: F401 (the fixtures)
    fake_notebooks,
    most_at_once,
    toy_notebook,
    toy_spec,
)

SLURM = Path("/tmp/interlab-slurm")
TRAIN_NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "train.ipynb"


def _config(host: str) -> str:
    memory = max(1024, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024)
    return f"""ClusterName=local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={SLURM}/state
SlurmdSpoolDir={SLURM}/spool
SlurmctldLogFile={SLURM}/log/slurmctld.log
SlurmdLogFile={SLURM}/log/slurmd.log
SlurmctldPidFile={SLURM}/slurmctld.pid
SlurmdPidFile={SLURM}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _fake_gpus() -> str:
    """Two stand-in GPU devices, so SLURM schedules `--gpus-per-node 2` on this CPU node:
    character devices like /dev/null where mknod is allowed, else plain files (slurmd then
    logs a complaint but still counts them)."""
    for index in range(2):
        device = SLURM / f"gpu{index}"
        if not device.exists():
            try:
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except OSError:
                device.touch()
    return f"{SLURM}/gpu[0-1]"


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("sbatch") is None or os.geteuid() != 0:
        if os.environ.get("INTERLAB_SLURM_REQUIRED") == "1":
            pytest.fail("INTERLAB_SLURM_REQUIRED=1 but sbatch is missing (or not root)")
        pytest.skip("needs SLURM (apt-get install slurm-wlm munge) and root")
    started: list[int] = []
    for folder in ("state", "spool", "log"):
        (SLURM / folder).mkdir(parents=True, exist_ok=True)
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        key = Path("/etc/munge/munge.key")
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        subprocess.run(["chown", "-R", "munge:munge", "/etc/munge", "/run/munge",
                        "/var/log/munge", "/var/lib/munge"], check=True)  # fmt: skip
        key.chmod(0o400)
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
        started += [p for p in [_pid(Path("/run/munge/munged.pid"))] if p]
    host = socket.gethostname().split(".")[0]
    Path("/etc/slurm/slurm.conf").write_text(_config(host))
    Path("/etc/slurm/gres.conf").write_text(f"Name=gpu File={_fake_gpus()}\n")
    for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
        subprocess.run([f"/usr/sbin/{daemon}"], check=True)
        deadline = time.monotonic() + 10
        while _pid(SLURM / pid_file) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        started.append(_pid(SLURM / pid_file))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        idle = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if "idle" in idle.stdout:
            break
        time.sleep(1)
    yield
    for pid in reversed([p for p in started if p]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.mark.slurm
def test_a_sweep_runs_as_an_array_job_and_records_each_run(slurm_cluster, toy_notebook, tmp_path):  # noqa: F811
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3]})
    spec["executor"] = {"name": "slurm", "cpus_per_run": 1, "time_min": 10}
    sweep = sweep_from_spec(spec)
    settings = cluster_settings(sweep.executor)
    statuses = submit_sweep(sweep, tmp_path / "sweep", settings, poll_s=1, timeout_s=600)
    assert [s["state"] for s in statuses] == ["done", "done"], statuses
    jobs = [
        json.loads((tmp_path / "sweep" / s["run"] / "slurm.json").read_text()) for s in statuses
    ]
    assert len({j["job_id"].split("_")[0] for j in jobs}) == 1  # one array job
    for status in statuses:
        run_dir = tmp_path / "sweep" / status["run"]
        assert (run_dir / "executed.ipynb").exists() and (run_dir / "metrics.json").exists()
    assert [state for _, state, _ in sweep_states(tmp_path / "sweep")] == ["done", "done"]
    again = submit_sweep(sweep, tmp_path / "sweep", settings, poll_s=1, timeout_s=60)
    assert [s["state"] for s in again] == ["done", "done"]  # finished runs are not resubmitted
    assert len((tmp_path / "executions.txt").read_text().splitlines()) == 2


def _training_spec(data: str, **base: object) -> dict:
    return {
        "notebook": str(TRAIN_NOTEBOOK),
        "base": {"method": "moco", "dataset": data, "epochs": 12, "batch_size": 64,
                 "device": "cpu", "linear_probe": False,
                 "overrides": {"backbone": "convnet", "cifar_stem": False, "queue_size": 256,
                               "knn_k": 20, "eval_every": 4, "checkpoint_every": 1}, **base},
    }  # fmt: skip


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "run" / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "slurm.json").read_text())["job_id"]


@pytest.mark.slurm
def test_cancelled_and_preempted_runs_resume_to_the_uninterrupted_result(
    slurm_cluster, tmp_path, tiny_npz
):
    """Three runs that train alike. One is cancelled with scancel mid-run: it is recorded
    failed with SLURM's state (CANCELLED), resubmitted, and resumes from its checkpoint. One
    gets the time-out signal (USR2) mid-run: submitit's checkpoint hook requeues it and it
    resumes by itself. Both end with the uninterrupted run's per-epoch losses and kNN."""
    spec = _training_spec(f"npz:{tiny_npz}")
    spec["runs"] = [{"name": "reference"}, {"name": "cancelled"}, {"name": "requeued"}]
    sweep = sweep_from_spec(spec)
    out = tmp_path / "sweep"
    settings = ClusterSettings(cpus_per_run=1, time_min=20)
    submit_sweep(sweep, out, settings, wait=False)
    cancelled, requeued = (out / run.name for run in sweep.runs[1:])
    _wait_until(lambda: _epochs_done(cancelled) >= 2, 600, "the cancelled run's epoch 2")
    subprocess.run(["scancel", _job_id(cancelled)], check=True)
    _wait_until(lambda: (read_status(cancelled) or {}).get("state") == "failed", 120, "its failure")
    record_slurm_states(out, sweep.runs)
    recorded = read_status(cancelled)
    assert recorded["slurm_state"] == "CANCELLED", recorded
    assert recorded["error"].startswith("SLURM CANCELLED: ")
    assert [s for n, s, _ in sweep_states(out) if n == cancelled.name] == ["failed"]

    _wait_until(lambda: _epochs_done(requeued) >= 2, 600, "the requeued run's epoch 2")
    subprocess.run(["scancel", "--signal=USR2", _job_id(requeued)], check=True)  # as a time-out
    _wait_until(lambda: _signalled(out, requeued), 60, "the signal")

    final = submit_sweep(sweep, out, settings, poll_s=1, timeout_s=900)  # resubmits, waits
    assert [s["state"] for s in final] == ["done", "done", "done"], final
    assert "slurm_state" not in read_status(requeued)  # it never failed
    resumed = re.search(
        r"resuming \S+ after epoch (\d+)", (requeued / "executed.ipynb").read_text()
    )
    assert resumed and 2 <= int(resumed.group(1)) < 12  # requeued: resumed, not started over
    curves = []
    for run in sweep.runs:
        lines = (out / run.name / "run" / "metrics.jsonl").read_text().splitlines()
        curves.append(
            [(r["epoch"], round(r["loss"], 5), r.get("knn_top1")) for r in map(json.loads, lines)]
        )
    assert [epoch for epoch, _, _ in curves[1]] == list(range(1, 13))
    assert curves[0] == curves[1] == curves[2]


def _signalled(out: Path, run_dir: Path) -> bool:
    """submitit caught the signal in the run's job (and requeues it)."""
    logs = (out / ".slurm").glob(f"{_job_id(run_dir)}_*_log.err")
    return any("Caught signal SIGUSR2" in log.read_text(errors="replace") for log in logs)


@pytest.mark.slurm
def test_a_run_with_two_gpus_trains_under_torchrun_inside_its_job(
    slurm_cluster, tmp_path, tiny_npz
):
    """--gpus-per-run 2 (the fixture's stand-in GPUs): the job's notebook trains with two DDP
    workers (gloo on this CPU node), half the steps per epoch each, and evaluates."""
    spec = {**_training_spec(f"npz:{tiny_npz}", epochs=2), "runs": [{"name": "ddp"}]}
    sweep = sweep_from_spec(spec)
    settings = cluster_settings({"gpus_per_run": 2, "cpus_per_run": 2, "time_min": 10})
    [status] = submit_sweep(sweep, tmp_path / "sweep", settings, poll_s=1, timeout_s=600)
    assert status["state"] == "done", status
    assert status["parameters"]["processes"] == 2
    run_dir = tmp_path / "sweep" / status["run"]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert [r["step"] for r in summary["per_epoch"]] == [2, 4]  # 256 images / (2 x 64)
    assert 0 < summary["knn_top1"] <= 1
    with pytest.raises(ValueError, match="sets processes=1 but gpus_per_run is 2"):
        submit_sweep(
            sweep_from_spec({**spec, "runs": [{"name": "one", "processes": 1}]}),
            tmp_path / "x",
            settings,
        )


@pytest.mark.slurm
def test_runs_share_a_gpu_inside_one_array_task(slurm_cluster, toy_notebook, tmp_path):  # noqa: F811
    """--runs-per-gpu 2 on the fixture's stand-in GPUs: four runs, two array tasks, each
    task running its two notebooks side by side and recording so."""
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3, 4, 5]})
    spec["base"]["sleep"] = 3.0
    spec["executor"] = {"name": "slurm", "gpus_per_run": 1, "runs_per_gpu": 2,
                        "cpus_per_run": 1, "time_min": 10}  # fmt: skip
    sweep = sweep_from_spec(spec)
    statuses = submit_sweep(
        sweep, tmp_path / "sweep", cluster_settings(sweep.executor), poll_s=1, timeout_s=600
    )
    assert [s["state"] for s in statuses] == ["done"] * 4, statuses
    jobs = [_job_id(tmp_path / "sweep" / s["run"]) for s in statuses]
    assert jobs[0] == jobs[1] != jobs[2] == jobs[3]  # two tasks of one array job
    assert len({job.split("_")[0] for job in jobs}) == 1
    assert [s["runs_on_device"] for s in statuses] == [2, 2, 2, 2]
    assert all(s["gpus"] for s in statuses)  # SLURM's GPU of the task
    assert most_at_once(statuses[:2]) == 2 and most_at_once(statuses[2:]) == 2


def test_runs_per_gpu_groups_runs_into_tasks_with_their_resources(toy_notebook, tmp_path):  # noqa: F811
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3, 4, 5, 6, 7, 8]}))
    settings = cluster_settings(
        {"name": "slurm", "gpus_per_run": 1, "runs_per_gpu": 3, "cpus_per_run": 2,
         "mem_gb": 8, "max_parallel": 2, "partition": "gpu"},
    )  # fmt: skip
    tasks = array_jobs(sweep, sweep.runs, tmp_path / "out", settings)
    assert [[run.name for run, _ in task.runs] for task in tasks] == [
        ["a=1-seed0", "a=3-seed0", "a=4-seed0"],
        ["a=5-seed0", "a=6-seed0", "a=7-seed0"],
        ["a=8-seed0"],
    ]
    assert tasks[2].runs[0][1] == str(tmp_path / "out" / "a=8-seed0")
    assert all(task.threads == 2 for task in tasks)  # each run keeps its CPUs' threads
    assert slurm_parameters(settings) == {
        "timeout_min": 60, "cpus_per_task": 6, "mem_gb": 24, "gpus_per_node": 1,
        "slurm_partition": "gpu", "slurm_array_parallelism": 2,
        "slurm_additional_parameters": {},
    }  # fmt: skip
    alone = cluster_settings({"gpus_per_run": 1, "cpus_per_run": 2, "mem_gb": 8})
    assert [len(task.runs) for task in array_jobs(sweep, sweep.runs, tmp_path, alone)] == [1] * 7
    assert slurm_parameters(alone)["cpus_per_task"] == 2 and slurm_parameters(alone)["mem_gb"] == 8


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"runs_per_gpu": 0, "gpus_per_run": 1}, "runs_per_gpu must be an int >= 1; got 0"),
        ({"runs_per_gpu": 2}, "needs gpus_per_run 1; got 0"),
        ({"runs_per_gpu": 2, "gpus_per_run": 2}, "needs gpus_per_run 1; got 2"),
        ({"runs_per_device": 2}, "unknown executor setting\\(s\\) \\['runs_per_device'\\]"),
    ],
)
def test_bad_runs_per_gpu_is_refused(section, message):
    with pytest.raises(ValueError, match=message):
        cluster_settings(section)


def test_a_task_runs_its_runs_side_by_side_and_skips_finished_ones(
    toy_notebook,  # noqa: F811
    tmp_path,
    fake_notebooks,  # noqa: F811
):
    """What one array task does, called here without SLURM (papermill stood in for): its
    three runs execute at once, each records the device it shared, a failing one is recorded
    while the others finish, and the requeued task runs only what is unfinished."""
    fake_notebooks.fail = True
    fake_notebooks.together, fake_notebooks.expected = 3, 3
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 2, 3]}))
    settings = cluster_settings({"gpus_per_run": 1, "runs_per_gpu": 3, "cpus_per_run": 1})
    (task,) = array_jobs(sweep, sweep.runs, tmp_path / "out", settings)
    statuses = task()
    assert [s["state"] for s in statuses] == ["done", "failed", "done"], statuses
    assert [(s["device"], s["runs_on_device"]) for s in statuses] == [("cpu", 3)] * 3
    assert fake_notebooks.most == {"cpu": 3} and most_at_once(statuses) == 3
    fake_notebooks.fail, fake_notebooks.together = False, None
    (again,) = task()  # requeued: the finished runs are skipped
    assert again["run"] == "a=2-seed0" and again["state"] == "done"
    assert again["runs_on_device"] == 1
    assert fake_notebooks.executed[3:] == ["a=2-seed0"]


def test_a_run_s_crash_in_a_task_fails_the_task_with_its_error(
    toy_notebook,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """An exception in one of a task's run threads (not a notebook's failure, which is
    recorded) must fail the task, so SLURM records FAILED with the traceback."""
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3]}))
    settings = cluster_settings({"gpus_per_run": 1, "runs_per_gpu": 2, "cpus_per_run": 1})
    (task,) = array_jobs(sweep, sweep.runs, tmp_path / "out", settings)

    def crash(self, run, run_dir, device, placement):
        raise OSError(f"disk full while starting {run.name}")

    monkeypatch.setattr(RunExecutor, "execute", crash)
    with pytest.raises(OSError, match="disk full while starting a=1-seed0"):
        task()


def test_runs_sharing_a_task_are_active_while_its_job_is(tmp_path, monkeypatch):
    """One squeue line per array task covers every run that task holds."""
    run_dirs = [tmp_path / name for name in ("a", "b", "c")]
    for run_dir, job in zip(run_dirs, ("7_0", "7_0", "7_1"), strict=True):
        run_dir.mkdir()
        (run_dir / "slurm.json").write_text(json.dumps({"job_id": job}))

    def squeue(command, **kwargs):
        assert command[:2] == ["squeue", "-h"] and "7_0,7_1" in command
        return subprocess.CompletedProcess(command, 0, "7_0 RUNNING\n7_1 COMPLETED\n", "")

    monkeypatch.setattr(slurm.subprocess, "run", squeue)
    assert active_runs(run_dirs) == {run_dirs[0], run_dirs[1]}
