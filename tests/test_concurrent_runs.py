"""benchmarks/concurrent_runs.py: its arithmetic on made-up runs, its refusals, and one tiny
real measurement on the CPU (N = 1, 2 convnet runs of two steps)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "concurrent_runs.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("concurrent_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def made_up_run(wall_s: float, epoch_s: float, images: int = 1000) -> dict:
    """Three epochs: a first one 2 s slower (warm-up), then two at `epoch_s`."""
    return {"wall_s": wall_s, "returncode": 0, "epochs": 3, "mean_epoch_s": epoch_s + 2 / 3,
            "steady_epoch_s": epoch_s, "images": images,
            "training_images_per_s": images / (3 * epoch_s + 2)}  # fmt: skip


def test_speedup_and_slowdown_against_the_lone_run(bench):
    groups = [
        bench.summarise_group([made_up_run(30.0, 5.0)], 30.0),
        bench.summarise_group([made_up_run(38.0, 6.0), made_up_run(40.0, 7.0)], 40.0),
        bench.summarise_group([made_up_run(70.0, 12.0)] * 4, 80.0),
    ]
    bench.compare(groups)
    lone, two, four = groups
    assert lone["speedup_vs_sequential"] == 1.0 and lone["slowdown"] == 1.0
    assert two["speedup_vs_sequential"] == 1.5  # 2 x 30 s in a row vs 40 s side by side
    assert [run["slowdown"] for run in two["per_run"]] == [1.2, 1.4]
    assert two["steady_epoch_s"] == 6.5 and two["slowdown"] == 1.3
    assert two["mean_epoch_s"] == pytest.approx(6.5 + 2 / 3, abs=1e-3)
    assert two["aggregate_images_per_s"] == 50.0  # 2000 images in 40 s
    assert four["speedup_vs_sequential"] == 1.5 and four["aggregate_images_per_s"] == 50.0
    # epochs only: 1000 / 17 s alone; 1000 / 20 s + 1000 / 23 s side by side
    assert two["training_speedup"] == pytest.approx((1 / 20 + 1 / 23) * 17, abs=1e-3)
    flat = bench.headline({"default": groups, "mps": groups[:1]})
    assert flat["speedup_vs_sequential_n2"] == 1.5 and flat["training_speedup_n1"] == 1.0
    assert flat["mps_aggregate_images_per_s_n1"] == pytest.approx(1000 / 30, abs=0.1)


def test_a_failed_run_is_counted_and_its_group_not_compared(bench):
    failed = {"wall_s": 3.0, "returncode": 1, "error": "RuntimeError: CUDA out of memory"}
    groups = [
        bench.summarise_group([made_up_run(30.0, 5.0)], 30.0),
        bench.summarise_group([made_up_run(40.0, 6.0), failed], 40.0),
    ]
    bench.compare(groups)
    assert groups[1]["failed"] == 1 and groups[1]["speedup_vs_sequential"] is None
    assert groups[1]["aggregate_images_per_s"] == 25.0  # what the run that finished trained


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0", "2"], "--runs takes distinct counts >= 1; got [0, 2]"),
        (["--runs", "2", "2"], "--runs takes distinct counts >= 1; got [2, 2]"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N; got 'tpu'"),
        (["--device", "cpu", "--mps"], "--mps needs a CUDA device"),
        (["--set", "lr"], "--set takes KEY=VALUE; got ['lr']"),
    ],
)
def test_bad_options_are_named(bench, argv, message):
    with pytest.raises(SystemExit, match=message.replace("[", "\\[").replace("]", "\\]")):
        bench.parse_args(["--data", "cifar10-mini", *argv])


def test_runs_train_from_the_checkout_with_their_share_of_the_cores(bench, tmp_path):
    args = bench.parse_args(["--data", "npz:x.npz", "--set", "lr=0.1", "--epochs", "2"])
    command = bench.train_command(args, tmp_path / "n2_0")
    assert command[1:4] == ["-m", "interlab", "train"] and "--no-resume" in command
    assert command[-3:] == ["--set", "eval_every=0", "lr=0.1"]  # kNN once, at the end
    env = bench.run_env(4, {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/p"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 4))
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/p"


def test_mps_without_its_control_program_is_reported_not_fatal(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    env, detail = bench.start_mps(tmp_path)
    assert env is None and detail == "nvidia-cuda-mps-control is not on PATH"


@pytest.mark.slow  # three training processes: about 30-60 s on 2 busy cores
def test_two_tiny_cpu_runs_side_by_side(tmp_path):
    record = tmp_path / "record.json"
    command = [
        sys.executable, str(SCRIPT), "--device", "cpu", "--data", "cifar10-mini",
        "--set", "backbone=convnet", "max_steps_per_epoch=2", "batch_size=64",
        "queue_size=256", "knn_k=20", "--epochs", "1", "--runs", "1", "2",
        "--record", str(record), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1  # ONE JSON line
    report = json.loads(lines[0])
    assert report == json.loads(record.read_text())
    assert report["device"] == "cpu" and report["mps"] == {"requested": False}
    lone, two = report["results"]["default"]
    assert (lone["runs"], two["runs"]) == (1, 2)
    assert report["warmup_s"] > 0  # the short untimed run made first
    for group in (lone, two):
        assert group["failed"] == 0 and group["gpu_memory_gb"] is None
        assert 0 < group["mean_epoch_s"] < group["wall_s"]
        assert group["steady_epoch_s"] == group["mean_epoch_s"]  # one epoch: nothing dropped
        assert all(run["images"] == 2 * 64 and run["epochs"] == 1 for run in group["per_run"])
        assert all(run["wall_s"] <= group["wall_s"] for run in group["per_run"])
        for run in group["per_run"]:
            rate = run["images"] / run["mean_epoch_s"]  # one epoch
            assert run["training_images_per_s"] == pytest.approx(rate, rel=0.01)
        expected = sum(run["images"] for run in group["per_run"]) / group["wall_s"]
        assert group["aggregate_images_per_s"] == pytest.approx(expected, rel=0.01)
    assert lone["speedup_vs_sequential"] == 1.0 and lone["per_run"][0]["slowdown"] == 1.0
    speedup = 2 * lone["wall_s"] / two["wall_s"]
    assert two["speedup_vs_sequential"] == pytest.approx(speedup, rel=0.01)
    assert report["speedup_vs_sequential_n2"] == two["speedup_vs_sequential"]
    assert all(run["slowdown"] > 0 for run in two["per_run"])
