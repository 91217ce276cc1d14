"""Shared fixtures: tiny data sets cut from the embedded mini subset, CPU-sized configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from interlab.config import build_config
from interlab.data import load_dataset, write_npz
from interlab.devices import CUBLAS_DETERMINISTIC_WORKSPACE

torch.set_num_threads(2)
# Before any test's first CUDA matmul (cuBLAS reads it once per process), so the GPU tests'
# deterministic runs hold whatever ran before them; importing interlab sets it too.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)


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
    """A CPU-sized MoCo config: small ConvNet, small queue, kNN every epoch."""
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
    return build_config(keys)


def assert_same_state(expected: dict, got: dict, exact: tuple[str, ...] = ()) -> None:
    """A resumed run's state equals an uninterrupted one's: the same keys, every tensor within
    1e-6, and the names in `exact` (indices, pointers, ids) equal to the bit."""
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name in exact:
        assert torch.equal(expected[name], got[name]), name
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-6), name
