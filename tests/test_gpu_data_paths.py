"""Every data path correct on CUDA (marker `gpu`, skipped without CUDA).

A run's tables (a streamed set's labels, sizes and video ids, InterCLR's true labels,
CycleContrast's video index) live on the run's device; InterCLR trains from shards and
CycleContrast from frames shards; a streamed step maps its rows and pastes its batch without
waiting for the GPU. Imports only what the GPU machine has (no papermill, ipywidgets, umap,
faiss); the image tree is `tests.test_prepare.make_tree`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from interlab.config import build_config
from interlab.data.prepare import prepare
from interlab.data.shards import ShardSet, paste_on_host, paste_padded
from interlab.sampling import NEGATIVE_STRATEGIES
from interlab.train import Trainer
from tests.conftest import tensors_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
INTERCLR = {"method": "interclr", "num_clusters": 6, "num_negatives": 16, "pool": 40,
            "min_cluster": 4, "probe_queries": 16}  # fmt: skip
CYCLE = {"method": "cyclecontrast", "queue_size": 32, "cycle_queue_size": 32, "support_size": 16}


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> Path:
    """74 labelled training images of many sizes (plus val/): the labelled shards path."""
    from tests.test_prepare import make_tree

    root = tmp_path_factory.mktemp("images")
    make_tree(root / "tree", per_class=24)
    prepare(root / "tree", root / "shards", max_side=96, workers=1, progress=False)
    return root / "shards"


def cuda_config(shards: Path, out: Path, **keys):
    """Three steps of 16 at 32 px on the small ConvNet: the path, not the model, is tested."""
    base = {
        "data": f"shards:{shards}", "device": "cuda", "backbone": "convnet", "epochs": 1,
        "batch_size": 16, "max_steps_per_epoch": 3, "knn_k": 10, "aug.size": 32, "out": str(out),
    }  # fmt: skip
    return build_config({**base, **keys})


def off_cuda(tables: dict[str, torch.Tensor]) -> list[str]:
    return [f"{name} on {value.device}" for name, value in tables.items() if not value.is_cuda]


def test_tables_live_on_the_run_s_device_after_trainer_setup(image_shards, frames_shards, tmp_path):
    trainer = Trainer(cuda_config(image_shards, tmp_path / "images", **INTERCLR), progress=False)
    trainer.start_method()
    for data in (trainer.train_set, trainer.test_set):
        tables = tensors_of(data)
        assert {"labels", "sizes"} <= set(tables) and not off_cuda(tables), off_cuda(tables)
    assert trainer.method.true_labels.is_cuda

    trainer = Trainer(cuda_config(frames_shards, tmp_path / "frames", **CYCLE), progress=False)
    trainer.start_method()
    tables = {
        **tensors_of(trainer.train_set),
        **{f"index.{k}": v for k, v in tensors_of(trainer.method.video_index).items()},
        "item_labels": trainer.method.item_labels,
    }
    assert "videos" in tables and len(tables) == 8 and not off_cuda(tables), off_cuda(tables)


def test_interclr_trains_from_shards_on_cuda(image_shards, tmp_path):
    """The step's false-negative rate and the epoch-end sampler probe index the labels with
    CUDA indices (both crashed while the labels stayed on the CPU)."""
    result = Trainer(cuda_config(image_shards, tmp_path, **INTERCLR), progress=False).fit()
    final = result.final
    assert final["step"] == 3 and np.isfinite(final["loss"])
    assert 0.0 <= final["false_negative_rate"] <= 1.0
    assert all(0.0 <= final[f"fnr_{name}"] <= 1.0 for name in NEGATIVE_STRATEGIES)
    assert 0.0 <= final["knn_top1"] <= 1.0


def test_cyclecontrast_trains_from_frames_shards_on_cuda(frames_shards, tmp_path):
    result = Trainer(cuda_config(frames_shards, tmp_path, **CYCLE), progress=False).fit()
    final = result.final
    assert final["step"] == 3 and np.isfinite(final["loss"])
    assert np.isfinite(final["loss_cycle"]) and final["support_entropy"] >= 0.0


def test_a_streamed_step_maps_its_rows_and_pastes_without_waiting_for_the_gpu(image_shards):
    """Under torch's sync debug mode set to error: a step's slice of the followed order maps
    to its rows, and the decoded images become one padded batch equal to the CPU paste."""
    data = ShardSet(image_shards).to("cuda")
    order = torch.randperm(len(data), device="cuda")
    data.follow_order(order)
    step = order[16:32]
    expected_rows = step.cpu().numpy()
    decoded = data.decode(expected_rows, "cuda")
    sizes = data.entries.sizes[expected_rows].astype(np.int64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rows = data.host_rows(step)
        planar, pasted_sizes = paste_padded(decoded, sizes, torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.array_equal(rows, expected_rows)
    assert planar.is_cuda and pasted_sizes.is_cuda
    assert torch.equal(planar.cpu(), paste_on_host([image.cpu() for image in decoded], sizes))
    assert pasted_sizes.cpu().tolist() == sizes.tolist()
