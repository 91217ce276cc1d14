"""The ImageNet-config cost script's measuring path, on the CPU (a GPU machine runs it with
`--measure cuda` from the GPU pack): a real step of a named config, timed, with the run's
hours derived from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def config_cost():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling stream_speed
    try:
        spec = importlib.util.spec_from_file_location("config_cost", BENCHMARKS / "config_cost.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_measured_step_gives_the_runs_hours_on_eight_gpus(config_cost, tmp_path):
    row = config_cost.measured_step(
        "interclr_imagenet100", tmp_path, "cpu", steps=1,
        batch_size=4, backbone="convnet", **{"aug.size": 64},
    )  # fmt: skip
    assert row["config"] == "interclr_imagenet100" and row["batch_per_gpu"] == 4
    assert row["peak_gb"] is None and row["device"] == "cpu"  # memory is read on CUDA only
    steps = 126_689 // (4 * 8) * 200
    assert row["hours_8gpu"] == pytest.approx(row["step_s"] * steps / 3600, rel=0.01, abs=0.01)
    assert row["images_per_s"] == pytest.approx(4 / row["step_s"], rel=0.01)


def test_dataset_terms_count_interclrs_bank_for_the_real_size(config_cost):
    keys = {"method": "interclr", "num_negatives": 16_384, "proj_dim": 128}
    terms = config_cost.dataset_terms(keys, 32, 1_281_167)
    assert terms["bank"] == 1_281_167 * (128 * 4 + 8)  # fp32 features + int64 label
    assert terms["negatives"] == 32 * 16_384 * 128 * 4 + 32 * 16_385 * 4 * 3
    assert config_cost.dataset_terms({"method": "moco"}, 32, 10) == {}
