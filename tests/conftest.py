"""Shared fixtures: tiny data sets cut from the embedded mini subset, CPU-sized configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interlab.config import build_config
from interlab.data import load_dataset, write_npz

torch.set_num_threads(2)
# CUBLAS_WORKSPACE_CONFIG is set by importing interlab (above), before any test's CUDA work.


@pytest.fixture(scope="session")
def mini_train():
    return load_dataset("cifar10-mini", "train")


@pytest.fixture(scope="session")
def mini_test():
    return load_dataset("cifar10-mini", "test")


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory, mini_train, mini_test) -> Path:
    """256 training and 128 test images in the embedded format: fast runs for trainer tests."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    write_npz(
        path,
        {
            "train": mini_train.subset(torch.arange(256)),
            "test": mini_test.subset(torch.arange(128)),
        },
    )
    return path


@pytest.fixture(scope="session")
def mixed_npz(tmp_path_factory, mini_train, mini_test):
    """512 training images from all ten classes (the mini set is sorted by class)."""
    path = tmp_path_factory.mktemp("data") / "mixed.npz"
    write_npz(
        path,
        {
            "train": mini_train.subset(torch.arange(0, 5000, 5000 // 512)[:512]),
            "test": mini_test.subset(torch.arange(0, 1000, 5)),
        },
    )
    return path


@pytest.fixture(scope="session")
def mixed_train(mixed_npz):
    return load_dataset(f"npz:{mixed_npz}", "train")


def cpu_config(out: Path, data: str, **overrides):
    """A CPU-sized config (MoCo unless `method=`): small ConvNet, small queue, kNN every epoch."""
    keys = {
        "method": "moco",
        "data": data,
        "device": "cpu",
        "backbone": "convnet",
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.06,
        "eval_every": 1,
        "checkpoint_every": 1,
        "knn_k": 20,
        "queue_size": 256,
        "out": str(out),
        "log_every": 2,
    }
    keys.update(overrides)
    if keys["method"] not in ("moco", "interclr", "cyclecontrast"):
        keys.pop("queue_size", None)  # the methods without a queue
    return build_config(keys)


def assert_same_state(expected: dict, got: dict, exact: tuple[str, ...] = ()) -> None:
    """A resumed run's state equals an uninterrupted one's: the same keys, every tensor within
    1e-6, and the names in `exact` (indices, pointers, ids) equal to the bit."""
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name in exact:
        assert torch.equal(expected[name], got[name]), name
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-6), name


@pytest.fixture(scope="module")
def frames_shards(tmp_path_factory) -> Path:
    """`prepare --frames` of 24 short videos of one gliding shape each (real video ids)."""
    from interlab.data.prepare import prepare
    from interlab.videos import write_moving_shapes

    root = tmp_path_factory.mktemp("frames")
    write_moving_shapes(root / "videos", videos=24)
    prepare(root / "videos", root / "shards", frames=True, max_side=64, progress=False)
    return root / "shards"


def tensors_of(thing) -> dict[str, torch.Tensor]:
    """The tensor attributes of an object (a set's tables, an index's), by name."""
    return {name: value for name, value in vars(thing).items() if isinstance(value, torch.Tensor)}
