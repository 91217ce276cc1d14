"""The learning-rate schedule and LARS against values worked out by hand, and the trainer's
per-step learning rates against the schedule."""

import math

import pytest
import torch
from torch import nn

from interlab.optim import LARS, build_optimizer, cosine_lr
from interlab.train import Trainer
from tests.conftest import cpu_config

# ---- cosine schedule ----------------------------------------------------------------------------


def test_warm_up_is_linear_then_half_a_cosine_down_to_the_floor():
    # 10 steps, 4 of warm-up, base 0.8, floor 0.1: the cosine spans steps 4..10.
    def lr(step):
        return cosine_lr(step, 10, 4, 0.8, min_lr=0.1)

    assert [lr(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr(4) == pytest.approx(0.8)  # the top, reached at the last warm-up step
    assert lr(5) == pytest.approx(0.1 + 0.35 * (1 + math.sqrt(3) / 2))  # cos(pi / 6)
    assert lr(7) == pytest.approx(0.45)  # half-way: the middle of 0.8 and 0.1
    assert lr(10) == pytest.approx(0.1)
    assert lr(25) == pytest.approx(0.1)  # past the end: held at the floor
    assert cosine_lr(5, 10, 0, 1.0) == pytest.approx(0.5)  # no warm-up, floor 0


def test_trainer_steps_follow_the_schedule_and_log_it_per_epoch(tmp_path, tiny_npz):
    """Epochs cut to 2 steps of 16 images: 6 steps in all, the first 2 warming up."""
    config = cpu_config(
        tmp_path / "run", f"npz:{tiny_npz}", epochs=3, batch_size=16, max_steps_per_epoch=2,
        lr=0.4, min_lr=0.04, warmup_epochs=1, eval_every=0, checkpoint_every=3,
    )  # fmt: skip
    trainer = Trainer(config, progress=False)
    used = []
    optimizer_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        used.append([group["lr"] for group in trainer.optimizer.param_groups])
        return optimizer_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    metrics = trainer.fit(resume=False).metrics
    # Warm-up 0.4 * (s + 1) / 2, then 0.04 + 0.18 * (1 + cos(pi * (s - 2) / 4)).
    by_hand = [0.2, 0.4, 0.4, 0.347279, 0.22, 0.092721]
    assert [lrs[0] for lrs in used] == pytest.approx(by_hand, abs=1e-6)
    assert all(len(set(lrs)) == 1 for lrs in used)  # every parameter group alike
    # Each epoch logs where the schedule stands at its end: steps 2, 4 and 6 (the floor).
    assert [m["lr"] for m in metrics] == pytest.approx([0.4, 0.22, 0.04], abs=1e-6)


# ---- LARS ---------------------------------------------------------------------------------------


def test_lars_steps_match_a_hand_computation():
    """A Linear(2, 1): its weight takes LARS steps (weight decay, trust ratio, momentum), its
    bias plain momentum SGD steps without weight decay."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))  # norm 5
        layer.bias.copy_(torch.tensor([1.0]))
    optimizer = build_optimizer(layer, "lars", lr=1.0, momentum=0.9, weight_decay=0.1)
    assert isinstance(optimizer, LARS)
    adapted, plain = optimizer.param_groups
    assert adapted["params"] == [layer.weight] and adapted["lars"]
    assert plain["params"] == [layer.bias] and not plain["lars"] and plain["weight_decay"] == 0

    # Step 1: update = g + 0.1 w = (0.8, 1.5), norm 1.7; trust = 0.001 * 5 / 1.7.
    layer.weight.grad = torch.tensor([[0.5, 1.1]])
    layer.bias.grad = torch.tensor([0.2])
    optimizer.step()
    trust = 0.001 * 5 / 1.7
    w1 = [3.0 - trust * 0.8, 4.0 - trust * 1.5]
    assert layer.weight[0].tolist() == pytest.approx(w1, rel=1e-6)
    assert w1 == pytest.approx([2.997647, 3.995588], abs=1e-6)
    assert layer.bias.item() == pytest.approx(0.8)  # 1 - 0.2: no decay, no trust ratio

    # Step 2: the buffers carry 0.9 of step 1's (scaled) updates.
    layer.weight.grad = torch.tensor([[-0.5, 0.25]])
    layer.bias.grad = torch.tensor([0.1])
    optimizer.step()
    update = [-0.5 + 0.1 * w1[0], 0.25 + 0.1 * w1[1]]
    trust2 = 0.001 * math.hypot(*w1) / math.hypot(*update)
    buffer = [0.9 * trust * 0.8 + trust2 * update[0], 0.9 * trust * 1.5 + trust2 * update[1]]
    assert layer.weight[0].tolist() == pytest.approx(
        [w1[0] - buffer[0], w1[1] - buffer[1]], rel=1e-6
    )
    assert layer.bias.item() == pytest.approx(0.8 - (0.9 * 0.2 + 0.1))


def test_lars_zero_weights_take_the_plain_gradient_step():
    """A zero-norm parameter has no trust ratio to speak of: it is 1, not 0 or NaN."""
    weight = nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    LARS([weight], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(weight, -0.1 * weight.grad)
