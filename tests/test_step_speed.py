"""The fast step's pieces on a CPU: a device-tensor learning rate, the graphed step's checks,
one augmentation call and one encoder pass per step, and an operator budget per step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from interlab.config import build_config
from interlab.optim import build_optimizer, set_lr
from interlab.train import Trainer
from tests.conftest import cpu_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import op_counts


def _sgd_steps(lr: float | torch.Tensor, rates: list[float]) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = build_optimizer(model, "sgd", lr, momentum=0.9, weight_decay=5e-4)
    inputs = torch.randn(8, 4)
    for rate in rates:
        set_lr(optimizer, rate)
        optimizer.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_a_tensor_learning_rate_is_filled_in_place_and_steps_like_a_float():
    rates = [0.1, 0.05, 0.02]
    as_float = _sgd_steps(0.1, rates)
    rate = torch.tensor(0.1)
    as_tensor = _sgd_steps(rate, rates)
    for a, b in zip(as_float, as_tensor, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the same tensor, filled by set_lr (a graph reads it there)
    assert float(rate) == pytest.approx(0.02)


def test_sgd_is_multi_tensor_on_a_cpu():
    optimizer = build_optimizer(nn.Linear(2, 2), "sgd", 0.1, 0.9, 0.0)
    assert optimizer.param_groups[0]["foreach"] is True


def test_cuda_graph_is_refused_with_every_reason(tmp_path, tiny_npz):
    config = cpu_config(tmp_path, f"npz:{tiny_npz}", cuda_graph=True, method="interclr")
    config.optimizer = "lars"
    with pytest.raises(ValueError) as error:
        Trainer(config, progress=False)
    message = str(error.value)
    assert "cuda_graph=true cannot be used" in message
    assert "needs a CUDA device" in message
    assert "'interclr' is not graph-safe" in message
    assert "optimizer sgd" in message


def test_a_step_makes_one_augmentation_call_and_one_pass_per_encoder(tmp_path, tiny_npz):
    """Both views in one augmentation call, one query pass and one key pass (symmetric)."""
    config = cpu_config(tmp_path, f"npz:{tiny_npz}", symmetric=True, split_bn=4)
    trainer = Trainer(config, progress=False)
    method = trainer.method
    calls = {"augment": 0, "encoder": 0, "key_encoder": 0}
    original = method.augment.__class__.__call__

    def counting_augment(self, images, generator=None, sizes=None):
        calls["augment"] += 1
        return original(self, images, generator, sizes)

    method.augment.__class__.__call__ = counting_augment
    try:
        method.encoder.register_forward_hook(
            lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1)
        )
        method.key_encoder.register_forward_hook(
            lambda *_: calls.__setitem__("key_encoder", calls["key_encoder"] + 1)
        )
        trainer.train_step(torch.arange(config.batch_size))
    finally:
        method.augment.__class__.__call__ = original
    assert calls == {"augment": 1, "encoder": 1, "key_encoder": 1}


def test_moco_step_stays_within_its_operator_budget():
    """A CIFAR-recipe MoCo step (ResNet-18, split BN 8, symmetric) issued 2,240 kernels and
    3,030 host dispatches before the batched passes, the grouped batch norm and fused
    updates; now about 1,030 and 2,000 (the bare backbone step: 160 and 230). The budget
    fails on a return to per-view passes or to copying batch norm."""
    import argparse

    args = argparse.Namespace(
        data="cifar10-mini", device="cpu", batch_size=16, backbone="resnet18",
        cifar_stem=True, amp=False,
    )  # fmt: skip
    trainer = op_counts.trainer_for("moco_cifar10", args)
    counts = op_counts.count_operators(op_counts.training_step(trainer))
    assert counts["kernels"] < 1300, counts
    assert counts["dispatched"] < 2600, counts


def test_training_step_config_accepts_cuda_graph_key():
    assert build_config({"cuda_graph": True}).cuda_graph is True
    with pytest.raises(ValueError, match="cuda_graph"):
        build_config({"cuda_graph": "yes"})


def test_a_resumed_run_keeps_its_own_optimiser_kernels_and_kind_of_learning_rate(
    tmp_path, tiny_npz
):
    """A checkpoint's optimiser state carries the kernels and rate objects of the run that
    wrote it. Resumed by a graphed run, a float rate must become a tensor again (a float
    would be baked into the captured graph, the schedule lost) and the SGD stay fused (a
    CPU checkpoint's multi-tensor SGD reads a tensor rate on the host, a sync the capture
    refuses); resumed eagerly, a graphed run's tensor rate becomes a float."""
    trainer = Trainer(cpu_config(tmp_path, f"npz:{tiny_npz}"), progress=False)
    group = trainer.optimizer.param_groups[0]
    group.update(lr=torch.tensor(0.03), foreach=None)  # as a foreign checkpoint would load
    trainer._optimizer_as_this_run_keeps_it([{"fused": None, "foreach": True}])
    assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(0.03)
    assert group["foreach"] is True
    trainer.config.cuda_graph = True
    group.update(foreach=True, fused=None)
    trainer._optimizer_as_this_run_keeps_it([{"fused": True, "foreach": None}])
    assert isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(0.03)
    assert (group["fused"], group["foreach"]) == (True, None)


def test_resume_keeps_the_runs_optimizer_kernels(tmp_path, tiny_npz):
    """Through a real checkpoint: a run's SGD flags survive load_state_dict of a state saved
    with other flags."""
    config = cpu_config(tmp_path, f"npz:{tiny_npz}", epochs=1)
    Trainer(config, progress=False).fit()
    checkpoint = tmp_path / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    for group in state["optimizer"]["param_groups"]:
        group["foreach"] = None  # as an older interlab wrote it
    torch.save(state, checkpoint)
    resumed = Trainer(cpu_config(tmp_path, f"npz:{tiny_npz}", epochs=2), progress=False)
    resumed.load_checkpoint(checkpoint)
    assert resumed.optimizer.param_groups[0]["foreach"] is True


def test_only_methods_whose_step_never_syncs_may_be_graphed():
    """MoCo and SimCLR; subclasses of MoCo with host work in their steps say no themselves."""
    from interlab.methods import METHOD_NAMES, method_class

    safe = {name for name in METHOD_NAMES if method_class(name).graph_safe}
    assert safe == {"moco", "simclr"}


HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim",
                 "unique_consecutive", "repeat_interleave", "bincount"}  # fmt: skip


class HostSyncs(TorchDispatchMode):
    """Records the operators that make a GPU wait for the host or the host for the GPU: a
    scalar read (`.item()`, `float(t)`, `if t:`), an output sized by the data (nonzero,
    unique, bincount, boolean-mask indexing). On a CPU these cost nothing, but they are the
    same operators a CUDA step would sync on, and a CUDA graph cannot capture them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in HOST_SYNC_OPS or (name.startswith("index") and _has_bool_index(args)):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def test_the_host_sync_detector_sees_scalar_reads_and_mask_indexing():
    values = torch.arange(6.0)
    with HostSyncs() as probe:
        float(values.sum())
        values[values > 2].sum()
        values.square().mean()
    assert sorted(probe.found) == ["_local_scalar_dense", "index"]


@pytest.mark.parametrize("name", ["moco", "simclr"])
def test_a_graph_safe_method_steps_without_host_syncs(tmp_path, tiny_npz, name):
    """The promise `graph_safe` makes: the whole step body (views, forward, backward, SGD,
    momentum update) reads nothing back on the host. The other methods are refused a graph
    for the syncs this finds in theirs (InterCLR's online relabelling, the distillation
    methods' pair masks and clip norms, CycleContrast's crop checks)."""
    from interlab.methods import method_class

    assert method_class(name).graph_safe
    config = cpu_config(tmp_path, f"npz:{tiny_npz}", method=name)
    trainer = Trainer(config, progress=False)
    indices = torch.arange(config.batch_size)
    trainer.step_body(indices)  # lazy state (optimiser buffers) on the first step
    with HostSyncs() as probe:
        trainer.step_body(indices)
    assert probe.found == []
