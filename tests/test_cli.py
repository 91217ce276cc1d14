import json

import pytest

from interlab.cli import build_parser, collect_train_overrides, main
from interlab.config import build_config


def train_args(out, data, *extra):
    return [
        "train",
        "--method",
        "moco",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "backbone=convnet",
        "--set",
        "queue_size=256",
        "--set",
        "knn_k=20",
        "--no-progress",
        *extra,
    ]


def test_train_then_eval_prints_fractions(tmp_path, tiny_npz, capsys):
    assert main(train_args(tmp_path / "run", f"npz:{tiny_npz}")) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["epoch"] == 1 and 0 <= trained["knn_top1"] <= 1
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--knn",
                "--linear",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) == {"knn_top1", "knn_top1_head", "linear_top1"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    # Same checkpoint, the run's own protocol (knn_k=20 by default): eval reproduces the
    # trainer's last kNN figures, on the backbone and on the embedding.
    assert abs(scores["knn_top1"] - trained["knn_top1"]) < 1e-6
    assert abs(scores["knn_top1_head"] - trained["knn_top1_head"]) < 1e-6


def test_unknown_method_key_and_value_exit_2_with_choices(tmp_path, capsys):
    assert main(["train", "--method", "mocov9", "--out", str(tmp_path)]) == 2
    assert "valid methods: moco, simclr" in capsys.readouterr().err
    assert main(["train", "--set", "queue_sise=4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'queue_sise'" in err and "queue_size" in err
    assert main(["train", "--set", "symmetric=maybe", "--out", str(tmp_path)]) == 2
    assert "symmetric: expected true/false" in capsys.readouterr().err
    assert main(["train", "--data", "imagenet-9k", "--epochs", "1", "--out", str(tmp_path)]) == 2
    assert "cifar10-mini" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--set", "lr=0.1", "queue_size=1024"],
        ["--set", "lr=0.1", "--set", "queue_size=1024"],
        ["--set", "lr=0.1", "queue_size=1024", "--epochs", "3"],
    ],
    ids=["pairs-after-one-flag", "repeated-flags", "pairs-then-another-flag"],
)
def test_set_takes_several_pairs_or_repeated_flags(flags):
    args = build_parser().parse_args(["train", "--method", "moco", *flags])
    overrides = collect_train_overrides(args)
    assert overrides["lr"] == 0.1 and overrides["queue_size"] == 1024
    config = build_config(overrides)
    assert config.lr == 0.1 and config.method_options["queue_size"] == 1024


def test_set_pair_without_a_value_is_named(tmp_path, capsys):
    assert main(["train", "--set", "lr", "--out", str(tmp_path)]) == 2
    assert "--set expects key=value; got 'lr'" in capsys.readouterr().err
