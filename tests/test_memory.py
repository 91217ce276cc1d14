"""The memory bank: centroids, online re-labelling, small-cluster repair, the sorted index."""

import pytest
import torch
import torch.nn.functional as F

from interlab.memory import MemoryBank, split_in_two


def member_means(bank: MemoryBank) -> torch.Tensor:
    return torch.stack([bank.features[bank.labels == c].mean(0) for c in range(bank.num_clusters)])


def clustered_bank(sizes: list[int], dim: int = 8, seed: int = 0) -> MemoryBank:
    """A bank whose clusters sit around separated directions, with the given sizes.

    Entries are shuffled, so the sorted-label index is not the identity.
    """
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(sizes), dim, generator=generator), dim=1)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    features = centres[labels] + 0.2 * torch.randn(len(labels), dim, generator=generator)
    bank = MemoryBank(len(labels), dim, len(sizes))
    bank.initialize(features, labels)
    return bank


def assert_index_consistent(bank: MemoryBank) -> None:
    sizes = torch.bincount(bank.labels, minlength=bank.num_clusters)
    assert torch.equal(bank.cluster_sizes(), sizes)
    for c in range(bank.num_clusters):
        members = bank.members[bank.starts[c] : bank.starts[c + 1]]
        assert torch.equal(members.sort().values, torch.nonzero(bank.labels == c).flatten())
    assert torch.equal(bank.members[bank.position], torch.arange(bank.size))


def test_initialize_normalises_and_centroids_are_unnormalised_member_means():
    bank = clustered_bank([30, 20, 50])
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(100), atol=1e-6)
    assert torch.allclose(bank.centroids, member_means(bank), atol=1e-6)
    assert (bank.centroids.norm(dim=1) < 1).all()  # means of unit vectors, not re-normalised
    assert bool(bank.ready)
    assert_index_consistent(bank)


def test_update_replaces_or_mixes_and_relabels_to_the_nearest_centroid():
    bank = clustered_bank([30, 30, 40])
    new = torch.randn(5, 8)
    indices = torch.tensor([0, 1, 35, 70, 99])
    before = bank.labels[indices].clone()
    changed = bank.update(indices, new, relabel=True)
    assert torch.allclose(bank.features[indices], F.normalize(new, dim=1), atol=1e-6)
    expected = (F.normalize(new, dim=1) @ bank.centroids.T).argmax(dim=1)
    assert torch.equal(bank.labels[indices], expected)
    assert changed.item() == pytest.approx((expected != before).float().mean().item())
    assert_index_consistent(bank)

    mixing = clustered_bank([30, 30, 40])
    mixing.momentum = 0.5
    old = mixing.features[indices].clone()
    mixing.update(indices, new, relabel=False)
    expected_mix = F.normalize(0.5 * old + 0.5 * F.normalize(new, dim=1), dim=1)
    assert torch.allclose(mixing.features[indices], expected_mix, atol=1e-6)


def test_offline_updates_keep_labels():
    bank = clustered_bank([30, 30, 40])
    labels = bank.labels.clone()
    changed = bank.update(torch.arange(50), torch.randn(50, 8), relabel=False)
    assert torch.equal(bank.labels, labels) and changed.item() == 0


def test_small_clusters_are_dissolved_and_refilled_from_the_largest():
    bank = clustered_bank([120, 4, 40, 9, 27])
    refilled = bank.fix_small_clusters(min_cluster=10)
    sizes = bank.cluster_sizes()
    assert refilled == 2
    assert len(sizes) == 5 and int(sizes.sum()) == 200
    assert int(sizes.min()) >= 10
    assert_index_consistent(bank)
    # The two refilled clusters (1 and 3) hold halves of the former largest and own centroids.
    for c in (1, 3):
        assert torch.allclose(bank.centroids[c], bank.features[bank.labels == c].mean(0), atol=1e-5)


def test_online_maintenance_invariants_over_many_steps():
    torch.manual_seed(0)
    bank = clustered_bank([100, 60, 40, 30, 20, 50], seed=1)
    min_cluster, interval, refilled = 25, 5, 0  # 2 x 25 <= 300 / 6: the largest can split
    for step in range(1, 41):
        indices = torch.randperm(bank.size)[:32]
        # Keys near one centroid pull members into it and drain the others into refills.
        keys = bank.centroids[step % 2] + 0.3 * torch.randn(32, 8)
        bank.update(indices, keys, relabel=True)
        refilled += bank.fix_small_clusters(min_cluster)
        if step % interval == 0:
            bank.refresh_centroids()
            assert torch.allclose(bank.centroids, member_means(bank), atol=1e-5)
        assert int(bank.cluster_sizes().min()) >= min_cluster
        assert bank.num_clusters == 6 and int(bank.cluster_sizes().sum()) == 300
    assert refilled >= 3  # the invariant was tested through real refills, not vacuously
    assert_index_consistent(bank)


def test_split_in_two_recovers_two_blobs_and_falls_back_to_halves():
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(30, 4, generator=generator) + torch.tensor([5.0, 0, 0, 0])
    right = torch.randn(50, 4, generator=generator) - torch.tensor([5.0, 0, 0, 0])
    second = split_in_two(torch.cat([left, right]), min_side=5)
    assert second[:30].unique().numel() == 1 and second[30:].unique().numel() == 1
    assert bool(second[0]) != bool(second[30])
    # One far outlier: 2-means would split 1 vs 39; the fallback cuts at the median.
    points = torch.cat([0.01 * torch.randn(39, 4, generator=generator), torch.full((1, 4), 100.0)])
    assert int(split_in_two(points, min_side=10).sum()) == 20


def test_state_dict_round_trip_rebuilds_the_index():
    bank = clustered_bank([30, 30, 40])
    copy = MemoryBank(100, 8, 3)
    assert not torch.equal(bank.members, torch.arange(100))
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.members, bank.members) and torch.equal(copy.starts, bank.starts)
    assert torch.equal(copy.position, bank.position)
    assert "members" not in bank.state_dict()  # derived, so not stored


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="num_clusters must be in \\[1, 10\\]"):
        MemoryBank(10, 4, 11)
    bank = MemoryBank(10, 4, 2)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 2\\)"):
        bank.initialize(torch.randn(10, 4), torch.arange(10) % 3)
