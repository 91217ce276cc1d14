import json
from pathlib import Path

import nbformat
import pytest

from interlab.lab.quickstart import execute_quickstart_notebook

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").rglob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


def test_every_notebook_has_a_parameters_cell():
    for path in NOTEBOOKS:
        tags = [c.metadata.get("tags", []) for c in nbformat.read(path, as_version=4).cells]
        assert any("parameters" in t for t in tags), path.name


def test_quickstart_runs_headless_with_papermill(tmp_path, tiny_npz):
    paths = execute_quickstart_notebook(
        dataset=f"npz:{tiny_npz}", epochs=1, device="cpu", out_dir=tmp_path
    )
    summary = json.loads(paths["metrics"].read_text())
    assert 0 <= summary["knn_top1"] <= 1 and 0 <= summary["knn_top1_untrained"] <= 1
    assert summary["epochs"] == 1 and summary["device"].startswith("cpu")
    assert len(summary["per_epoch"]) == 1
    assert paths["notebook"].exists() and paths["curves"].exists()
