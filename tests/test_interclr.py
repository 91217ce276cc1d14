"""InterCLR end to end on CPU: every switch steps, bank maintenance, metrics, resume, DDP, CLI."""

import os

import pytest
import torch

import interlab.methods.interclr as interclr_module
from interlab.augment import AugmentConfig
from interlab.cli import main
from interlab.config import build_config
from interlab.data import ImageSet
from interlab.features import features_as_trained
from interlab.methods import build_method
from interlab.methods.interclr import InterCLROptions
from interlab.train import Trainer, read_metrics
from tests.conftest import assert_same_state, cpu_config
from tests.test_distributed import set_rank_environment, spawn_two_ranks
from tests.test_step_speed import HostSyncs

INTERCLR_METRICS = {
    "loss_intra",
    "loss_inter",
    "nmi",
    "ari",
    "purity",
    "label_change_ratio",
    "cluster_size_min",
    "cluster_size_median",
    "cluster_size_max",
    "false_negative_rate",
    "fnr_random",
    "fnr_hard",
    "fnr_semihard",
    "fnr_semieasy",
    "positive_cosine",
    "negative_cosine",
    "pn_gap",
}


def interclr_config(out, data, **overrides):
    keys = {"method": "interclr", "kmeans_backend": "torch", "epochs": 3, "eval_every": 3}
    keys.update(overrides)
    return cpu_config(out, data, **keys)


def make_method(train_set, **options):
    config = build_config(
        {"method": "interclr", "backbone": "convnet", "batch_size": 32, **options}
    )
    torch.manual_seed(0)
    method = build_method(config, AugmentConfig(size=32), len(train_set), train_set.num_classes)
    method.generator = torch.Generator().manual_seed(0)
    method.on_fit_start(train_set)
    return method


def train_step(method, train_set, indices):
    outputs = method(method.make_views(train_set.images[indices]), indices)
    outputs["loss"].backward()
    logged = method.after_step(0.5)
    return {**outputs, **logged}


def test_dataset_scaled_defaults_are_recorded(mixed_train):
    method = make_method(mixed_train)
    # 512 images of 10 classes, batch 32: 10 x 10 clusters, 1.3% -> 7 negatives, 30% -> a
    # pool of 154, min_cluster 16% of 5.12 raised to 2, 0.002 x 512 / 32 steps raised to 1.
    assert method.resolved_options() == {  # the trainer records these in config.yaml
        "queue_size": 256, "num_clusters": 100, "num_negatives": 7, "pool": 154,
        "min_cluster": 2, "centroid_interval": 1,
    }  # fmt: skip
    assert method.memory.num_clusters == 100
    assert bool(method.memory.ready)


def test_sizes_follow_the_classes_and_the_batch_as_on_imagenet():
    """The README's rule: 10 clusters per class, a pool of 30% (>= 3/C), min_cluster 16% of
    the mean cluster (<= the release's 20), a centroid refresh per 0.2% of the bank rewritten."""
    mini = InterCLROptions().scaled_to(5_000, num_classes=10, batch_size=256)
    assert mini == {
        "queue_size": 2048, "num_clusters": 100, "num_negatives": 65, "pool": 1500,
        "min_cluster": 8, "centroid_interval": 1,
    }  # fmt: skip
    imagenet = InterCLROptions().scaled_to(1_281_167, num_classes=1000, batch_size=256)
    assert (imagenet["num_clusters"], imagenet["min_cluster"]) == (10_000, 20)
    assert imagenet["centroid_interval"] == 10  # 10 steps x 256 = 0.2% of the bank
    unknown = InterCLROptions().scaled_to(5_000, num_classes=0, batch_size=256)
    assert (unknown["num_clusters"], unknown["pool"]) == (39, 1500)  # N / 128, 30%
    two_classes = InterCLROptions().scaled_to(5_000, num_classes=2, batch_size=256)
    assert two_classes["pool"] == 2500  # 3/C = 1.5 capped at half the bank
    thirty = InterCLROptions().scaled_to(5_000, num_classes=30, batch_size=256)
    assert thirty["pool"] == 1500 and thirty["num_clusters"] == 300
    by_size = InterCLROptions(mean_cluster_size=128).scaled_to(5_000, 10, 256)
    assert by_size["num_clusters"] == 39 and by_size["min_cluster"] == 20  # 16% of 128.2


def test_explicit_sizes_are_kept_and_checked():
    keys = {"num_clusters": 50, "min_cluster": 5, "centroid_interval": 3, "pool": 900}
    sizes = InterCLROptions(**keys).scaled_to(5_000, num_classes=10, batch_size=256)
    assert {key: sizes[key] for key in keys} == keys
    # An explicit min_cluster caps a defaulted K so every cluster can hold 2 x min_cluster.
    capped = InterCLROptions(min_cluster=50).scaled_to(5_000, num_classes=10, batch_size=256)
    assert capped["num_clusters"] == 50 and capped["min_cluster"] == 50
    for key in ("min_cluster", "centroid_interval", "mean_cluster_size"):
        with pytest.raises(ValueError, match=f"{key} must be >= 1; got 0"):
            InterCLROptions(**{key: 0})
    with pytest.raises(ValueError, match="num_clusters=1000 with min_cluster=3 needs at least"):
        InterCLROptions(num_clusters=1000, min_cluster=3).scaled_to(5_000, 10, 256)


def test_the_method_scales_by_its_class_count_and_global_batch():
    """build_method passes the training set's classes and the batch through to the sizes."""
    config = build_config({"method": "interclr", "backbone": "convnet", "batch_size": 20})
    method = build_method(config, AugmentConfig(size=32), 50_000, 10)
    sizes = method.resolved_options()
    assert (sizes["num_clusters"], sizes["pool"], sizes["min_cluster"]) == (100, 15_000, 20)
    assert sizes["centroid_interval"] == 5  # 0.002 x 50,000 / 20
    assert method.memory.num_clusters == 100


@pytest.mark.parametrize("neg_sampling", ["random", "hard", "semihard", "semieasy"])
@pytest.mark.parametrize("online", [True, False])
def test_every_switch_trains_a_step(mixed_train, neg_sampling, online):
    method = make_method(
        mixed_train,
        neg_sampling=neg_sampling,
        online_labels=online,
        margin_kind="arc" if online else "cos",
        margin=-0.3,
        min_cluster=20,
    )
    labels_before = method.memory.labels.clone()
    features_before = method.memory.features.clone()
    indices = torch.arange(32) * 16
    outputs = train_step(method, mixed_train, indices)
    assert torch.isfinite(outputs["loss"])
    assert {"loss_intra", "loss_inter", "false_negative_rate", "label_change_ratio"} <= set(outputs)
    assert not torch.equal(method.memory.features[indices], features_before[indices])
    untouched = torch.ones(512, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(method.memory.features[untouched], features_before[untouched])
    if not online:
        assert torch.equal(method.memory.labels, labels_before)
        assert outputs["label_change_ratio"].item() == 0
    assert all(p.grad is not None for p in method.encoder.parameters())


def test_online_maintenance_keeps_clusters_large_and_centroids_fresh(mixed_train):
    # min_cluster 64 = half the mean size: the untrained net's clusters need real refills.
    method = make_method(mixed_train, num_clusters=4, min_cluster=64, centroid_interval=3)
    refilled = 0
    for step in range(6):
        indices = torch.randperm(512, generator=torch.Generator().manual_seed(step))[:32]
        refilled += train_step(method, mixed_train, indices)["clusters_refilled"].item()
        sizes = method.memory.cluster_sizes()
        assert len(sizes) == 4 and int(sizes.sum()) == 512 and int(sizes.min()) >= 64
    assert int(method.bank_steps) == 6  # a refresh step: centroids are the member means
    bank = method.memory
    means = torch.stack([bank.features[bank.labels == c].mean(0) for c in range(4)])
    assert torch.allclose(bank.centroids, means, atol=1e-5)
    assert refilled >= 1  # the size invariant held through real refills


def test_false_negative_rate_is_the_share_of_same_class_negatives(mixed_train, monkeypatch):
    drawn = []
    original = interclr_module.sample_negatives

    def spy(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(interclr_module, "sample_negatives", spy)
    method = make_method(mixed_train, neg_sampling="random")
    indices = torch.arange(32) * 16
    outputs = train_step(method, mixed_train, indices)
    truth = mixed_train.labels
    expected = (truth[drawn[0]] == truth[indices].unsqueeze(1)).float().mean()
    assert outputs["false_negative_rate"].item() == pytest.approx(expected.item())


def test_warmup_epochs_switch_the_inter_branch_off(mixed_train):
    method = make_method(mixed_train, inter_warmup_epochs=1)
    indices = torch.arange(32)
    method.on_epoch_start(0)
    warm = train_step(method, mixed_train, indices)
    assert "loss_inter" not in warm
    assert warm["loss"].item() == pytest.approx(warm["loss_intra"].item())  # intra at weight 1
    method.on_epoch_start(1)
    assert "loss_inter" in train_step(method, mixed_train, indices)


def test_offline_labels_change_only_when_reclustered(mixed_train):
    method = make_method(mixed_train, online_labels=False, recluster_every=2, epochs=10)
    method.memory.features.copy_(torch.nn.functional.normalize(torch.randn(512, 128), dim=1))
    labels, features = method.memory.labels.clone(), method.memory.features.clone()
    method.on_epoch_end(1)
    assert torch.equal(method.memory.labels, labels)
    figures = method.on_epoch_end(2)
    assert not torch.equal(method.memory.labels, labels)
    assert torch.equal(method.memory.features, features)  # re-clustering relabels only
    assert {"nmi", "ari", "purity", "cluster_size_min"} <= set(figures)


def test_bad_sizes_and_values_are_named(mixed_train):
    with pytest.raises(
        ValueError,
        match="neg_sampling must be one of random, hard, semihard, semieasy; got 'nearest'",
    ):
        build_config({"method": "interclr", "neg_sampling": "nearest"})
    with pytest.raises(ValueError, match="margin_kind must be one of cos, arc"):
        build_config({"method": "interclr", "margin_kind": "sphere"})
    with pytest.raises(
        ValueError, match="num_clusters=100 with min_cluster=20 needs at least 4000"
    ):
        make_method(mixed_train, num_clusters=100, min_cluster=20)
    with pytest.raises(ValueError, match="num_negatives=600 must be smaller than the bank"):
        make_method(mixed_train, num_negatives=600, pool=100)


def test_short_run_logs_every_metric_and_resumes_to_the_same_state(tmp_path, mixed_npz):
    data = f"npz:{mixed_npz}"
    whole = Trainer(interclr_config(tmp_path / "whole", data), progress=False).fit(resume=False)
    assert whole.method.options.min_cluster == 2  # 100 clusters of ~5 on 512 images
    for record in whole.metrics:
        assert set(record) >= INTERCLR_METRICS, INTERCLR_METRICS - set(record)
        assert 0 <= record["nmi"] <= 1 and 0 <= record["false_negative_rate"] <= 1
        gap = record["positive_cosine"] - record["negative_cosine"]
        assert record["pn_gap"] == pytest.approx(gap, abs=1e-6)
        assert record["cluster_size_min"] >= 2
    assert {"knn_top1", "knn_top1_head"} <= set(whole.metrics[-1])

    sliced_config = interclr_config(tmp_path / "sliced", data)
    Trainer(sliced_config, progress=False).fit(resume=False, stop_after_epochs=2)
    resumed = Trainer(sliced_config, progress=False).fit(resume=True)
    assert [r["epoch"] for r in read_metrics(tmp_path / "sliced")] == [1, 2, 3]
    expected, got = whole.method.state_dict(), resumed.method.state_dict()
    exact = ("memory.features", "memory.labels", "memory.centroids", "queue", "bank_steps")
    assert_same_state(expected, got, exact)


def test_cli_trains_interclr_with_switches(tmp_path, mixed_npz, capsys):
    out = tmp_path / "cli"
    args = [
        "train", "--method", "interclr", "--data", f"npz:{mixed_npz}", "--epochs", "1",
        "--batch-size", "64", "--out", str(out), "--device", "cpu", "--no-progress",
        "--set", "backbone=convnet", "--set", "queue_size=256", "--set", "knn_k=20",
        "--set", "neg_sampling=hard", "--set", "margin=0.5", "--set", "margin_kind=arc",
        "--set", "online_labels=false", "--set", "num_clusters=8", "--set", "num_negatives=16",
        "--set", "intra_weight=0.5", "--set", "inter_weight=0.5",
    ]  # fmt: skip
    assert main(args) == 0
    record = read_metrics(out)[-1]
    assert set(record) >= INTERCLR_METRICS
    saved = (out / "config.yaml").read_text()
    assert "neg_sampling: hard" in saved and "num_clusters: 8" in saved
    # The data-scaled sizes as used: 16% of 512 / 8 = 10; 0.002 x 512 / 64 raised to 1.
    assert "min_cluster: 10" in saved and "centroid_interval: 1" in saved


# ---- two ranks --------------------------------------------------------------------------------


def train_rank(rank: int, world: int, port: int, out: str, data: str) -> None:
    set_rank_environment(rank, world, port)
    config = interclr_config(
        out, data, epochs=1, batch_size=32, queue_size=384, centroid_interval=2
    )
    trainer = Trainer(config, progress=False)
    trainer.start_run_folder(resume=False)
    trainer.start_method()
    initial = trainer.method.memory.features.clone()
    trainer.train_epoch(None)  # no end-of-epoch broadcast: the banks must agree on their own
    bank = {k: v.clone() for k, v in trainer.method.memory.state_dict().items()}
    torch.save({"bank": bank, "initial": initial}, os.path.join(out, f"bank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_keep_identical_banks(tmp_path, mixed_npz):
    out = str(tmp_path / "ddp")
    rank0, rank1 = spawn_two_ranks(train_rank, out, f"npz:{mixed_npz}", "bank")
    for name in ("features", "labels", "centroids"):
        assert torch.equal(rank0["bank"][name], rank1["bank"][name]), name
    # 512 images / 2 ranks / batch 32: every entry was rewritten by one rank or the other.
    changed = (rank0["bank"]["features"] != rank0["initial"]).any(dim=1)
    assert changed.all()


def test_training_saves_bank_snapshots_for_the_explorers(tmp_path, mixed_npz):
    from interlab.snapshots import list_snapshots, load_snapshot

    config = interclr_config(tmp_path / "snap", f"npz:{mixed_npz}", snapshot_every=2, eval_every=0)
    result = Trainer(config, progress=False).fit(resume=False)
    assert list(list_snapshots(tmp_path / "snap")) == [0, 2, 3]  # initial, every 2, the end
    last = load_snapshot(tmp_path / "snap", 3)
    assert last["features"].dtype == "float16" and last["features"].shape == (512, 128)
    assert (last["labels"] == result.method.memory.labels.numpy()).all()
    first = load_snapshot(tmp_path / "snap", 0)
    assert not (first["features"] == last["features"]).all()  # the bank moved during training
    with pytest.raises(ValueError, match="no snapshot for epoch 1; saved epochs: \\[0, 2, 3\\]"):
        load_snapshot(tmp_path / "snap", 1)


def test_a_run_without_a_bank_has_no_snapshots(tmp_path, mixed_npz):
    from interlab.snapshots import list_snapshots

    config = cpu_config(tmp_path / "moco", f"npz:{mixed_npz}", epochs=1, eval_every=0)
    Trainer(config, progress=False).fit()
    with pytest.raises(ValueError, match="holds no memory-bank snapshots"):
        list_snapshots(tmp_path / "moco")


def test_pool_share_sets_the_pool_and_a_conflict_is_named(mixed_train):
    method = make_method(mixed_train, pool_share=0.3)
    assert method.options.pool == round(0.3 * 512) == 154
    assert method.resolved_options()["pool"] == 154  # the trainer records the size used
    assert make_method(mixed_train, pool_share=0.3, pool=154).options.pool == 154  # a resume
    with pytest.raises(ValueError, match=r"pool=100 and pool_share=0\.3 disagree"):
        make_method(mixed_train, pool_share=0.3, pool=100)
    with pytest.raises(ValueError, match=r"pool_share must be in \(0, 1\)"):
        build_config({"method": "interclr", "pool_share": 1.5})


def class_blob_bank(method, train_set, seed=0):
    """Bank features = one tight blob per true class; pseudo-labels random (class-blind)."""
    generator = torch.Generator().manual_seed(seed)
    labels = train_set.labels
    features = torch.nn.functional.one_hot(labels, 128).float()
    features += 0.01 * torch.randn(features.shape, generator=generator)
    clusters = torch.randint(0, method.memory.num_clusters, labels.shape, generator=generator)
    method.memory.initialize(features, clusters)


def test_sampler_probe_measures_each_sampler_by_its_definition(mixed_train):
    """Classes are tight blobs and pseudo-labels ignore them: the hard negatives (nearest
    non-cluster entries) are all the query's class, the semi-easy ones (farthest) never are,
    random ones are at the class share, and the semi-hard pool (about one class wide) mostly is."""
    keys = {"num_clusters": 10, "min_cluster": 5, "pool_share": 0.1}  # a one-class-wide pool
    method = make_method(mixed_train, probe_queries=128, **keys)
    class_blob_bank(method, mixed_train)
    rates = method.sampler_false_negatives()
    assert set(rates) == {"fnr_random", "fnr_hard", "fnr_semihard", "fnr_semieasy"}
    assert rates["fnr_hard"] == 1.0
    assert rates["fnr_semieasy"] == 0.0
    assert 0.05 < rates["fnr_random"] < 0.16  # 10 classes
    assert rates["fnr_semihard"] > 0.7
    # Pseudo-labels equal to the classes: no sampler can draw a same-class negative.
    method.memory.assign_all(mixed_train.labels)
    assert set(method.sampler_false_negatives().values()) == {0.0}


def test_sampler_probe_leaves_the_training_stream_alone(mixed_train):
    method = make_method(mixed_train)
    before = method.generator.get_state()
    method.sampler_false_negatives()
    assert torch.equal(method.generator.get_state(), before)
    assert make_method(mixed_train, probe_queries=0).sampler_false_negatives() == {}


# ---- warm start (init_from) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory, mixed_npz):
    """A MoCo run trained one epoch on the mixed data: the warm starts' source."""
    out = tmp_path_factory.mktemp("moco") / "run"
    return Trainer(cpu_config(out, f"npz:{mixed_npz}", epochs=1), progress=False).fit()


def assert_same_weights(expected: dict, network: torch.nn.Module) -> None:
    got = network.state_dict()
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name, value in got.items():
        assert torch.equal(value, expected[name]), name


def test_init_from_starts_interclr_from_a_moco_run_before_its_first_clustering(
    tmp_path, mixed_npz, moco_run
):
    source = moco_run.method.encoder.state_dict()
    config = interclr_config(
        tmp_path / "warm", f"npz:{mixed_npz}", epochs=1, init_from=str(moco_run.out)
    )
    trainer = Trainer(config, progress=False)
    trainer.start(resume=False)
    method = trainer.method
    assert_same_weights(source, method.encoder)
    assert_same_weights(source, method.key_encoder)
    # The initial k-means saw the warm encoder's embeddings, not a random network's.
    warm = features_as_trained(moco_run.method, moco_run.method.encoder, trainer.train_set.images)
    assert torch.allclose(method.memory.features, warm, atol=1e-6)
    initial = trainer.knn_accuracy()
    for key in ("knn_top1", "knn_top1_head"):
        assert initial[key] == pytest.approx(moco_run.final[key], abs=1e-6), key
    # Only encoder weights moved: the queue, optimiser and counters are a fresh run's.
    assert not torch.equal(method.queue, moco_run.method.queue)
    assert len(trainer.optimizer.state) == 0 and (trainer.epoch, trainer.step) == (0, 0)
    assert int(method.bank_steps) == 0


def test_a_resumed_run_keeps_its_own_weights_not_those_of_init_from(tmp_path, mixed_npz, moco_run):
    checkpoint = moco_run.out / "checkpoint.pt"
    config = interclr_config(tmp_path / "warm", f"npz:{mixed_npz}", init_from=str(checkpoint))
    sliced = Trainer(config, progress=False).fit(resume=False, stop_after_epochs=1)
    trained = {k: v.clone() for k, v in sliced.method.encoder.state_dict().items()}
    resumed = Trainer(config, progress=False)
    resumed.start(resume=True)
    assert resumed.epoch == 1
    assert_same_weights(trained, resumed.method.encoder)
    first = next(iter(trained))
    assert not torch.equal(trained[first], moco_run.method.encoder.state_dict()[first])


def test_init_from_names_the_file_it_cannot_use(tmp_path, mixed_npz, moco_run):
    data, checkpoint = f"npz:{mixed_npz}", str(moco_run.out / "checkpoint.pt")

    def refusal(name: str, **keys) -> str:
        config = interclr_config(tmp_path / name, data, **keys)
        with pytest.raises(ValueError) as error:
            Trainer(config, progress=False).fit(resume=False)
        assert "\n" not in str(error.value)
        return str(error.value)

    missing = tmp_path / "nowhere" / "checkpoint.pt"
    assert refusal("missing", init_from=str(missing)) == f"init_from: no checkpoint at {missing}"
    other_backbone = refusal("resnet", backbone="resnet18", init_from=checkpoint)
    assert other_backbone.startswith(f"init_from: {checkpoint} does not fit this run's encoder")
    assert "weights missing (e.g. backbone." in other_backbone
    other_head = refusal("head", proj_dim=64, init_from=checkpoint)
    assert other_head.endswith("head.layers.2.weight is (128, 256) there, (64, 256) here")
    config = cpu_config(tmp_path / "dino", data, method="dino", init_from=checkpoint)
    with pytest.raises(ValueError, match="method 'dino' has no query encoder to start from"):
        Trainer(config, progress=False).fit(resume=False)


# ---- pseudo-label controls --------------------------------------------------------------------


def test_oracle_pseudo_labels_are_the_true_classes_and_stay_fixed(mixed_train):
    method = make_method(mixed_train, pseudo_labels="oracle", num_clusters=100)
    assert method.resolved_options()["num_clusters"] == 10  # one per class, whatever was set
    truth = mixed_train.labels
    for step in range(3):  # online labels (the default) would re-assign the batch each step
        indices = torch.randperm(512, generator=torch.Generator().manual_seed(step))[:32]
        outputs = train_step(method, mixed_train, indices)
        assert outputs["label_change_ratio"].item() == 0
        assert outputs["clusters_refilled"].item() == 0
    assert torch.equal(method.memory.labels, truth)
    figures = method.on_epoch_end(1)
    assert figures["purity"] == 1.0 and figures["nmi"] == pytest.approx(1.0)
    bank = method.memory
    means = torch.stack([bank.features[truth == c].mean(0) for c in range(10)])
    assert torch.allclose(bank.centroids, means, atol=1e-6)


def test_shuffled_pseudo_labels_keep_the_class_sizes_but_no_class_information(mixed_train):
    keys = {"pseudo_labels": "shuffled", "online_labels": False, "recluster_every": 1}
    method = make_method(mixed_train, **keys)
    truth, labels = mixed_train.labels, method.memory.labels.clone()
    assert torch.equal(torch.bincount(labels, minlength=10), torch.bincount(truth, minlength=10))
    figures = method.on_epoch_end(1)  # a k-means run re-clusters here (offline, every epoch)
    assert torch.equal(method.memory.labels, labels)
    assert figures["nmi"] < 0.05 and figures["purity"] < 0.25
    assert torch.equal(make_method(mixed_train, **keys).memory.labels, labels)  # the seed's
    assert not torch.equal(make_method(mixed_train, seed=1, **keys).memory.labels, labels)


def test_class_label_controls_refuse_an_unlabelled_training_set(mixed_train):
    unlabelled = ImageSet(mixed_train.images, torch.full((512,), -1), [], name="unlabelled")
    for control in ("oracle", "shuffled"):
        expected = f"pseudo_labels='{control}' needs a training set with every image labelled"
        with pytest.raises(ValueError, match=f"{expected}; unlabelled is not"):
            make_method(unlabelled, pseudo_labels=control)
    with pytest.raises(ValueError, match="pseudo_labels must be one of kmeans, oracle, shuffled"):
        build_config({"method": "interclr", "pseudo_labels": "classes"})


def test_the_trainer_gives_a_control_one_cluster_per_class(tmp_path, mixed_npz):
    config = interclr_config(tmp_path, f"npz:{mixed_npz}", pseudo_labels="shuffled")
    trainer = Trainer(config, progress=False)
    assert trainer.method.memory.num_clusters == 10
    assert config.method_options["num_clusters"] == 10  # recorded in config.yaml as used


# ---- positive-negative gap --------------------------------------------------------------------


def test_a_step_reports_the_mean_cosines_of_its_sampled_pairs(mixed_train, monkeypatch):
    drawn = {}
    for name in ("sample_positives", "sample_negatives"):
        original = getattr(interclr_module, name)

        def record(*args, _name=name, _original=original, **kwargs):
            drawn[_name] = _original(*args, **kwargs)
            return drawn[_name]

        monkeypatch.setattr(interclr_module, name, record)
    method = make_method(mixed_train, neg_sampling="random")
    inner, queries = method.inter_contrast, []

    def recorded(query, indices):
        queries.append(query.detach())
        return inner(query, indices)

    method.inter_contrast = recorded
    bank = method.memory.features.clone()  # the step samples this bank, then writes into it
    outputs = train_step(method, mixed_train, torch.arange(32) * 16)
    query = torch.nn.functional.normalize(queries[0], dim=1)
    positives, negatives = drawn["sample_positives"], drawn["sample_negatives"]
    pos = [float(query[i] @ bank[positives[i]]) for i in range(32)]
    neg = [float(query[i] @ bank[j]) for i in range(32) for j in negatives[i]]
    assert outputs["positive_cosine"].item() == pytest.approx(sum(pos) / len(pos), abs=1e-6)
    assert outputs["negative_cosine"].item() == pytest.approx(sum(neg) / len(neg), abs=1e-6)
    gap = sum(pos) / len(pos) - sum(neg) / len(neg)
    assert outputs["pn_gap"].item() == pytest.approx(gap, abs=1e-6)


def test_cosine_figures_on_a_bank_of_known_angles(mixed_train):
    """Cluster c's entries all sit at (e_c + e_10) / sqrt(2) and each query at its own
    cluster's point: its positive at cosine 1, every negative (another e_d) at exactly 1/2."""
    method = make_method(mixed_train, pseudo_labels="oracle")
    labels = mixed_train.labels
    one_hot = torch.nn.functional.one_hot
    points = one_hot(labels, 128).float() + one_hot(torch.full_like(labels, 10), 128).float()
    points = torch.nn.functional.normalize(points, dim=1)
    method.memory.initialize(points, labels)
    indices = torch.arange(0, 512, 16)
    _, figures = method.inter_contrast(points[indices], indices)
    assert figures["positive_cosine"].item() == pytest.approx(1.0, abs=1e-6)
    assert figures["negative_cosine"].item() == pytest.approx(0.5, abs=1e-6)
    assert figures["pn_gap"].item() == pytest.approx(0.5, abs=1e-6)
    with HostSyncs() as probe:  # the epoch averages them on the device
        interclr_module.cosine_figures(points[:4], points[:4], points[:12].view(4, 3, 128))
    assert probe.found == []
