"""The precision policy: one decision for training, evaluation and probes; fp32 where it must be.

`amp` None picks bf16 autocast only where the device runs it natively; `amp=true` forces it
(on this project's AVX2 CPUs too, where it is emulated and slow, but the code path is the
GPU's), `amp=false` is the exact fp32 path. Sections that must not round (InterCLR's bank
similarities and MarginNCE, DINO's prototype scores, every loss's softmax) stay fp32 inside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from interlab import CUBLAS_DETERMINISTIC_WORKSPACE
from interlab.augment import Augment, AugmentConfig
from interlab.augment.exact import full_float32
from interlab.config import build_config
from interlab.devices import (
    configure_backends,
    full_precision,
    matmul_precision,
    native_bf16,
    precision_policy,
)
from interlab.methods import METHOD_NAMES
from interlab.train import Trainer

SMALL_HEADS = {"out_dim": 256, "head_hidden": 128, "head_bottleneck": 64, "n_local": 2}


def small_config(method: str, data: str, out, **keys):
    """A 2-step CPU run of `method` on 512 images with bf16 autocast and channels_last forced."""
    base = {
        "method": method, "data": data, "device": "cpu", "backbone": "convnet",
        "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "knn_k": 20,
        "amp": True, "channels_last": True, "out": str(out),
    }  # fmt: skip
    if method in ("dino", "scfs"):
        base.update(SMALL_HEADS)
    return build_config({**base, **keys})


def test_policy_follows_the_switches():
    cpu = torch.device("cpu")
    assert precision_policy(cpu, amp=True).dtype == torch.bfloat16  # amp=true: bf16 on a CPU
    assert precision_policy(cpu, amp=False).dtype is None
    assert precision_policy(cpu, amp=None).dtype == (torch.bfloat16 if native_bf16(cpu) else None)
    assert precision_policy(cpu, channels_last=True).channels_last
    exact = full_precision(cpu)
    assert exact.dtype is None and not exact.channels_last
    x = torch.randn(2, 3, 8, 8)
    assert precision_policy(cpu).images(x).is_contiguous(memory_format=torch.channels_last)
    with precision_policy(cpu, amp=True).autocast():
        assert torch.is_autocast_enabled("cpu")
    with exact.autocast():
        assert not torch.is_autocast_enabled("cpu")


def fp32_section_probes(method, seen: dict) -> list:
    """Hooks recording what runs in bf16 (the backbone) and what must stay fp32."""
    handles = []
    conv = next(m for m in method.backbone.modules() if isinstance(m, nn.Conv2d))

    def on_conv(_module, inputs, output):
        seen.setdefault("conv_in_channels_last", []).append(
            inputs[0].is_contiguous(memory_format=torch.channels_last)
        )
        seen.setdefault("conv_out", []).append(output.dtype)

    handles.append(conv.register_forward_hook(on_conv))
    if method.name in ("dino", "scfs"):
        head = method.student["head"]
        handles.append(
            head.register_forward_hook(
                lambda _m, _i, out: seen.setdefault("prototypes", []).append(out.dtype)
            )
        )
    if method.name == "interclr":
        inner = method._inter_contrast_fp32

        def recorded(query, indices):
            seen.setdefault("inter_query", []).append(query.dtype)
            seen.setdefault("inter_autocast", []).append(torch.is_autocast_enabled("cpu"))
            loss, rate = inner(query, indices)
            seen.setdefault("inter_loss", []).append(loss.dtype)
            return loss, rate

        method._inter_contrast_fp32 = recorded
    return handles


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_under_bf16_autocast_and_channels_last(method, tmp_path, mixed_npz):
    trainer = Trainer(small_config(method, f"npz:{mixed_npz}", tmp_path), progress=False)
    assert trainer.method.precision.dtype == torch.bfloat16
    seen: dict = {}
    fp32_section_probes(trainer.method, seen)
    losses = []
    step = trainer.train_step

    def recording_step(indices):
        outputs = step(indices)
        losses.append(outputs["loss"])
        return outputs

    trainer.train_step = recording_step
    result = trainer.fit()
    assert set(seen["conv_out"]) == {torch.bfloat16}  # the networks ran under autocast
    assert all(seen["conv_in_channels_last"])
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    if method in ("dino", "scfs"):  # prototype scores (and so the targets) in fp32
        assert set(seen["prototypes"]) == {torch.float32}
    if method == "interclr":  # bank ranks, sampling and MarginNCE outside autocast
        assert set(seen["inter_query"]) == {torch.float32}
        assert not any(seen["inter_autocast"])
        assert set(seen["inter_loss"]) == {torch.float32}
    assert 0 <= result.final["knn_top1"] <= 1  # evaluated under the same policy


# ---- compile=true compiles what every method calls -------------------------------------------------


def one_step_loss(config) -> tuple[float, Trainer]:
    trainer = Trainer(config, progress=False)
    trainer.start_method()
    trainer.model.train()
    indices = torch.arange(config.batch_size) * 3
    return trainer.train_step(indices)["loss"].item(), trainer


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_compile_compiles_every_network_a_step_calls(method, tmp_path, mixed_npz):
    """Dynamo captures graphs for every method (CycleContrast, DINO and SCFS call their
    networks piece by piece, so compiling a wrapper would compile nothing), and one compiled
    step's loss equals eager's within 1e-4 (relative; fp32, inductor reorders sums)."""
    from torch._dynamo.utils import counters

    data = f"npz:{mixed_npz}"
    keys = {"amp": False, "channels_last": False}
    eager, _ = one_step_loss(small_config(method, data, tmp_path / "eager", **keys))
    torch._dynamo.reset()
    counters.clear()
    compiled, trainer = one_step_loss(
        small_config(method, data, tmp_path / "compiled", compile=True, **keys)
    )
    modules = trainer.method.networks_to_compile()
    assert modules and all(m._compiled_call_impl is not None for m in modules)
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert compiled == pytest.approx(eager, rel=1e-4)


def backend_flags() -> tuple:
    """The process-wide flags configure_backends sets, read through interlab's precision API."""
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
    )


@pytest.fixture
def saved_backend_flags():
    """configure_backends sets process-wide flags: put them back for the tests that follow."""
    flags = backend_flags()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[:2]
    torch.set_float32_matmul_precision(flags[2])
    torch.backends.cudnn.allow_tf32 = flags[3]
    torch.use_deterministic_algorithms(flags[4])


def test_deterministic_turns_off_autotune_and_tf32_and_back(saved_backend_flags):
    """Found on an H200: with cuDNN autotune a resumed run drifted from an uninterrupted one.
    The flags are process-wide, so a later fast run must switch them back on."""
    cuda = torch.device("cuda")
    configure_backends(cuda, deterministic=True)
    assert backend_flags() == (False, True, "highest", False, True)
    configure_backends(cuda, deterministic=False)
    assert backend_flags() == (True, False, "high", True, False)


def every_precision_view() -> dict[str, object]:
    """Each of torch's readers of the fp32 precision: each raises when the records disagree
    ("mix of the legacy and new APIs"); torch's compiler calls the legacy ones itself."""
    views = {
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        views["cuda.matmul.fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
        views["mkldnn.matmul.fp32_precision"] = torch.backends.mkldnn.matmul.fp32_precision
    return views


def test_augment_between_fast_and_deterministic_runs_keeps_precision_readable(
    saved_backend_flags,
):
    """The GPU resume test's failure on an H200 (torch 2.11), reproduced on a CPU: a fast run's
    flags, an augmentation call (which raises the matmul precision to "highest" and puts it
    back), then a deterministic run's flags left torch's records of the precision in a state
    that it refuses to read ("mix of the legacy and new APIs"): the next augmentation raised.
    One precision API for both keeps every reader consistent."""
    cuda = torch.device("cuda")
    augment = Augment(AugmentConfig(blur_p=0.5))
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    before, after = [], []
    for deterministic in (False, True, False, True):
        configure_backends(cuda, deterministic)
        before.append(every_precision_view())
        augment(images, torch.Generator().manual_seed(0))  # raised here, in the 2nd round
        after.append(every_precision_view())
    assert after == before  # the augmentation put back every record it changed
    for views, tf32 in zip(before, (True, False, True, False), strict=True):
        assert views["matmul_precision"] == ("high" if tf32 else "highest")
        assert views["cuda.matmul.allow_tf32"] == views["cudnn.allow_tf32"] == tf32


def test_the_augmentation_runs_at_highest_precision_and_restores_the_callers():
    seen = []
    with matmul_precision("medium"):
        with full_float32(torch.device("cpu")):
            seen.append(torch.get_float32_matmul_precision())
        seen.append(torch.get_float32_matmul_precision())
    assert seen == ["highest", "medium"]
    with pytest.raises(ValueError, match="'fast'"), matmul_precision("fast"):
        pass


@pytest.mark.parametrize("preset", [None, ":16:8"])
def test_importing_interlab_fixes_the_cublas_workspace_unless_the_user_did(preset):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, at its first handle: interlab sets
    it at import, before any CUDA work, so deterministic=true holds in any later run."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    if preset is not None:
        env["CUBLAS_WORKSPACE_CONFIG"] = preset
    code = "import os, interlab; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    shown = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert shown == (preset or CUBLAS_DETERMINISTIC_WORKSPACE)


PRECISION_SETTERS = re.compile(r"allow_tf32\s*=|fp32_precision\s*=|set_float32_matmul_precision\(")


def test_one_module_sets_the_precision():
    """Every precision change goes through interlab.devices (set_tf32, matmul_precision), so
    one API is used throughout; tests only put back what they changed."""
    root = Path(__file__).resolve().parent.parent
    setters = [
        str(path.relative_to(root))
        for folder in ("interlab", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        if PRECISION_SETTERS.search(path.read_text())
    ]
    assert setters == ["interlab/devices.py"]


def test_the_trainer_passes_its_deterministic_key(monkeypatch, tmp_path, saved_backend_flags):
    seen = []
    monkeypatch.setattr("interlab.train.configure_backends", lambda d, det: seen.append(det))
    keys = {"method": "moco", "data": "cifar10-mini", "device": "cpu", "out": str(tmp_path)}
    Trainer(build_config({**keys, "deterministic": True}), progress=False)
    Trainer(build_config(keys), progress=False)
    assert seen == [True, False]
