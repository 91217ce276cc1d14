"""Sweeps of parameterized notebooks: expansion, checks, failures, resume, report, CLI."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from interlab.cli import main
from interlab.lab.experiment import check_training_run
from interlab.lab.notebook_params import declared_parameters
from interlab.lab.report import collect_runs, summarise, write_report
from interlab.lab.sweep import load_sweep, run_sweep, sweep_from_spec

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
        'extra: dict = {"x": 1}'
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
