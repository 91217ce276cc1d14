"""The CUDA-graphed training step against the eager one (marker `gpu`, skipped without CUDA).

Imports only what a bare GPU machine has (torch, numpy, pytest, interlab)."""

from __future__ import annotations

import pytest
import torch

from interlab.config import build_config
from interlab.train import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def graph_config(out, **keys):
    base = {
        "method": "moco", "data": "cifar10-mini", "device": "cuda", "backbone": "resnet18",
        "cifar_stem": True, "epochs": 1, "batch_size": 128, "max_steps_per_epoch": 8,
        "eval_every": 0, "deterministic": True, "out": str(out),
    }  # fmt: skip
    if keys.get("method", "moco") == "moco":
        base.update(symmetric=True, split_bn=8, queue_size=1024)
    return build_config({**base, **keys})


def losses_of_steps(config, steps: int) -> tuple[list[float], Trainer]:
    trainer = Trainer(config, progress=False)
    trainer.model.train()
    order = trainer.epoch_order()
    batch = config.batch_size
    losses = []
    for i in range(steps):
        outputs = trainer.train_step(order[i * batch : (i + 1) * batch])
        losses.append(float(outputs["loss"]))
    return losses, trainer


@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_graphed_steps_replay_what_eager_steps_compute(tmp_path, method):
    """Three eager warm-up steps, a capture, then replays: each step's loss and the final
    weights match an eager run of the same seed (the augmentation's generator is registered
    with the graph, so replays draw the eager run's random numbers)."""
    keys = {"method": method}
    eager, eager_trainer = losses_of_steps(graph_config(tmp_path / "a", **keys), 8)
    graphed, graph_trainer = losses_of_steps(
        graph_config(tmp_path / "b", cuda_graph=True, **keys), 8
    )
    assert graph_trainer.graphed is not None and graph_trainer.graphed.captured
    assert graphed == pytest.approx(eager, rel=2e-3), (graphed, eager)
    expected = eager_trainer.method.state_dict()
    for name, value in graph_trainer.method.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=2e-3, atol=2e-4, msg=name)
        else:
            assert torch.equal(value, expected[name]), name


def test_a_graphed_run_trains_evaluates_and_resumes(tmp_path):
    config = graph_config(tmp_path, cuda_graph=True, epochs=2, eval_every=1, deterministic=False)
    result = Trainer(config, progress=False).fit(stop_after_epochs=1)
    assert result.metrics[-1]["epoch"] == 1
    resumed = Trainer(config, progress=False).fit()
    assert resumed.final["epoch"] == 2 and resumed.final["step"] == 16
    assert 0.0 <= resumed.final["knn_top1"] <= 1.0
    assert torch.isfinite(torch.tensor(resumed.final["loss"]))
