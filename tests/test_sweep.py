"""Sweeps of parameterized notebooks: expansion, checks, failures, resume, report, CLI."""

import json
import os
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
import yaml

from interlab.cli import main
from interlab.lab import device_slots
from interlab.lab.device_slots import (
    DEFAULT_RUN_GB,
    DeviceMemory,
    DeviceSlots,
    gpu_memory,
    nvidia_smi_id,
    resolve_run_device,
)
from interlab.lab.experiment import check_training_run
from interlab.lab.notebook_params import declared_parameters
from interlab.lab.report import collect_runs, summarise, write_report
from interlab.lab.sweep import (
    RunExecutor,
    cpu_threads_per_run,
    load_sweep,
    run_sweep,
    sweep_from_spec,
)

TRAIN_NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "train.ipynb"


@pytest.fixture(scope="module")
def toy_notebook(tmp_path_factory) -> Path:
    """A fast notebook with the template's contract: parameters in, metrics.json out.

    It fails on purpose for a=2, b=1.0 while `marker` exists, and logs every execution.
    """
    path = tmp_path_factory.mktemp("nb") / "toy.ipynb"
    params = nbformat.v4.new_code_cell(
        'a: int = 1\nb: float = 0.5\nseed: int = 0\nout_dir: str = "."\n'
        'marker: str = ""\nexecutions: str = ""\nsleep: float = 0.0\nlimit: int | None = None\n'
        'extra: dict = {"x": 1}\ndevice: str = "cpu"'
    )
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, os, time\n"
        "time.sleep(sleep)\n"
        "with open(executions, 'a') as f:\n"
        "    f.write(f'{a},{b},{seed}\\n')\n"
        "if a == 2 and b == 1.0 and os.path.exists(marker):\n"
        "    raise RuntimeError('forced failure')\n"
        "curve = [{'epoch': e, 'knn_top1': a * b * e / 20} for e in (1, 2)]\n"
        "json.dump({'knn_top1': a * b / 10 + seed / 100, 'per_epoch': curve},\n"
        "          open(os.path.join(out_dir, 'metrics.json'), 'w'))"
    )
    notebook = nbformat.v4.new_notebook(cells=[params, body])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)
    return path


def toy_spec(toy_notebook, tmp_path, **extra):
    spec = {
        "notebook": str(toy_notebook),
        "base": {"marker": str(tmp_path / "fail"), "executions": str(tmp_path / "executions.txt")},
        "grid": {"a": [1, 2], "b": [0.5, 1.0]},
        "seeds": [0],
    }
    spec.update(extra)
    return spec


def executions(tmp_path) -> list[str]:
    return (tmp_path / "executions.txt").read_text().split()


def test_two_by_two_sweep_records_a_failure_retries_it_and_reports_every_row(
    toy_notebook, tmp_path
):
    (tmp_path / "fail").touch()
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path))
    assert [r.name for r in sweep.runs] == [
        "a=1,b=0.5-seed0", "a=1,b=1.0-seed0", "a=2,b=0.5-seed0", "a=2,b=1.0-seed0",
    ]  # fmt: skip
    out = tmp_path / "sweep"
    statuses = run_sweep(sweep, out, workers=2, progress=False)
    states = {s["run"]: s["state"] for s in statuses}
    assert states == {"a=1,b=0.5-seed0": "done", "a=1,b=1.0-seed0": "done",
                      "a=2,b=0.5-seed0": "done", "a=2,b=1.0-seed0": "failed"}  # fmt: skip
    failed = json.loads((out / "a=2,b=1.0-seed0" / "status.json").read_text())
    assert "forced failure" in failed["error"]
    assert (out / "a=1,b=0.5-seed0" / "executed.ipynb").exists()
    assert len(executions(tmp_path)) == 4

    (tmp_path / "fail").unlink()
    statuses = run_sweep(sweep, out, workers=2, progress=False)
    assert all(s["state"] == "done" for s in statuses)
    assert executions(tmp_path)[4:] == ["2,1.0,0"]  # only the failed run ran again

    paths = write_report(out)
    lines = summarise(collect_runs(out))
    assert [line["setting"] for line in lines] == [
        "a=1,b=0.5",
        "a=1,b=1.0",
        "a=2,b=0.5",
        "a=2,b=1.0",
    ]
    assert [line["knn_top1_mean"] for line in lines] == pytest.approx([0.05, 0.1, 0.1, 0.2])
    assert all(line["seeds"] == 1 and line["failed"] == 0 for line in lines)
    table = paths["markdown"].read_text()
    assert table.count("\n| a=") == 4 and "0.2000 ± 0.0000" in table
    assert paths["csv"].read_text().splitlines()[0].startswith("setting,seeds,failed")
    assert paths["final_knn"].exists() and paths["curves"].exists()


def test_seeds_are_averaged_with_their_spread(toy_notebook, tmp_path):
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1]}, seeds=[0, 2])
    out = tmp_path / "seeds"
    run_sweep(sweep_from_spec(spec), out, progress=False)
    (line,) = summarise(collect_runs(out))
    assert line["seeds"] == 2
    assert line["knn_top1_mean"] == pytest.approx(0.06)  # 0.05 + seed / 100, seeds 0 and 2
    assert line["knn_top1_std"] == pytest.approx(0.01414, abs=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"lr": [0.1]}}, "toy.ipynb declares no parameter 'lr'; valid: a, b, seed"),
        ({"grid": {"a": ["x"]}}, "parameter 'a' of toy.ipynb expects int; got 'x'"),
        ({"grid": {}}, "the grid is empty"),
        ({"grid": {"a": []}}, "grid key 'a' needs a non-empty list"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"seeds": [0, 0]}, "'seeds' repeats a seed"),
        (
            {"grid": {"limit": ["x"]}},
            "parameter 'limit' of toy.ipynb expects int \\| None; got 'x'",
        ),
        ({"grid": {"a": [None]}}, "parameter 'a' of toy.ipynb expects int; got None"),
        ({"grid": {"b": [True]}}, "parameter 'b' of toy.ipynb expects float; got True"),
        ({"gird": {"a": [1]}}, "unknown grid key\\(s\\) \\['gird'\\]"),
        ({"notebook": "missing.ipynb"}, "notebook 'missing.ipynb' not found"),
    ],
)
def test_bad_grids_are_rejected_before_anything_runs(toy_notebook, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        sweep_from_spec(toy_spec(toy_notebook, tmp_path, **change))


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ({"method": "mocco"}, "unknown method 'mocco'; valid methods: moco, simclr, interclr"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"overrides": {"neg_sampling": "nearest"}}, "neg_sampling must be one of"),
        ({"overrides": {"queue_sise": 10}}, "unknown key 'queue_sise'"),
        ({"epochs": "ten"}, "parameter 'epochs' of train.ipynb expects int; got 'ten'"),
    ],
)
def test_train_template_values_are_checked_like_a_run(base, message):
    spec = {"notebook": str(TRAIN_NOTEBOOK), "base": base, "grid": {"seed": [0]}}
    with pytest.raises(ValueError, match=message):
        sweep_from_spec(spec, check_run=check_training_run)


def test_check_run_gets_the_notebook_defaults_under_each_run(toy_notebook, tmp_path):
    seen = []
    sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [3]}), check_run=seen.append)
    (parameters,) = seen
    assert parameters["a"] == 3 and parameters["b"] == 0.5 and parameters["limit"] is None
    assert parameters["extra"] == {"x": 1}


def test_the_generic_sweep_modules_leave_training_to_the_caller():
    """grids, notebook_params and sweep import no training code; check_run brings it in."""
    from interlab.lab import grids, notebook_params, sweep
    from tests.test_layers import imported_names

    training = ("interlab.lab.experiment", "interlab.train", "interlab.methods", "torch")
    for module in (grids, notebook_params, sweep):
        names = imported_names(Path(module.__file__), module.__name__)
        found = sorted(n for n in names if n.startswith(training))
        assert not found, f"{module.__name__} imports {found}"
    spec = {"notebook": str(TRAIN_NOTEBOOK), "base": {"method": "mocco"}, "grid": {"seed": [0]}}
    assert sweep_from_spec(spec).runs  # no check_run: the generic runner does not judge it


def test_declared_parameters_use_papermill_and_keep_what_it_drops(toy_notebook):
    declared = declared_parameters(toy_notebook)
    assert list(declared)[:3] == ["a", "b", "seed"]  # the cell's order
    assert declared["a"].type_name == "int" and declared["a"].default == 1
    assert declared["extra"].default == {"x": 1} and declared["extra"].type_name == "dict"
    limit = declared["limit"]  # papermill drops `int | None` lines; ast supplies them
    assert (limit.type_name, limit.optional, limit.default) == ("int", True, None)
    train = declared_parameters(TRAIN_NOTEBOOK)
    assert "moco" in train["method"].help  # papermill's help: the line's comment
    assert train["overrides"].default["queue_size"] == 1024


def test_shipped_grids_load_in_both_forms():
    grids = sorted((TRAIN_NOTEBOOK.parent / "sweeps").glob("*.yaml"))
    assert {g.stem for g in grids} >= {
        "pseudo_labels",
        "negative_sampling",
        "decision_boundary",
        "cyclecontrast",
    }
    for grid in grids:
        for small in (False, True):
            sweep = load_sweep(grid, small=small)
            assert sweep.runs and sweep.notebook == TRAIN_NOTEBOOK.resolve()
        assert all(r.parameters["device"] == "cpu" for r in load_sweep(grid, small=True).runs)


def test_cli_sweep_and_report(toy_notebook, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3]})))
    out = tmp_path / "cli"
    assert main(["sweep", str(grid), "--out", str(out), "--workers", "2"]) == 0
    assert "2 of 2 runs done" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert "| a=3 | 1 | 0 |" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(toy_spec(toy_notebook, tmp_path, grid={"c": [1]})))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "declares no parameter 'c'" in capsys.readouterr().err
    train_grid = tmp_path / "train.yaml"
    spec = {"notebook": str(TRAIN_NOTEBOOK), "base": {"method": "mocco"}, "grid": {"seed": [0]}}
    train_grid.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(train_grid), "--out", str(tmp_path / "train")]) == 2
    assert "unknown method 'mocco'" in capsys.readouterr().err  # the CLI's training check
    assert not (tmp_path / "train").exists()  # refused before anything ran


def test_train_template_runs_headless_through_a_sweep(tmp_path, tiny_npz):
    spec = {
        "notebook": str(TRAIN_NOTEBOOK),
        "base": {
            "method": "moco",
            "dataset": f"npz:{tiny_npz}",
            "epochs": 1,
            "batch_size": 64,
            "device": "cpu",
            "overrides": {
                "backbone": "convnet",
                "cifar_stem": False,
                "queue_size": 256,
                "knn_k": 20,
            },
        },
        "grid": {"linear_probe": [True]},
    }
    (status,) = run_sweep(sweep_from_spec(spec), tmp_path / "train", progress=False)
    assert status["state"] == "done", status.get("error")
    summary = json.loads((tmp_path / "train" / status["run"] / "metrics.json").read_text())
    assert 0 <= summary["knn_top1"] <= 1 and 0 <= summary["linear_top1"] <= 1
    assert summary["epochs"] == 1 and len(summary["per_epoch"]) == 1
    assert summary["config"]["method"] == "moco" and summary["wall_time_s"] > 0


STUDIES = {
    "01_pseudo_labels.ipynb": {"overrides.online_labels": [True]},
    "02_negative_sampling.ipynb": {"overrides.neg_sampling": ["semihard"]},
    "03_decision_boundary.ipynb": {"overrides.margin_kind": ["cos"], "overrides.margin": [-0.5]},
}


@pytest.mark.slow  # over 10 s on 2 cores: make test-slow / CI
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_notebooks_read_a_finished_sweep(study, tmp_path, tiny_npz):
    """Each study notebook finds the sweep folder's runs (one 1-epoch InterCLR run) and plots."""
    import papermill

    spec = {
        "notebook": str(TRAIN_NOTEBOOK),
        "base": {
            "method": "interclr",
            "dataset": f"npz:{tiny_npz}",
            "epochs": 1,
            "batch_size": 64,
            "device": "cpu",
            "linear_probe": False,
            "overrides": {
                "backbone": "convnet", "cifar_stem": False, "queue_size": 256, "knn_k": 20,
                "kmeans_backend": "torch",
            },
        },
        "grid": STUDIES[study],
    }  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    (status,) = run_sweep(sweep_from_spec(spec), sweep_dir, progress=False)
    assert status["state"] == "done", status.get("error")
    executed = tmp_path / study
    papermill.execute_notebook(
        str(TRAIN_NOTEBOOK.parent / study),
        str(executed),
        parameters={"sweep_dir": str(sweep_dir), "probe_queries": 32},
        cwd=str(TRAIN_NOTEBOOK.parents[1]),
        progress_bar=False,
    )
    notebook = nbformat.read(executed, as_version=4)
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, f"{study} drew no figure"
    assert (sweep_dir / "summary.md").exists()
    markdown = "".join(
        o.get("data", {}).get("text/markdown", "")
        for c in notebook.cells
        for o in c.get("outputs", [])
    )
    assert "knn_top1_head" in markdown  # the report's table has both kNN protocols
    if study == "03_decision_boundary.ipynb":  # saturation at a glance: p(positive) per margin
        assert "| margin | cos, t=0.1 | arc, t=0.1 | cos, t=0.2 | arc, t=0.2 |" in markdown
        assert "| -0.5 | " in markdown


@pytest.mark.slow  # executes the report notebook: 15 s
def test_report_notebook_shows_the_table(toy_notebook, tmp_path):
    import papermill

    out = tmp_path / "toy"
    run_sweep(
        sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 2]})), out, progress=False
    )
    executed = tmp_path / "report.ipynb"
    papermill.execute_notebook(
        str(TRAIN_NOTEBOOK.parent / "report.ipynb"),
        str(executed),
        parameters={"sweep_dir": str(out)},
        progress_bar=False,
    )
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| a=1 | 1 | 0 |" in markdown and "| a=2 | 1 | 0 |" in markdown


def test_optional_ints_and_dotted_keys_extend_the_notebook_dict(toy_notebook, tmp_path):
    sweep = sweep_from_spec(
        toy_spec(toy_notebook, tmp_path, grid={"limit": [None, 3], "extra.y": [2]})
    )
    assert [r.parameters["limit"] for r in sweep.runs] == [None, 3]
    assert sweep.runs[0].parameters["extra"] == {"x": 1, "y": 2}  # the notebook default, extended


def test_rerun_with_other_parameters_is_refused(toy_notebook, tmp_path):
    out = tmp_path / "refuse"
    run_sweep(
        sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1]})), out, progress=False
    )
    changed = toy_spec(toy_notebook, tmp_path, grid={"a": [1]})
    changed["base"]["sleep"] = 0.01
    with pytest.raises(ValueError, match="holds run\\(s\\) made with other parameters: a=1-seed0"):
        run_sweep(sweep_from_spec(changed), out, progress=False)


def test_relative_out_from_another_working_folder(toy_notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    statuses = run_sweep(
        sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 2]})),
        "rel",
        workers=2,
        progress=False,
    )
    assert [s["state"] for s in statuses] == ["done", "done"]
    assert (tmp_path / "rel" / "a=1-seed0" / "metrics.json").exists()
    assert Path.cwd() == tmp_path  # the sweep never moved our working folder


def test_report_of_failed_runs_only_is_a_valid_table(toy_notebook, tmp_path):
    (tmp_path / "fail").touch()
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [2], "b": [1.0]})
    out = tmp_path / "failing"
    (status,) = run_sweep(sweep_from_spec(spec), out, progress=False)
    assert status["state"] == "failed" and status["error"] == "RuntimeError: forced failure"
    table = write_report(out, plots=False)["markdown"].read_text().splitlines()
    assert table[0] == "| setting | seeds | failed |" and table[1] == "|---|---|---|"
    assert table[2] == "| a=2,b=1.0 | 0 | 1 |"


def test_stopping_a_running_notebook_leaves_no_status(toy_notebook, tmp_path):
    import threading
    import time

    from interlab.lab.sweep import RunExecutor

    (run,) = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"sleep": [60.0]})).runs
    executor = RunExecutor(Path(toy_notebook), None)
    threading.Timer(4.0, executor.stop_all).start()
    start = time.perf_counter()
    assert executor.execute(run, tmp_path / "stopped", None) is None
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "stopped" / "status.json").exists()  # a rerun will execute it again


# Several runs at once on one device (--runs-per-device): the scheduling runs for real, the
# notebooks are stood in for by FakeNotebooks (papermill's kernel start takes seconds).


class FakeNotebooks:
    """Papermill's stand-in: each run sleeps, then writes metrics.json (or fails for a=2 while
    `fail` is set); it counts the runs alive at once on each device.

    With `together` N, a run also stays alive until N runs are alive at once (or every one of
    the `expected` runs has started): the overlap a test asserts is then made to happen, not
    hoped for from sleeps on a loaded machine. The scheduler still decides who may start."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds, self.fail = seconds, False
        self.together: int | None = None
        self.expected = 0
        self.lock = threading.Condition()
        self.alive: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.most_in_all = 0
        self.executed: list[str] = []

    def __call__(self, parameters: dict, run_dir: Path) -> int:
        device = parameters.get("device", "cpu")
        with self.lock:
            self.alive[device] += 1
            self.most[device] = max(self.most[device], self.alive[device])
            self.most_in_all = max(self.most_in_all, sum(self.alive.values()))
            self.executed.append(run_dir.name)
            self.lock.notify_all()
            if self.together is not None:
                self.lock.wait_for(self._enough_together, timeout=30)
        time.sleep(self.seconds)
        with self.lock:
            self.alive[device] -= 1
        if self.fail and parameters["a"] == 2:
            (run_dir / "run.log").write_text("RuntimeError: forced failure\n")
            return 1
        (run_dir / "metrics.json").write_text(json.dumps({"knn_top1": 0.5}))
        return 0

    def _enough_together(self) -> bool:
        return sum(self.alive.values()) >= self.together or len(self.executed) >= self.expected


@pytest.fixture
def fake_notebooks(monkeypatch) -> FakeNotebooks:
    fake = FakeNotebooks()
    monkeypatch.setattr(RunExecutor, "_papermill", staticmethod(fake))
    return fake


def no_gpu(device: str) -> DeviceMemory | None:
    return None


def gpu_with(free_gb: float, total_gb: float = 80.0):
    def probe(device: str) -> DeviceMemory | None:
        return DeviceMemory(free_gb, total_gb) if device.startswith("cuda") else None

    return probe


def most_at_once(statuses: list[dict], device: str | None = None) -> int:
    """The most runs alive at once by their recorded start and finish times."""
    events = []
    for status in statuses:
        if device is None or status["device"] == device:
            events += [(datetime.fromisoformat(status["started"]), 1)]
            events += [(datetime.fromisoformat(status["finished"]), -1)]
    alive = most = 0
    for _, change in sorted(events):  # a finish sorts before a start at the same instant
        alive += change
        most = max(most, alive)
    return most


def test_k_runs_share_the_cpu_at_once_and_never_more(toy_notebook, tmp_path, fake_notebooks):
    fake_notebooks.together, fake_notebooks.expected = 3, 7
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3, 4, 5, 6, 7, 8]})
    statuses = run_sweep(
        sweep_from_spec(spec), tmp_path / "s", runs_per_device=3, progress=False,
        memory_probe=no_gpu,
    )  # fmt: skip
    assert [s["state"] for s in statuses] == ["done"] * 7
    assert fake_notebooks.most == {"cpu": 3}  # three at once, never four
    assert most_at_once(statuses) == 3
    assert {s["device"] for s in statuses} == {"cpu"}
    assert sorted(s["runs_on_device"] for s in statuses)[:3] == [1, 2, 3]
    assert max(s["runs_on_device"] for s in statuses) == 3
    recorded = json.loads((tmp_path / "s" / "a=1-seed0" / "status.json").read_text())
    assert recorded["device"] == "cpu" and recorded["runs_on_device"] in (1, 2, 3)


def test_k_runs_on_each_listed_device(toy_notebook, tmp_path, fake_notebooks):
    fake_notebooks.together, fake_notebooks.expected = 4, 8
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3, 4, 5, 6, 7, 8, 9]})
    statuses = run_sweep(
        sweep_from_spec(spec), tmp_path / "s", devices=["cuda:0", "cuda:1"],
        runs_per_device=2, progress=False, memory_probe=gpu_with(100.0),
    )  # fmt: skip
    assert [s["state"] for s in statuses] == ["done"] * 8
    assert fake_notebooks.most == {"cuda:0": 2, "cuda:1": 2} and fake_notebooks.most_in_all == 4
    assert all(s["parameters"]["device"] == s["device"] for s in statuses)
    assert {s["device"] for s in statuses} == {"cuda:0", "cuda:1"}
    assert most_at_once(statuses, "cuda:0") <= 2 and most_at_once(statuses, "cuda:1") <= 2
    assert most_at_once(statuses) >= 3  # the two devices worked side by side


def test_without_devices_each_run_shares_its_own_device_k_at_once(
    toy_notebook, tmp_path, fake_notebooks
):
    """Four CPU runs first, then four on cuda:1: the pool has four workers, but the CPU
    takes two at a time while the GPU's runs wait for their own turn."""
    fake_notebooks.together, fake_notebooks.expected = 2, 8
    spec = toy_spec(toy_notebook, tmp_path, grid={"device": ["cpu", "cuda:1"], "a": [1, 3, 4, 5]})
    statuses = run_sweep(
        sweep_from_spec(spec), tmp_path / "s", runs_per_device=2, progress=False,
        memory_probe=gpu_with(100.0),
    )  # fmt: skip
    assert [s["state"] for s in statuses] == ["done"] * 8
    assert fake_notebooks.most == {"cpu": 2, "cuda:1": 2}
    assert [s["device"] for s in statuses] == ["cpu"] * 4 + ["cuda:1"] * 4
    assert most_at_once(statuses, "cpu") == 2 and most_at_once(statuses, "cuda:1") == 2


def test_a_run_waits_while_our_runs_hold_the_memory_it_needs(
    toy_notebook, tmp_path, fake_notebooks, capsys
):
    """15 GB free, 10 GB a run: the second run would only have 15 - 10 = 5 GB once the
    first has allocated, so the runs take the device one at a time."""
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3, 4]})
    statuses = run_sweep(
        sweep_from_spec(spec), tmp_path / "s", devices=["cuda:0"], runs_per_device=2,
        min_free_gb=10, progress=False, memory_probe=gpu_with(15.0), poll_s=0.05,
    )  # fmt: skip
    assert [s["state"] for s in statuses] == ["done"] * 3
    assert fake_notebooks.most == {"cuda:0": 1} and most_at_once(statuses) == 1
    assert [s["runs_on_device"] for s in statuses] == [1, 1, 1]
    assert (
        "waiting for GPU memory: cuda:0 has 5.0 of 80.0 GB free for a new run (1 of ours "
        "there), a run needs 10.0 GB (--min-free-gb)"
    ) in capsys.readouterr().out


def test_a_run_waits_until_another_process_frees_the_gpu(
    toy_notebook, tmp_path, fake_notebooks, capsys
):
    """Someone else holds all but 4 GB for half a second; the default need (8 GB with
    several runs per device) makes the run wait, then it starts."""
    start = time.monotonic()

    def probe(device: str) -> DeviceMemory:
        return DeviceMemory(4.0 if time.monotonic() - start < 0.5 else 60.0, 80.0)

    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1]})
    (status,) = run_sweep(
        sweep_from_spec(spec), tmp_path / "s", devices=["cuda:0"], runs_per_device=2,
        progress=False, memory_probe=probe, poll_s=0.05,
    )  # fmt: skip
    assert status["state"] == "done" and status["runs_on_device"] == 1
    assert fake_notebooks.executed == ["a=1-seed0"]
    assert time.monotonic() - start >= 0.5 + fake_notebooks.seconds
    out = capsys.readouterr().out
    assert "cuda:0 has 4.0 of 80.0 GB free for a new run (0 of ours there)" in out
    assert f"a run needs {DEFAULT_RUN_GB:.1f} GB (--min-free-gb)" in out


def test_a_gpu_too_small_for_one_run_is_refused_before_anything_runs(
    toy_notebook, tmp_path, fake_notebooks
):
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1]})
    with pytest.raises(ValueError, match=r"cuda:1 has 6\.0 GB in all; a run needs 12\.0 GB free"):
        run_sweep(
            sweep_from_spec(spec), tmp_path / "s", devices=["cuda:1"], min_free_gb=12,
            progress=False, memory_probe=gpu_with(6.0, 6.0),
        )  # fmt: skip
    assert not (tmp_path / "s").exists() and fake_notebooks.executed == []


def test_shared_devices_record_a_failure_go_on_and_a_rerun_skips_finished_runs(
    toy_notebook, tmp_path, fake_notebooks
):
    fake_notebooks.fail = True
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1, 2, 3, 4]}))
    statuses = run_sweep(
        sweep, tmp_path / "s", runs_per_device=2, progress=False, memory_probe=no_gpu
    )
    states = {s["run"]: s["state"] for s in statuses}
    assert states == {"a=1-seed0": "done", "a=2-seed0": "failed", "a=3-seed0": "done",
                      "a=4-seed0": "done"}  # fmt: skip
    assert statuses[1]["error"] == "RuntimeError: forced failure"
    assert statuses[1]["device"] == "cpu" and statuses[1]["runs_on_device"] in (1, 2)
    fake_notebooks.fail = False
    again = run_sweep(sweep, tmp_path / "s", runs_per_device=2, progress=False, memory_probe=no_gpu)
    assert [s["state"] for s in again] == ["done"] * 4
    assert fake_notebooks.executed[4:] == ["a=2-seed0"]  # only the failed run ran again


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runs_per_device": 0}, "runs_per_device must be >= 1; got 0"),
        ({"runs_per_device": 2, "workers": 2}, "give workers \\(2\\) or runs_per_device"),
        ({"min_free_gb": 0}, "min_free_gb must be > 0; got 0"),
        ({"devices": []}, "devices is an empty list"),
    ],
)
def test_bad_sharing_options_are_refused(toy_notebook, tmp_path, options, message):
    sweep = sweep_from_spec(toy_spec(toy_notebook, tmp_path, grid={"a": [1]}))
    with pytest.raises(ValueError, match=message):
        run_sweep(sweep, tmp_path / "s", progress=False, memory_probe=no_gpu, **options)
    assert not (tmp_path / "s").exists()


def test_stopping_wakes_a_run_that_waits_for_memory():
    slots = DeviceSlots(2, 10.0, gpu_with(1.0), poll_s=60.0, say=lambda line: None)
    got = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(["cuda:0"])))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting: 1 GB free, 10 GB needed
    slots.stop()  # Ctrl-C
    waiter.join(timeout=2)
    assert not waiter.is_alive() and got == [None]


def test_runs_at_once_split_the_cpu_threads():
    cores = os.cpu_count() or 1
    assert cpu_threads_per_run(1) is None
    assert cpu_threads_per_run(2) == max(1, cores // 2)
    assert cpu_threads_per_run(4 * cores) == 1


def test_free_memory_comes_from_nvidia_smi_of_the_visible_gpu(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="10240, 81559\n", stderr="")

    monkeypatch.setattr(device_slots.subprocess, "run", fake_run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert nvidia_smi_id("cuda:1") == "5" and nvidia_smi_id("cuda") == "3"
    assert nvidia_smi_id("cuda:2") is None and nvidia_smi_id("cpu") is None
    memory = gpu_memory("cuda:1")
    assert memory == DeviceMemory(10.0, pytest.approx(79.647, abs=1e-3))
    assert calls[-1][-2:] == ["-i", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvidia_smi_id("cuda:1") == "1"
    assert resolve_run_device("auto", gpu_with(1.0)) == "cuda:0"
    assert resolve_run_device("auto", no_gpu) == "cpu"
    assert resolve_run_device("cuda") == "cuda:0" and resolve_run_device("cuda:3") == "cuda:3"
    monkeypatch.setattr(
        device_slots.subprocess, "run",
        lambda command, **kwargs: subprocess.CompletedProcess(command, 9, "", "no driver"),
    )  # fmt: skip
    assert gpu_memory("cuda:0") is None


def test_cli_runs_per_device_runs_notebooks_side_by_side(toy_notebook, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    spec = toy_spec(toy_notebook, tmp_path, grid={"a": [1, 3]})
    spec["base"]["sleep"] = 1.0
    grid.write_text(yaml.safe_dump(spec))
    out = tmp_path / "cli"
    args = ["sweep", str(grid), "--out", str(out), "--no-report"]
    assert main([*args, "--runs-per-device", "2"]) == 0
    assert "2 of 2 runs done" in capsys.readouterr().out
    statuses = [json.loads((out / f"a={a}-seed0" / "status.json").read_text()) for a in (1, 3)]
    assert most_at_once(statuses) == 2  # the two notebooks overlapped in time
    assert {s["device"] for s in statuses} == {"cpu"}
    assert sorted(s["runs_on_device"] for s in statuses) == [1, 2]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runs-per-device", "0"], "runs_per_device must be >= 1; got 0"),
        (["--runs-per-device", "2", "--workers", "2"], "not both"),
        (["--runs-per-gpu", "2"], "--runs-per-gpu is the SLURM executor's"),
        (["--executor", "slurm", "--runs-per-device", "2"], "are the local executor's"),
        (["--devices", "0,x"], "--devices takes GPU ids such as 0,1; got '0,x'"),
    ],
)
def test_cli_refuses_bad_sharing_flags(toy_notebook, tmp_path, capsys, flags, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(toy_spec(toy_notebook, tmp_path, grid={"a": [1]})))
    assert main(["sweep", str(grid), "--out", str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_listed_devices_take_runs_per_device_not_workers(toy_notebook, tmp_path):
    """With --devices, `workers` would be ambiguous (in all, or per device?): refused by name;
    runs_per_device defaults to one run per listed device, as before devices could be shared."""
    from interlab.lab.sweep import runs_at_once

    assert runs_at_once(1, None, ["cuda:0", "cuda:1"]) == 1
    assert runs_at_once(1, 3, ["cuda:0"]) == 3
    assert runs_at_once(4, None) == 4
    with pytest.raises(ValueError, match=r"with devices \(cuda:0, cuda:1\) give runs_per_device"):
        runs_at_once(4, None, ["cuda:0", "cuda:1"])
