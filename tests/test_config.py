import importlib.util
from pathlib import Path

import pytest

from interlab.config import build_config, load_named_config, parse_assignment
from interlab.methods import METHOD_NAMES
from interlab.methods.interclr import InterCLROptions
from interlab.sweep import load_sweep


def test_overrides_reach_trainer_augment_and_method_keys():
    config = build_config(
        {"method": "moco", "epochs": 3, "lr": 1, "aug.scale": [0.08, 1.0], "queue_size": 1024}
    )
    assert config.epochs == 3 and config.lr == 1.0 and isinstance(config.lr, float)
    assert config.augment["scale"] == (0.08, 1.0)
    assert config.method_options == {"queue_size": 1024}
    assert config.augment_config(32).scale == (0.08, 1.0)


def test_unknown_method_lists_valid_methods():
    with pytest.raises(ValueError, match=r"unknown method 'mocov9'.*moco, simclr"):
        build_config({"method": "mocov9"})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'queue_sise'.*queue_size"):
        build_config({"method": "moco", "queue_sise": 10})
    with pytest.raises(ValueError, match="unknown key 'queue_size' for method 'simclr'"):
        build_config({"method": "simclr", "queue_size": 10})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "ten", "epochs: expected an integer"),
        ("epochs", 2.5, "epochs: expected an integer"),
        ("lr", "fast", "lr: expected a number"),
        ("symmetric", "yes please", "symmetric: expected true/false"),
        ("aug.scale", 0.5, "aug.scale: expected a list"),
        ("epochs", 0, "epochs must be > 0"),
        ("temperature", -1.0, "temperature must be > 0"),
        ("optimizer", "adam", "optimizer must be 'sgd' or 'lars'"),
    ],
)
def test_bad_values_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_config({"method": "moco", key: value})


def test_parse_assignment_reads_yaml_types():
    assert parse_assignment("lr=0.1") == ("lr", 0.1)
    assert parse_assignment("symmetric=true") == ("symmetric", True)
    assert parse_assignment("aug.scale=[0.08, 1.0]") == ("aug.scale", [0.08, 1.0])
    assert parse_assignment("data=npz:/x/y.npz") == ("data", "npz:/x/y.npz")
    with pytest.raises(ValueError, match="key=value"):
        parse_assignment("lr")


def test_named_recipe_config_is_the_moco_cifar10_recipe():
    config = build_config(load_named_config("moco_cifar10"))
    assert (config.method, config.epochs, config.batch_size, config.lr) == ("moco", 200, 512, 0.06)
    assert config.weight_decay == 5e-4 and config.cifar_stem
    options = config.method_options
    assert options["queue_size"] == 4096 and options["encoder_momentum"] == 0.99
    assert options["temperature"] == 0.1 and options["symmetric"] and options["split_bn"] == 8
    assert config.augment["scale"] == (0.08, 1.0)


def test_unknown_named_config_lists_shipped_ones():
    with pytest.raises(ValueError, match="moco_cifar10"):
        load_named_config("nope")


def test_every_method_builds_with_defaults():
    for name in METHOD_NAMES:
        assert build_config({"method": name}).method == name


# ---- the settings the studies depend on ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
INTERCLR_GRIDS = ("pseudo_labels", "negative_sampling", "decision_boundary", "sizing")


def inter_temperature(keys: dict) -> float:
    """The temperature the inter branch of an InterCLR config actually uses."""
    options = InterCLROptions(**build_config(keys).method_options)
    return options.inter_temperature or options.temperature


def test_interclr_named_config_runs_the_inter_branch_at_the_release_temperature():
    keys = load_named_config("interclr_cifar10")
    assert build_config(keys).method_options["temperature"] == 0.1  # the CIFAR recipe's intra
    assert inter_temperature(keys) == 0.2  # the release's, not saturated by the margin


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("grid", INTERCLR_GRIDS)
def test_every_interclr_grid_runs_the_inter_branch_at_0_2(grid, small):
    sweep = load_sweep(ROOT / "notebooks" / "sweeps" / f"{grid}.yaml", small=small)
    runs = [r.parameters for r in sweep.runs if r.parameters["method"] == "interclr"]
    assert runs
    for parameters in runs:
        assert inter_temperature({"method": "interclr", **parameters["overrides"]}) == 0.2


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_ablation_presets_run_the_inter_branch_at_0_2(preset):
    spec = importlib.util.spec_from_file_location(
        "interclr_ablations", ROOT / "benchmarks" / "interclr_ablations.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = module.base_keys(preset, None, None)
    assert inter_temperature(keys) == 0.2


def test_backbone_auto_is_the_default_and_unknown_backbones_are_named():
    assert build_config({"method": "moco"}).backbone == "auto"
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet9'; valid: auto, resnet18"):
        build_config({"method": "moco", "backbone": "resnet9"})


def test_knn_protocols_are_pairs_of_k_and_temperature():
    config = build_config(load_named_config("dino_cifar10"))
    assert config.knn_protocols == ((20, 0.07),)  # DINO / SCFS publish kNN at k=20, t=0.07
    with pytest.raises(ValueError, match=r"knn_protocols: each entry is \[k >= 1"):
        build_config({"method": "moco", "knn_protocols": [[0, 0.1]]})
    with pytest.raises(ValueError, match="knn_protocols: expected 2 values"):
        build_config({"method": "moco", "knn_protocols": [[20]]})
