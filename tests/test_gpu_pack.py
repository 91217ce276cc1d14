"""The GPU pack's machinery on tiny CPU items: order, records, skips, budget, failures, tables.

A GPU machine gives short calls, so the queue logic must be right before it
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
import yaml

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
    """The copy folder a GPU machine hands back ($GPU_PACK_COPY_DIR); never a real one, even
    on a GPU machine; a job runner's other variables are not read."""
    out = tmp_path / "device_out"
    monkeypatch.setenv("GPU_PACK_COPY_DIR", str(out))
    monkeypatch.setenv("OUT", str(tmp_path / "not_this_one"))  # a runner's name: ignored
    return out


def call_logs(folder: Path) -> list[Path]:
    return sorted(folder.glob("gpu_pack_*.log"))


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
    # Written as they finished, to OUT and to the copy folder alike.
    on_disk = (out / "gpu.jsonl").read_text()
    assert [json.loads(line) for line in on_disk.splitlines()] == records
    assert (device_out / "gpu.jsonl").read_text() == on_disk
    # One log per call holds every item that ran, whole; the records name it.
    (call_log,) = call_logs(out / "logs")
    assert {r.get("log") for r in records} == {f"logs/{call_log.name}", None}
    assert "log" not in huge  # refused: nothing ran
    text = call_log.read_text()
    assert sorted(p.name for p in device_out.iterdir()) == ["gpu.jsonl", call_log.name]
    assert (device_out / call_log.name).read_text() == text
    for name in ("first", "broken", "small"):
        assert text.count(f"======== {name} (") == 1
    assert "boom: the kernel" in text and '{"x": 1.5}' in text
    assert "-------- broken: failed in " in text and "exit code 3" in text
    assert "huge" not in text

    # A second call: the ok items are skipped, the others are tried again.
    again = pack.run_pack(items, budget_s=60, out_dir=out, env=ENV)
    assert [(r["item"], r["status"]) for r in again] == [("broken", "failed"), ("huge", "refused")]
    assert log.read_text().split() == ["first", "small"]
    assert len((out / "gpu.jsonl").read_text().splitlines()) == 6
    assert len((device_out / "gpu.jsonl").read_text().splitlines()) == 6
    assert again[0]["log"].startswith("logs/gpu_pack_")  # a call's own log (or the same
    # one, when both calls began within the same second)


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
        pack.Item("hangs", python("print('started'); import time; time.sleep(60)"), 1, "speed"),
        pack.Item("after", python("print('{}')"), 1, "speed"),
    ]
    hung, after = pack.run_pack(items, budget_s=1.5, out_dir=tmp_path, env=ENV)
    assert hung["status"] == "failed" and hung["error"].startswith("timed out")
    assert hung["duration_s"] < 10
    assert after["status"] == "refused"  # nothing left of the budget
    # What it printed before the kill is in the log: items run unbuffered.
    text = (tmp_path / hung["log"]).read_text()
    assert "started\n" in text and "-------- hangs: failed in" in text


def test_the_log_interleaves_both_streams_and_cuts_a_huge_output_in_the_middle(
    pack, tmp_path, monkeypatch
):
    monkeypatch.setattr(pack, "ITEM_LOG_CHARS", 4000)
    monkeypatch.setattr(pack, "MIN_ITEM_LOG_CHARS", 1000)
    turns = (
        "import sys, time\n"
        "for n in range(3):\n"
        "    print(f'out {n}'); time.sleep(0.1); print(f'err {n}', file=sys.stderr)\n"
        "    time.sleep(0.1)\n"
    )
    flood = "for n in range(20000): print(f'line {n:05d}')\nprint('{\"lines\": 20000}')"
    items = [
        pack.Item("turns", python(turns), 1, "speed"),
        pack.Item("flood", python(flood), 1, "speed"),
    ]
    turns_record, flood_record = pack.run_pack(items, budget_s=60, out_dir=tmp_path, env=ENV)
    text = (tmp_path / turns_record["log"]).read_text()
    said = [line for line in text.splitlines() if line[:4] in ("out ", "err ")]
    assert said == ["out 0", "err 0", "out 1", "err 1", "out 2", "err 2"]
    assert flood_record["figures"] == {"lines": 20000}  # the reader still saw everything
    flood_part = text[text.index("======== flood") :]
    assert "line 00000" in flood_part and '{"lines": 20000}' in flood_part  # head and tail
    assert "line 10000" not in flood_part and "characters of output cut here" in flood_part
    assert len(flood_part) < 4000 + 1000  # the limit, plus the header and the footer


def test_a_missing_script_is_recorded_without_running_and_the_queue_goes_on(pack, tmp_path):
    items = [
        pack.Item("pending", [sys.executable, "benchmarks/not_written_yet.py"], 1, "speed"),
        pack.Item("after", python("print('{}')"), 1, "speed"),
    ]
    pending, after = pack.run_pack(items, budget_s=60, out_dir=tmp_path, env=ENV, cwd=ROOT)
    assert pending["status"] == "failed" and "duration_s" not in pending
    assert pending["error"] == "not run: benchmarks/not_written_yet.py does not exist"
    assert after["status"] == "ok"
    assert pack.missing_scripts(items[0].command, ROOT) == ["benchmarks/not_written_yet.py"]
    listed = pack.list_queue(items, [])
    assert listed[0].endswith("(missing: benchmarks/not_written_yet.py)")


def test_the_copy_folder_comes_from_the_option_or_the_environment(pack, tmp_path, monkeypatch):
    assert pack.default_copy_dir() == str(tmp_path / "device_out")
    monkeypatch.delenv("GPU_PACK_COPY_DIR")
    assert pack.default_copy_dir() is None
    items = [pack.Item("one", python("print('{}')"), 1, "speed")]
    pack.run_pack(items, budget_s=60, out_dir=tmp_path / "results", env=ENV)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no copy anywhere
    pack.run_pack(items, 60, tmp_path / "again", copy_dir=tmp_path / "copy", env=ENV)
    assert (tmp_path / "copy" / "gpu.jsonl").exists() and len(call_logs(tmp_path / "copy")) == 1


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
    line = {"combinations": 2, "ok": 1, "failed": ["interclr/shards: RuntimeError: a|b"]}
    failing = python(f"print({json.dumps(line)!r}); raise SystemExit(1)")
    smoke = pack.Item("smoke", failing, 1, "tests", pack.smoke_counts, {"failed": "== 0"})
    pack.run_pack([smoke], 60, out, env=ENV)
    older = {"item": "moco_throughput", "kind": "speed", "status": "ok", "command": "x",
             "goals": {"cifar10_epoch_s": "<= 3"}, "figures": {"cifar10_epoch_s": 2.8},
             **ENV, "date": "2026-12-04T00:00:00+00:00"}  # fmt: skip
    pack.append(older, [out / "gpu.jsonl"])
    pack.write_tables(out / "gpu.jsonl", results)
    text = results.read_text()
    assert "| smoke | failed | 1 | == 0 | **no** |" in text
    # judged by the queue's present goal (<= 2.5), not the one it was run with
    assert "| moco_throughput | cifar10_epoch_s | 2.8 | <= 2.5 | **no** |" in text
    assert "| smoke | failures | interclr/shards: RuntimeError: a/b | | |" in text
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


def test_merge_appends_only_new_records_and_brings_their_log(pack, tmp_path):
    call, target = tmp_path / "call" / "gpu.jsonl", tmp_path / "results" / "gpu.jsonl"
    call.parent.mkdir()
    log = "logs/gpu_pack_20261204T132830Z.log"
    call.write_text(
        f'{{"item": "a", "status": "ok", "log": "{log}"}}\n{{"item": "b", "status": "failed"}}\n'
    )
    (call.parent / "gpu_pack_20261204T132830Z.log").write_text("======== a\nall of it\n")
    assert pack.merge(call, target) == 2
    assert pack.merge_logs(call, target) == [target.parent / log]
    assert (target.parent / log).read_text() == "======== a\nall of it\n"
    assert pack.merge(call, target) == 0 and pack.merge_logs(call, target) == []
    assert len(target.read_text().splitlines()) == 2


def test_main_refuses_what_it_cannot_do(pack, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pack.main(["--merge", str(tmp_path / "nowhere.jsonl"), "--out", str(tmp_path)])
    assert "nowhere.jsonl does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pack.main(["--only", "gpu_smok", "--out", str(tmp_path)])
    assert "no item or run named gpu_smok" in capsys.readouterr().err


def test_readers_of_the_smoke_and_concurrency_lines(pack):
    smoke = {"combinations": 23, "ok": 22, "skipped": ["cyclecontrast/shards: frames"],
             "failed": ["interclr/shards: RuntimeError: indices"], "seconds": 80.5}  # fmt: skip
    figures = pack.smoke_counts("progress\n" + json.dumps(smoke) + "\n", None)
    assert figures == {
        "combinations": 23, "ok": 22, "failed": 1, "skipped": 1, "seconds": 80.5,
        "failures": ["interclr/shards: RuntimeError: indices"],
    }  # fmt: skip
    assert pack.goal_met(figures["failed"], "== 0") == "**no**"
    groups = [
        {"runs": n, "wall_s": 10.0 * n / s, "speedup_vs_sequential": s, "per_run": []}
        for n, s in ((1, 1.0), (2, 1.6), (8, 2.5))
    ]
    line = {"results": {"default": groups, "mps": groups[:2]}, "epochs": 3}
    figures = pack.largest_n_speedup(json.dumps(line), None)
    assert (figures["speedup_vs_sequential"], figures["largest_n"]) == (2.5, 8)
    assert figures["speedup_vs_sequential_n2"] == 1.6 and figures["mps_wall_s_n2"] == 12.5
    flat = pack.largest_n_speedup('{"speedup_vs_sequential_n4": 1.2, "x": 1}', None)
    assert (flat["speedup_vs_sequential"], flat["largest_n"]) == (1.2, 4)
    nested = pack.largest_n_speedup('{"speedup_vs_sequential": {"2": 1.1, "16": 0.9}}', None)
    assert (nested["speedup_vs_sequential"], nested["largest_n"]) == (0.9, 16)


def test_default_queue_order_and_commands_fit_the_gpu_machine(pack):
    items = pack.default_items("npz:.gpudata/cifar10.npz")
    names = [item.name for item in items]
    assert len(set(names)) == len(names)
    compile_others = [f"compile_time_{m}" for m in ("interclr", "cyclecontrast", "dino", "scfs")]
    assert names[:16] == [
        "gpu_tests", "gpu_smoke", "moco_throughput", "moco_throughput_graph", "augment_speed",
        "concurrent_runs", "compile_time", "step_time", "config_cost", "kmeans", "stream_speed",
        *compile_others, "gpu_compile_tests",
    ]  # fmt: skip
    tests, compile_tests = items[0].command, items[15].command
    assert tests[tests.index("-k") + 1] == "not " + compile_tests[compile_tests.index("-k") + 1]
    assert all(any(p.startswith("--timeout=") for p in c) for c in (tests, compile_tests))
    every_gpu_file = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/test_gpu*.py"))
    assert set(every_gpu_file) | {"tests/test_augment.py", "tests/test_data.py"} <= set(tests)
    goals = {item.name: item.goals for item in items[:16]}
    assert goals["gpu_smoke"] == {"failed": "== 0"}
    assert goals["moco_throughput"] == goals["moco_throughput_graph"]
    assert goals["moco_throughput"] == {"ratio": ">= 0.6", "cifar10_epoch_s": "<= 2.5"}
    assert items[3].command == [*items[2].command, "--cuda-graph"]
    assert goals["concurrent_runs"] == {"speedup_vs_sequential": ">= 1.5"}
    assert goals["compile_time"] == {"cold_compile_s": "<= 120", "recompiles_after_warmup": "== 0"}
    assert all(goals[name] == {"recompiles_after_warmup": "== 0"} for name in compile_others)
    assert items[5].command[-3:] == ["--mps", "--timeout-s", "150"]
    assert (items[5].estimate([]), items[6].estimate([])) == (400, 200)
    runs = list(dict.fromkeys(item.slice.run for item in items[16:]))
    assert runs[:3] == ["moco_100ep", "moco_200ep", "interclr_gpu/online-seed0"]
    assert len(runs) == 2 + 11 * 5  # + the GPU study's 11 arms x 5 seeds, seeds outermost
    assert runs[2 + 11] == "interclr_gpu/online-seed1"
    for item in items:
        assert item.command[0] == sys.executable
        assert not any("papermill" in part or "quickstart" in part for part in item.command)
        scripts = [p for p in item.command if p.startswith("benchmarks/") and p.endswith(".py")]
        assert all((ROOT / s).exists() for s in scripts), scripts
        assert item.estimate([]) <= 420  # about 5 minutes per item, a 10-minute call
    for run in runs:
        parts = [item.slice for item in items if item.slice and item.slice.run == run]
        assert [p.start for p in parts] == [0, *(p.stop for p in parts[:-1])]
        assert parts[-1].stop == parts[-1].epochs and all(p.stop % 10 == 0 for p in parts)
        assert parts[0].run_dir.is_relative_to(ROOT / "benchmarks" / "scratch")
    # Measured step rates replace the guessed epoch time in the training estimates.
    measured = [{"item": "moco_throughput", "status": "ok", "figures": {"cifar10_epoch_s": 2.0}}]
    assert items[16].estimate(measured) == pytest.approx(pack.START_S + 50 * 2.0 * 1.1)


def test_tables_show_commands_as_a_reader_reruns_them(pack):
    """The GPU machine's interpreter path reads as python3 and the pack's scratch run folder
    (`--out`) is left out; every other argument stays, in order."""
    recorded = "/opt/x/.venv/bin/python3 -m interlab train --config c --out runs/a --epochs 5"
    assert pack.shown_command(recorded) == "python3 -m interlab train --config c --epochs 5"
    assert pack.shown_command("bash -c 'echo hi'") == "bash -c 'echo hi'"


def test_a_finished_study_run_carries_its_record_and_merge_files_it(pack, tmp_path, monkeypatch):
    """The last slice of a GPU study run reads the run folder into a study record; `--merge`
    appends it to benchmarks/results/studies/STUDY.jsonl once (a second merge adds nothing)."""
    items = pack.study_items("interclr_gpu", "npz:x.npz", runs=tmp_path)
    last = [i for i in items if i.slice.run == "interclr_gpu/hard-seed2"][-1]
    assert "--set" in last.command and "neg_sampling=hard" in last.command
    run_dir = last.slice.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "method: interclr\nepochs: 2\namp: auto\nchannels_last: true\n"
        "method_options: {neg_sampling: hard}\n"
    )
    rows = [{"epoch": 1, "loss": 5.0}, {"epoch": 2, "loss": 4.0, "knn_top1": 0.61, "nmi": 0.3}]
    monkeypatch.setattr(pack, "environment", lambda: {"device": "NVIDIA H200", "torch": "2.11.0"})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    part = pack.Slice(last.slice.run, run_dir, 0, 2, 2, last.slice.study)
    figures = pack.run_figures("", pack.Item(last.name, last.command, 1, "training", slice=part))
    record = figures["study_record"]
    assert (record["arm"], record["seed"], record["metrics"]) == ("hard", 2, {"knn_top1": 0.61})
    assert record["diagnostics"] == {"nmi": 0.3} and len(record["per_epoch"]) == 2
    source = tmp_path / "call.jsonl"
    assert record["precision"].startswith("cuda:") and record["torch"] == "2.11.0"
    failed = {"item": last.name, "status": "failed", "figures": figures}
    source.write_text(json.dumps(failed) + "\n")
    studies = tmp_path / "studies"
    assert pack.merge_study_records(source, studies) == {}  # a failed slice files nothing
    source.write_text(json.dumps({**failed, "status": "ok"}) + "\n")
    assert pack.merge_study_records(source, studies) == {"interclr_gpu": 1}
    assert pack.merge_study_records(source, studies) == {"interclr_gpu": 0}


def test_the_gpu_study_runs_the_interclr_cifar10_recipe(pack):
    """Each study run's `--set` pairs rebuild interclr_cifar10 (augmentation included), apart
    from the head (the release's MLP), what the arm changes and the scaled sizes."""
    from interlab.config import build_config, load_named_config

    online = next(i for i in pack.study_items("interclr_gpu", "npz:x") if "online-seed0" in i.name)
    sets = dict(online.command[i + 1].split("=", 1) for i, part in enumerate(online.command)
                if part == "--set")  # fmt: skip
    recipe = build_config(load_named_config("interclr_cifar10"))
    study = build_config({"method": "interclr", **{k: yaml.safe_load(v) for k, v in sets.items()}})
    assert study.augment_config(32) == recipe.augment_config(32)
    for key in ("backbone", "cifar_stem", "lr", "weight_decay", "knn_k"):
        assert getattr(study, key) == getattr(recipe, key), key
    for key, value in recipe.method_options.items():
        if key not in ("centroid_interval", "min_cluster"):
            assert study.method_options.get(key, value) == value, key
