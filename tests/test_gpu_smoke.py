"""benchmarks/gpu_smoke.py on a CPU: the combinations it runs, skips and records as failed.

On a GPU it is the pack's `gpu_smoke` item (every method from every data kind on CUDA); here
`--device cpu` runs the same code with the small ConvNet.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--device", "cpu", "--train-images", "128", "--test-images", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def smoke():
    path = ROOT / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module
    spec.loader.exec_module(module)
    return module


def json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_moco_trains_from_npz_and_the_last_line_says_so(smoke, capsys, tmp_path):
    code = smoke.main([*SMALL, "--methods", "moco", "--kinds", "npz", "--work", str(tmp_path)])
    printed = json_line(capsys)
    assert code == 0
    assert (printed["combinations"], printed["ok"], printed["failed"]) == (1, 1, [])
    assert printed["device"] == "cpu" and printed["seconds"] > 0
    metrics = (tmp_path / "runs" / "moco" / "npz" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == 3  # --steps' default, then kNN (eval_every=0)
    assert "knn_top1" in json.loads(metrics[-1])


def test_a_failure_is_recorded_with_its_line_and_the_next_combination_runs(
    smoke, capsys, monkeypatch, tmp_path
):
    ran = []

    def fake_train(config):
        ran.append(config.method)
        if config.method == "simclr":
            raise RuntimeError("indices should be on the same device\nsecond line")
        return "fake"

    monkeypatch.setattr(smoke, "train_once", fake_train)
    args = [*SMALL, "--methods", "simclr", "moco", "--kinds", "npz", "--work", str(tmp_path)]
    code = smoke.main(args)
    captured = capsys.readouterr()
    printed = last_json(captured.out)
    assert code == 1 and ran == ["simclr", "moco"]
    assert "Traceback" in captured.err and "second line" in captured.err  # the whole error
    assert printed["failed"] == ["simclr/npz: RuntimeError: indices should be on the same device"]
    assert (printed["combinations"], printed["ok"]) == (2, 1)


def test_a_method_that_cannot_stream_a_kind_is_skipped_with_its_own_reason(smoke, tmp_path):
    args = smoke.parse_args([*SMALL, "--work", str(tmp_path)])
    data = smoke.SmokeData("cifar10-mini", tmp_path, 64, 16, smoke.resolve_device("cpu"))
    shards, frames = data.name("shards"), data.name("frames")
    out = tmp_path / "runs"
    reason = smoke.unsupported(args, "cyclecontrast", shards, out)
    assert reason == "it needs frames shards (interlab prepare --frames) to stream"
    assert smoke.unsupported(args, "cyclecontrast", frames, out) is None
    assert smoke.unsupported(args, "moco", shards, out) is None
    assert smoke.unsupported(args, "cyclecontrast", data.name("npz"), out) is None
    folder = Path(data.name("folder").removeprefix("folder:"))
    assert len(list(folder.glob("train/*/*.png"))) == 64
    assert len(list(folder.glob("test/*/*.png"))) == 16


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--methods", "mocco"], "invalid choice: 'mocco'"),
        (["--train-images", "40"], "must be at least 4 x --batch-size (64)"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(smoke, capsys, bad, message):
    with pytest.raises(SystemExit):
        smoke.parse_args(["--device", "cpu", "--batch-size", "16", *bad])
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 22 s on 2 cores: every method from every kind, one step each
def test_every_method_trains_from_every_kind_it_supports(smoke, capsys, tmp_path):
    code = smoke.main([*SMALL, "--steps", "1", "--work", str(tmp_path)])
    printed = json_line(capsys)
    assert code == 0, printed["failed"]
    methods, kinds = len(smoke.METHOD_NAMES), len(smoke.KINDS)
    assert printed["skipped"] == [
        "cyclecontrast/shards: it needs frames shards (interlab prepare --frames) to stream"
    ]
    assert printed["combinations"] == printed["ok"] == methods * kinds - 1
