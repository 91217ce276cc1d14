from pathlib import Path

import pytest
import torchvision
from torch import nn

from interlab.config import CONFIG_DIR, build_config, load_named_config, parse_assignment
from interlab.lab.sweep import load_sweep
from interlab.methods import METHOD_NAMES, build_method
from interlab.methods.interclr import InterCLROptions


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


# ---- every shipped config builds into the method it describes ----------------------------------

CIFAR10_TRAIN_SIZE = 50_000
# torchvision's ResNet-18 without its fc (11,176,512 parameters) with the 7x7 stem conv
# (9,408) swapped for the cifar stem's 3x3 (1,728).
RESNET18_CIFAR_STEM_PARAMETERS = 11_176_512 - 9_408 + 1_728
# The sizes each config resolves to at CIFAR-10's size, as recorded in config.method_options.
RESOLVED_SIZES = {
    "moco_cifar10": {"queue_size": 4096},
    "interclr_cifar10": {
        "queue_size": 4096,
        "num_clusters": 100,
        "num_negatives": 650,  # 1.3% of 50,000
        "pool": 15_000,  # pool_share 0.3 of 50,000
        "min_cluster": 20,  # the release's
        "centroid_interval": 1,  # scaled: 0.2% of 50,000 is under one batch of 512
    },
    "cyclecontrast_cifar10": {"queue_size": 4096, "cycle_queue_size": 8192, "support_size": 2048},
    "dino_cifar10": {},
    "scfs_cifar10": {},
}


IMAGENET_CONFIGS = (
    "moco_imagenet100", "interclr_imagenet100", "interclr_imagenet", "scfs_imagenet",
    "cyclecontrast_frames",
)  # fmt: skip


def test_every_shipped_config_is_checked_below():
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert shipped == sorted([*RESOLVED_SIZES, *IMAGENET_CONFIGS])


def test_imagenet100_configs_build_a_resnet50_at_224_with_the_scaled_sizes():
    """ImageNet-100's 126,689 images: the ImageNet stem, the 2048-2048-128 head, and for
    InterCLR the release's sizes scaled by its own ratios (README, Data beyond memory)."""
    for name in IMAGENET_CONFIGS[:2]:
        config = build_config({**load_named_config(name), "device": "cpu"})
        assert (config.backbone, config.cifar_stem, config.augment["size"]) == (
            "resnet50",
            False,
            224,
        )
        method = build_method(config, config.augment_config(224), 126_689)
        assert method.backbone.conv1.kernel_size == (7, 7)
        assert tuple(method.queue.shape) == (16_384, 128)
        linears = [m for m in method.encoder.head.layers if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(2048, 2048), (2048, 128)]
    assert method.resolved_options() == {
        "queue_size": 16_384, "num_clusters": 1000, "num_negatives": 1650, "pool": 12_700,
        "min_cluster": 20, "centroid_interval": 10,
    }  # fmt: skip
    full = build_config(load_named_config("interclr_imagenet")).method_options
    assert (full["num_clusters"], full["num_negatives"], full["pool"], full["queue_size"]) == (
        10_000,
        16_384,
        128_000,
        65_536,
    )


@pytest.mark.parametrize("name", sorted(RESOLVED_SIZES))
def test_shipped_config_builds_its_method_at_cifar10_size(name):
    """Nothing runs forward: the sizes, buffers and backbone are what the config's comments
    promise for a 50,000-image training set."""
    config = build_config({**load_named_config(name), "device": "cpu"})
    method = build_method(config, config.augment_config(32), CIFAR10_TRAIN_SIZE)
    assert method.name == config.method == name.removesuffix("_cifar10")
    for key, size in RESOLVED_SIZES[name].items():
        assert method.resolved_options()[key] == size, key

    backbone = method.backbone
    assert isinstance(backbone, torchvision.models.ResNet)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert isinstance(backbone.layer1[0], torchvision.models.resnet.BasicBlock)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity) and isinstance(backbone.fc, nn.Identity)
    assert sum(p.numel() for p in backbone.parameters()) == RESNET18_CIFAR_STEM_PARAMETERS

    if config.method in ("moco", "interclr", "cyclecontrast"):
        assert tuple(method.queue.shape) == (4096, 128)
    if config.method == "moco":  # the recipe's plain 512 -> 128 fc
        assert [type(m) for m in method.encoder.head.layers] == [nn.Linear]
    if config.method == "interclr":  # the release's MoCoV2Neck: 512 -> 512 -> ReLU -> 128
        assert head_shape(method.encoder.head) == [(512, 512), "ReLU", (512, 128)]
    if config.method == "interclr":
        assert tuple(method.memory.features.shape) == (CIFAR10_TRAIN_SIZE, 128)
        assert tuple(method.memory.centroids.shape) == (100, 128)
    if config.method == "cyclecontrast":
        assert tuple(method.cycle_queue.shape) == (8192, 128)
        assert method.encoder.head.layers[0].out_features == 512  # MLP head of the width
        assert method.cycle_head is not None  # separate_head
    if config.method in ("dino", "scfs"):
        head = method.student["head"]
        assert tuple(head.last_layer.weight.shape) == (4096, 256)
        assert head.mlp[0].out_features == 2048
        assert tuple(method.center.shape) == (1, 4096)
        assert method.warmup_epochs == 30  # teacher temperature warm-up, under 30% of 200
        assert (method.global_augment.scale, method.local_augment.scale) == (
            (0.3, 1.0),
            (0.08, 0.3),
        )
        assert method.local_augment.size == 16 and method.options.n_local == 6
    if config.method == "scfs":
        shallow = method.student["shallow"]
        assert sorted(shallow) == ["2", "3", "4"]
        # layer2-4 of the ResNet-18: 128 / 256 / 512 channels, block width min(C / 2, 128)
        widths = {k: (h.block[0].in_channels, h.block[0].out_channels) for k, h in shallow.items()}
        assert widths == {"2": (128, 64), "3": (256, 128), "4": (512, 128)}
        for layer in (2, 3, 4):
            assert tuple(getattr(method, f"center_layer{layer}").shape) == (1, 256)


def test_released_scfs_and_cyclecontrast_settings_stream_from_shards():
    scfs = build_config(load_named_config("scfs_imagenet"))
    o = scfs.method_options
    assert scfs.data.startswith("shards:") and (scfs.backbone, scfs.cifar_stem) == (
        "resnet50",
        False,
    )
    assert (o["out_dim"], o["n_local"], o["local_size"], o["teacher_temp_warmup_epochs"]) == (
        65_536,
        8,
        96,
        50,
    )
    assert (tuple(o["global_scale"]), tuple(o["local_scale"])) == ((0.25, 1.0), (0.05, 0.25))
    cycle = build_config(load_named_config("cyclecontrast_frames"))
    o = cycle.method_options
    assert cycle.data.startswith("shards:") and cycle.batch_size * 8 == 512
    assert (o["queue_size"], o["cycle_queue_size"], o["support_size"], o["temperature"]) == (
        65_536,
        81_920,
        16_384,
        0.07,
    )


def test_init_from_and_pseudo_labels_are_keys_with_their_types():
    config = build_config(dict([parse_assignment("init_from=runs/moco")]))
    assert config.init_from == "runs/moco" and config.to_dict()["init_from"] == "runs/moco"
    assert build_config({}).init_from is None  # a fresh start unless asked
    with pytest.raises(ValueError, match="init_from: expected a string; got 3"):
        build_config({"init_from": 3})
    interclr = build_config({"method": "interclr", "pseudo_labels": "oracle"})
    assert interclr.method_options["pseudo_labels"] == "oracle"
    assert InterCLROptions().pseudo_labels == "kmeans"


# ---- InterCLR: the release's head and re-clustering period -------------------------------------


def head_shape(head: nn.Module) -> list:
    """A projection head's layers: (in, out) per Linear, else the layer's class name."""
    return [
        (m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m).__name__
        for m in head.layers
    ]


def test_interclr_cifar10_has_the_released_head_without_bn():
    options = build_config(load_named_config("interclr_cifar10")).method_options
    assert (options["proj_layers"], options["proj_bn"]) == (2, False)
    assert options.get("proj_hidden") is None  # the backbone's width, 512 on the ResNet-18
    assert options["recluster_every"] == 10  # the release's `interval`
    for name in ("interclr_imagenet", "interclr_imagenet100"):
        options = build_config(load_named_config(name)).method_options
        assert (options["proj_layers"], options["proj_bn"], options["proj_hidden"]) == (
            2,
            False,
            2048,
        )


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("grid", INTERCLR_GRIDS)
def test_every_interclr_grid_and_its_moco_baseline_use_the_released_head(grid, small):
    sweep = load_sweep(ROOT / "notebooks" / "sweeps" / f"{grid}.yaml", small=small)
    for run in sweep.runs:
        overrides = run.parameters["overrides"]
        head = tuple(overrides.get(key) for key in ("proj_layers", "proj_bn", "proj_hidden"))
        assert head == (2, False, None), (run.name, head)
        if overrides.get("online_labels") is False:
            assert overrides["recluster_every"] == 10, run.name


def test_sizing_grid_null_clusters_is_the_n_over_128_rule():
    """With 10 clusters per class the default, the grid's null arm keeps the release's N/128."""
    sweep = load_sweep(ROOT / "notebooks" / "sweeps" / "sizing.yaml", small=True)
    clusters = set()
    for run in sweep.runs:
        keys = {"method": "interclr", **run.parameters["overrides"]}
        options = InterCLROptions(**build_config(keys).method_options)
        clusters.add(options.scaled_to(5_000, num_classes=10, batch_size=256)["num_clusters"])
    assert clusters == {100, 39}


@pytest.mark.parametrize("study", ["interclr_cpu", "interclr_gpu"])
def test_interclr_studies_share_the_released_head_and_run_the_inter_branch_at_0_2(study):
    """Every arm, the MoCo baseline included, has the release's neck (an MLP without BN);
    every InterCLR arm's inter branch runs at 0.2 and offline arms name their period."""
    from interlab.lab.study import load_study

    runs = load_study(study).sweep.runs
    assert {r.parameters["method"] for r in runs} == {"interclr", "moco"}
    for run in runs:
        keys = {"method": run.parameters["method"], **run.parameters["overrides"]}
        keys.pop("init_from", None)  # a checkpoint an earlier study trains
        options = build_config(keys).method_options
        assert (options["proj_layers"], options.get("proj_bn", False)) == (2, False), run.name
        if run.parameters["method"] == "interclr":
            assert inter_temperature(keys) == 0.2, run.name
            if options.get("online_labels") is False:
                assert options["recluster_every"] in (1, 5, 10)
