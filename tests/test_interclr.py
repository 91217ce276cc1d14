"""InterCLR end to end on CPU: every switch steps, bank maintenance, metrics, resume, DDP, CLI."""

import os

import pytest
import torch

import interlab.methods.interclr as interclr_module
from interlab.augment import AugmentConfig
from interlab.cli import main
from interlab.config import build_config
from interlab.methods import build_method
from interlab.train import Trainer, read_metrics
from tests.conftest import assert_same_state, cpu_config
from tests.test_distributed import set_rank_environment, spawn_two_ranks

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
    method = build_method(config, AugmentConfig(size=32), len(train_set))
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
    # 512 images: 512 / 128 = 4 clusters, 1.3% -> 7 negatives, 10% -> a pool of 51.
    assert (method.options.num_clusters, method.options.num_negatives, method.options.pool) == (
        4,
        7,
        51,
    )
    assert method.resolved_options()["num_clusters"] == 4  # the trainer records it
    assert bool(method.memory.ready)


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
    method = make_method(mixed_train, min_cluster=64, centroid_interval=3)
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
        make_method(mixed_train, num_clusters=100)
    with pytest.raises(ValueError, match="num_negatives=600 must be smaller than the bank"):
        make_method(mixed_train, num_negatives=600, pool=100)


def test_short_run_logs_every_metric_and_resumes_to_the_same_state(tmp_path, mixed_npz):
    data = f"npz:{mixed_npz}"
    whole = Trainer(interclr_config(tmp_path / "whole", data), progress=False).fit(resume=False)
    for record in whole.metrics:
        assert set(record) >= INTERCLR_METRICS, INTERCLR_METRICS - set(record)
        assert 0 <= record["nmi"] <= 1 and 0 <= record["false_negative_rate"] <= 1
        assert record["cluster_size_min"] >= 20
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
    method = make_method(mixed_train, num_clusters=10, min_cluster=5, probe_queries=128)
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
