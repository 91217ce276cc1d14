"""Sweeps on a real single-node SLURM (`make test-slurm`, marker `slurm`).

The fixture starts Debian's slurm-wlm with munge as ../shared/reference/slurm.md describes
(root only) and stops what it started, by pid. Without `sbatch` the tests skip, unless
INTERLAB_SLURM_REQUIRED=1 (CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from interlab.lab.grids import sweep_from_spec
from interlab.lab.slurm import ClusterSettings, cluster_settings, submit_sweep
from interlab.lab.sweep import sweep_states
from tests.test_sweep import toy_notebook, toy_spec  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slurm
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
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


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
    Path("/etc/slurm/slurm.conf").write_text(_config(socket.gethostname().split(".")[0]))
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


def test_a_cancelled_run_is_recorded_and_resumes_to_the_uninterrupted_result(
    slurm_cluster, tmp_path, tiny_npz
):
    """Two runs that train alike; one is cancelled with scancel mid-run, recorded failed with
    SLURM's state, then resubmitted: its trainer resumes from the checkpoint and ends with the
    uninterrupted run's per-epoch losses and kNN."""
    spec = {
        "notebook": str(TRAIN_NOTEBOOK),
        "base": {"method": "moco", "dataset": f"npz:{tiny_npz}", "epochs": 12, "batch_size": 64,
                 "device": "cpu",
                 "overrides": {"backbone": "convnet", "cifar_stem": False, "queue_size": 256,
                               "knn_k": 20, "eval_every": 4, "checkpoint_every": 1}},
        "grid": {"linear_probe": [False, True]},  # a label only: training is the same
    }  # fmt: skip
    sweep = sweep_from_spec(spec)
    out = tmp_path / "sweep"
    settings = ClusterSettings(cpus_per_run=1, time_min=20)
    submit_sweep(sweep, out, settings, wait=False)
    victim = out / sweep.runs[1].name
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        metrics = victim / "run" / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    job_id = json.loads((victim / "slurm.json").read_text())["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    status_file = victim / "status.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the job records its run's failure as it is killed
        if status_file.exists() and json.loads(status_file.read_text())["state"] == "failed":
            break
        time.sleep(0.5)
    recorded = json.loads(status_file.read_text())
    assert recorded["state"] == "failed" and recorded["error"]
    first = submit_sweep(sweep, out, settings, poll_s=1, timeout_s=900)  # resubmits, waits
    assert [s["state"] for s in first] == ["done", "done"], first
    curves = []
    for run in sweep.runs:
        lines = (out / run.name / "run" / "metrics.jsonl").read_text().splitlines()
        curves.append(
            [(r["epoch"], round(r["loss"], 5), r.get("knn_top1")) for r in map(json.loads, lines)]
        )
    assert [epoch for epoch, _, _ in curves[1]] == list(range(1, 13))
    assert curves[0] == curves[1]
