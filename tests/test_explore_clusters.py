"""ClusterExplorer on synthetic bank snapshots: the right members per cluster, cached maps."""

from pathlib import Path

import numpy as np
import pytest
import torch

from interlab.lab.explore import ClusterExplorer
from interlab.lab.explore.clusters import procrustes_onto
from interlab.snapshots import save_snapshot


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two snapshots of a 240-entry bank: three well-separated clusters, labels known."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    pseudo = np.repeat([0, 1, 2], 80)
    out = tmp_path_factory.mktemp("run")
    for epoch in (0, 5):
        features = centres[pseudo] + rng.normal(size=(240, 16))
        save_snapshot(
            out, epoch, {"features": features.astype(np.float16), "labels": pseudo.astype(np.int32)}
        )
    return out


@pytest.fixture(scope="module")
def data():
    truth = torch.from_numpy(np.repeat([0, 1, 2], 80))
    truth[:10] = 1  # ten images of cluster 0 are in fact class 1
    images = torch.randint(0, 256, (240, 32, 32, 3), dtype=torch.uint8)
    return images, truth


@pytest.mark.slow  # over 10 s on 2 cores: make test-slow / CI
def test_selecting_a_cluster_shows_its_members_and_purity(run_dir, data):
    images, truth = data
    explorer = ClusterExplorer(run_dir, images, truth, members_shown=4)
    assert explorer.epochs == [0, 5] and explorer.epoch.value == 5
    explorer.cluster.value = 0
    assert explorer.current["members"].tolist() == list(range(80))
    shown = explorer.current["shown"]  # a spread sample of the members, not the first four
    assert len(shown) == 4 and set(shown) <= set(range(80)) and shown.tolist() != [0, 1, 2, 3]
    assert explorer.current["majority"] == 0 and explorer.current["purity"] == pytest.approx(
        70 / 80
    )
    assert "purity 0.88" in explorer.message.value and "NMI" in explorer.message.value
    explorer.cluster.value = 2
    assert explorer.current["members"].tolist() == list(range(160, 240))
    assert explorer.current["purity"] == 1.0


@pytest.mark.slow  # embeds the bank with UMAP: make test-slow / CI
def test_cluster_members_and_majority_are_named_by_class(run_dir, data):
    images, truth = data
    names = ["cat", "dog", "ship"]
    explorer = ClusterExplorer(run_dir, images, truth, members_shown=4, classes=names)
    explorer.cluster.value = 0
    assert "majority cat" in explorer.message.value
    fig = explorer.figure()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title() in names]
    assert len(titles) == 4  # every member tile names its class
    assert not any("class " in ax.get_title() for ax in fig.axes)


@pytest.mark.slow  # UMAP of three epochs: 22 s
def test_epochs_are_embedded_once_cached_and_aligned(run_dir, data):
    images, truth = data
    explorer = ClusterExplorer(run_dir, images, truth)
    explorer.epoch.value = 0
    explorer.colour.value = "true class"
    cached = sorted(p.name for p in (run_dir / "snapshots").glob("umap_epoch_*.npy"))
    assert cached == ["umap_epoch_0000.npy", "umap_epoch_0005.npy"]
    assert explorer.embedding(5).shape == (240, 2)
    assert len(explorer.figure().axes) == 1 + 16


def test_procrustes_undoes_a_rotation_and_shift():
    rng = np.random.default_rng(1)
    fixed = rng.normal(size=(50, 2))
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = fixed @ rotation + np.array([5.0, -3.0])
    assert np.allclose(procrustes_onto(moved, fixed), fixed, atol=1e-8)


def test_a_run_without_snapshots_is_a_message(tmp_path, data):
    explorer = ClusterExplorer(tmp_path, *data)
    assert "holds no memory-bank snapshots" in explorer.message.value
    explorer.show()  # shows the message, draws nothing, raises nothing


@pytest.mark.slow  # over 10 s on 2 cores: make test-slow / CI
def test_explore_notebook_runs_headless_on_a_trained_run(tmp_path, tiny_npz):
    """04_explore.ipynb on a 1-epoch InterCLR run: all three explorers draw a static figure."""
    import nbformat
    import papermill

    from interlab.train import train
    from tests.conftest import cpu_config

    config = cpu_config(
        tmp_path / "run",
        f"npz:{tiny_npz}",
        method="interclr",
        epochs=1,
        kmeans_backend="torch",
        snapshot_every=1,
    )
    train(config, progress=False)
    executed = tmp_path / "04.ipynb"
    papermill.execute_notebook(
        str(Path(__file__).parents[1] / "notebooks" / "04_explore.ipynb"),
        str(executed),
        parameters={"run_dir": str(tmp_path / "run"), "probe_queries": 32},
        progress_bar=False,
    )
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    widgets = [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(figures) >= 4 and len(widgets) == 3  # cluster, negatives (+ pool), margin
