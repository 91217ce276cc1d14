"""The GPU pack's machinery on tiny CPU items: order, records, skips, budget, failures, tables.

The lent GPU gives one short call per session, so the queue logic must be right before it
gets there: these items are `python -c` commands (and a fake trainer for sliced runs).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ENV = {"device": "test-cpu", "torch": "test"}


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "benchmarks" / "gpu_pack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_pack"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def device_out(tmp_path, monkeypatch) -> Path:
    """$OUT as the device tool sets it; never the real one, even on the lent machine."""
    out = tmp_path / "device_out"
    monkeypatch.setenv("OUT", str(out))
    return out


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def logged(log: Path, name: str, figures: dict) -> list[str]:
    """A command that appends its name to `log` (to see what ran) and prints its figures."""
    return python(f"open({str(log)!r}, 'a').write('{name}\\n'); print({json.dumps(figures)!r})")


def tiny_items(pack, log: Path) -> list:
    fail = "import sys; print('boom: the kernel', file=sys.stderr); sys.exit(3)"
    return [
        pack.Item("first", logged(log, "first", {"x": 1.5}), 1, "speed", goals={"x": ">= 1"}),
        pack.Item("broken", python(fail), 1, "speed"),
        pack.Item("huge", logged(log, "huge", {"y": 1}), 1e6, "kmeans"),
        pack.Item("small", logged(log, "small", {"z": 0.25}), 1, "step", goals={"z": "<= 0.2"}),
    ]


def test_queue_runs_in_order_records_at_once_and_continues_where_it_stopped(
    pack, tmp_path, device_out
):
    log, out = tmp_path / "ran.log", tmp_path / "results"
    items = tiny_items(pack, log)
    records = pack.run_pack(items, budget_s=60, out_dir=out, env=ENV)

    assert [r["item"] for r in records] == ["first", "broken", "huge", "small"]
    assert [r["status"] for r in records] == ["ok", "failed", "refused", "ok"]
    assert log.read_text().split() == ["first", "small"]  # huge was never started
    first, broken, huge, small = records
    for record in records:
        assert {"item", "kind", "device", "torch", "date", "command", "status"} <= set(record)
        assert record["device"] == "test-cpu" and record["torch"] == "test"
    assert first["figures"] == {"x": 1.5} and first["goals"] == {"x": ">= 1"}
    assert 0 <= first["duration_s"] < 30 and first["command"].startswith(sys.executable)
    assert "exit code 3" in broken["error"] and "boom: the kernel" in broken["error"]
    assert "duration_s" not in huge and "needs ~1000000 s" in huge["reason"]
    assert small["figures"] == {"z": 0.25}
    # Written as they finished, to OUT and to $OUT alike.
    on_disk = (out / "gpu.jsonl").read_text()
    assert [json.loads(line) for line in on_disk.splitlines()] == records
    assert (device_out / "gpu.jsonl").read_text() == on_disk

    # A second call: the ok items are skipped, the others are tried again.
    again = pack.run_pack(items, budget_s=60, out_dir=out, env=ENV)
    assert [(r["item"], r["status"]) for r in again] == [("broken", "failed"), ("huge", "refused")]
    assert log.read_text().split() == ["first", "small"]
    assert len((out / "gpu.jsonl").read_text().splitlines()) == 6
    assert len((device_out / "gpu.jsonl").read_text().splitlines()) == 6


def test_an_earlier_attempts_duration_counts_against_the_budget(pack, tmp_path):
    """...when it ran the same command: the first H200 call's 535 s gpu_tests (a stuck compile
    test) must not keep the split, time-limited gpu_tests from ever running again."""
    out = tmp_path / "results"
    out.mkdir()
    items = [pack.Item("slow", python("print('{}')"), 1, "speed")]
    same = shlex.join(["/elsewhere/python3", *items[0].command[1:]])
    earlier = {"item": "slow", "status": "failed", "duration_s": 500.0, "command": same}
    (out / "gpu.jsonl").write_text(json.dumps(earlier) + "\n")
    (record,) = pack.run_pack(items, budget_s=100, out_dir=out, env=ENV)
    assert record["status"] == "refused" and "needs ~500 s" in record["reason"]
    older = {**earlier, "command": shlex.join([sys.executable, "-c", "print('older')"])}
    (out / "gpu.jsonl").write_text(json.dumps(older) + "\n")
    (record,) = pack.run_pack(items, budget_s=100, out_dir=out, env=ENV)
    assert record["status"] == "ok"


def test_a_hung_item_is_killed_at_the_budget_left_and_recorded(pack, tmp_path):
    items = [
        pack.Item("hangs", python("import time; time.sleep(60)"), 1, "speed"),
        pack.Item("after", python("print('{}')"), 1, "speed"),
    ]
    hung, after = pack.run_pack(items, budget_s=1.5, out_dir=tmp_path, env=ENV)
    assert hung["status"] == "failed" and hung["error"].startswith("timed out")
    assert hung["duration_s"] < 10
    assert after["status"] == "refused"  # nothing left of the budget


def test_a_failed_test_run_keeps_its_counts(pack, tmp_path):
    summary = "print('F...'); print('1 failed, 3 passed, 2 warnings in 0.12s'); raise SystemExit(1)"
    items = [pack.Item("tests", python(summary), 1, "tests", pack.pytest_counts)]
    (record,) = pack.run_pack(items, budget_s=60, out_dir=tmp_path, env=ENV)
    assert record["status"] == "failed" and record["error"].endswith("in 0.12s")
    assert record["figures"] == {"passed": 3, "failed": 1, "skipped": 0, "errors": 0}


FAKE_TRAIN = textwrap.dedent(
    """
    # Stands in for `interlab train --out RUN --stop-after-epochs N`: it resumes from the
    # epoch in RUN/state, writes N epochs of metrics and the checkpoint the test made for
    # the epoch it reaches.
    import json, shutil, sys
    from pathlib import Path
    run, n = Path(sys.argv[sys.argv.index("--out") + 1]), int(sys.argv[-1])
    run.mkdir(parents=True, exist_ok=True)
    state = run / "state"
    epoch = int(state.read_text()) if state.exists() else 0
    with open(run / "metrics.jsonl", "a") as f:
        for e in range(epoch + 1, epoch + n + 1):
            f.write(json.dumps({"epoch": e, "epoch_time_s": 2.0, "knn_top1": e / 10,
                                "knn_top1_head": e / 10 + 0.01}) + "\\n")
    state.write_text(str(epoch + n))
    shutil.copy(Path(sys.argv[1]) / f"ckpt{epoch + n}.pt", run / "checkpoint.pt")
    """
)


def fake_run(pack, tmp_path: Path, run: str = "run", epochs: int = 4, each: int = 2) -> list:
    """A run of `epochs` epochs sliced by `each`, trained by FAKE_TRAIN in tmp_path/runs/RUN."""
    script, ckpts = tmp_path / "fake_train.py", tmp_path / "ckpts"
    script.write_text(FAKE_TRAIN)
    ckpts.mkdir(exist_ok=True)
    for epoch in range(1, epochs + 1):
        torch.save({"epoch": epoch, "weights": torch.zeros(3)}, ckpts / f"ckpt{epoch}.pt")
    run_dir = tmp_path / "runs" / run
    command = [sys.executable, str(script), str(ckpts), "--out", str(run_dir)]
    goals = {"knn_top1_head": ">= 0.3"}
    return [
        pack.Item(
            f"{run}@{stop}",
            command,
            1,
            "training",
            pack.run_figures,
            goals,
            pack.Slice(run, run_dir, stop - each, stop, epochs),
        )
        for stop in range(each, epochs + 1, each)
    ]


def test_slices_resume_one_run_folder_and_start_over_on_a_fresh_machine(pack, tmp_path):
    out = tmp_path / "results"
    items = fake_run(pack, tmp_path)
    one, two = pack.run_pack(items, budget_s=60, out_dir=out, env=ENV)
    assert one["command"].endswith("--stop-after-epochs 2")
    assert two["command"].endswith("--stop-after-epochs 2")
    assert (one["status"], two["status"]) == ("ok", "ok")
    assert one["run"] == two["run"] == "run"
    figures = two["figures"]
    assert (figures["epoch"], figures["epochs"], figures["train_s"]) == (4, 4, 8.0)
    assert figures["knn_curve"] == {str(e): [e / 10, round(e / 10 + 0.01, 4)] for e in range(1, 5)}
    assert figures["knn_top1_head"] == pytest.approx(0.41)
    assert two["run_wall_s"] == pytest.approx(one["duration_s"] + two["duration_s"], abs=0.2)
    assert pack.run_pack(items, budget_s=60, out_dir=out, env=ENV) == []  # finished: skipped

    # Only the first slice finished, then the machine went back: the run starts over.
    records = (out / "gpu.jsonl").read_text().splitlines()
    (out / "gpu.jsonl").write_text(records[0] + "\n")
    for path in (tmp_path / "runs" / "run").iterdir():
        path.unlink()
    redo = pack.run_pack(items, budget_s=60, out_dir=out, env=ENV)
    assert [(r["item"], r["figures"]["epoch"]) for r in redo] == [("run@2", 2), ("run@4", 4)]


def test_a_run_starts_only_when_all_its_slices_fit(pack, tmp_path):
    items = fake_run(pack, tmp_path, epochs=6)  # three slices of ~1 s estimate each
    for item in items:
        item.estimate_s = 20
    records = pack.run_pack(items, budget_s=50, out_dir=tmp_path / "results", env=ENV)
    assert [(r["item"], r["status"]) for r in records] == [("run@2", "refused")]
    assert "needs ~60 s" in records[0]["reason"]
    assert not (tmp_path / "runs" / "run").exists()


def test_tables_from_the_records_replace_only_the_marked_part(pack, tmp_path):
    out, results = tmp_path / "results", tmp_path / "RESULTS.md"
    results.write_text(f"# Figures\n\nabove\n\n{pack.BEGIN}\nstale text\n{pack.END}\n\nbelow\n")
    pack.write_tables(out / "gpu.jsonl", results)  # no records yet
    text = results.read_text()
    assert "Not measured yet" in text and "stale text" not in text
    assert text.startswith("# Figures\n\nabove\n\n") and text.endswith("\n\nbelow\n")

    pack.run_pack(tiny_items(pack, tmp_path / "ran.log"), 60, out, env=ENV)
    pack.run_pack(fake_run(pack, tmp_path), 60, out, env=ENV)
    pack.write_tables(out / "gpu.jsonl", results)
    text = results.read_text()
    assert "Not measured yet" not in text and text.count(pack.BEGIN) == 1
    for title in ("### Speeds", "### k-means", "### Step time", "### Training runs"):
        assert title in text
    assert "| first | x | 1.5 | >= 1 | yes |" in text
    assert "| small | z | 0.25 | <= 0.2 | **no** |" in text
    assert "| broken | failed: boom: the kernel | | | |" in text
    assert "| huge | not run: needs ~1000000 s" in text
    assert "| run | done | 4 of 4 | 0.400 | 0.410 | knn_top1_head >= 0.3: yes | 8 |" in text
    assert "| 3 | 0.300 / 0.310 |" in text  # the kNN curve, backbone / head
    assert "- `first` (test-cpu, torch test, " in text
    pack.write_tables(out / "gpu.jsonl", results)
    assert results.read_text() == text  # regenerating changes nothing


def test_merge_appends_only_new_records(pack, tmp_path):
    call, target = tmp_path / "call.jsonl", tmp_path / "results" / "gpu.jsonl"
    call.write_text('{"item": "a", "status": "ok"}\n{"item": "b", "status": "failed"}\n')
    assert pack.merge(call, target) == 2
    assert pack.merge(call, target) == 0
    assert len(target.read_text().splitlines()) == 2


def test_default_queue_order_and_commands_fit_the_lent_machine(pack):
    items = pack.default_items("npz:.gpudata/cifar10.npz")
    names = [item.name for item in items]
    assert len(set(names)) == len(names)
    assert names[:8] == [
        "gpu_tests", "augment_speed", "moco_throughput", "kmeans", "step_time", "stream_speed",
        "config_cost", "gpu_compile_tests",
    ]  # fmt: skip
    tests, compile_tests = items[0].command, items[7].command
    assert tests[tests.index("-k") + 1] == "not " + compile_tests[compile_tests.index("-k") + 1]
    assert all(any(p.startswith("--timeout=") for p in c) for c in (tests, compile_tests))
    runs = list(dict.fromkeys(item.slice.run for item in items[8:]))
    assert runs[:3] == ["moco_100ep", "moco_200ep", "interclr_100ep"]
    assert len(runs) == 8  # + five study variants
    for item in items:
        assert item.command[0] == sys.executable
        assert not any("papermill" in part or "quickstart" in part for part in item.command)
        scripts = [p for p in item.command if p.startswith("benchmarks/") and p.endswith(".py")]
        assert all((ROOT / script).exists() for script in scripts), scripts
        assert item.estimate([]) <= 420  # about 5 minutes per item, a 10-minute call
    for run in runs:
        parts = [item.slice for item in items if item.slice and item.slice.run == run]
        assert [p.start for p in parts] == [0, *(p.stop for p in parts[:-1])]
        assert parts[-1].stop == parts[-1].epochs and all(p.stop % 10 == 0 for p in parts)
        assert parts[0].run_dir.is_relative_to(ROOT / "benchmarks" / "out")
    # Measured step rates replace the guessed epoch time in the training estimates.
    measured = [{"item": "moco_throughput", "status": "ok", "figures": {"cifar10_epoch_s": 2.0}}]
    assert items[8].estimate(measured) == pytest.approx(pack.START_S + 50 * 2.0 * 1.1)
