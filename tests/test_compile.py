"""compile=true compiles the training step's networks once: evaluation and a resume add no
graphs (marked slow: a cold compile takes 20-60 s on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

from interlab.config import build_config
from interlab.train import Trainer


@pytest.mark.slow
def test_training_evaluation_and_a_resume_add_no_recompiles(tmp_path, capsys):
    """Before: the query and key encoders shared one compiled code object, and eval mode
    and the last, smaller evaluation batch each compiled it again (a 2-core CPU run had not
    finished 2 epochs in 10 minutes). Now the first step compiles one graph per network use
    (query with gradients, key without), evaluation runs the networks eagerly, and neither
    more epochs, kNN on a 1,000-image test split (last batch 488) nor a resume compiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    keys = {
        "method": "moco", "data": "cifar10-mini", "device": "cpu", "backbone": "convnet",
        "epochs": 2, "batch_size": 64, "max_steps_per_epoch": 3, "eval_every": 1,
        "compile": True, "out": str(tmp_path), "queue_size": 256, "knn_k": 20, "amp": False,
    }  # fmt: skip
    trainer = Trainer(build_config(keys), progress=False)
    trainer.model.train()
    trainer.method.on_epoch_start(0)
    trainer.train_step(trainer.epoch_order()[:64])
    after_first_step = counters["stats"]["unique_graphs"]
    assert after_first_step == 2, dict(counters["stats"])
    assert "compiling the training step's networks" in capsys.readouterr().out
    first = Trainer(build_config(keys), progress=False).fit(resume=False)
    assert "knn_top1" in first.final
    resumed = Trainer(build_config({**keys, "epochs": 3}), progress=False).fit()
    assert resumed.final["epoch"] == 3 and "knn_top1" in resumed.final
    assert counters["stats"]["unique_graphs"] == after_first_step, dict(counters["stats"])
