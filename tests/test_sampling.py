"""Samplers against their definitions on a hand-built bank."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from interlab.memory import MemoryBank
from interlab.sampling import false_negative_share, sample_negatives, sample_positives

N, DIM = 60, 2


@pytest.fixture
def bank() -> MemoryBank:
    """60 unit vectors at angles 6 degrees apart; clusters of 10 consecutive angles.

    Bank entries are stored in a shuffled order, so the sorted-label index is not the
    identity and a sampler that skipped it would pick the wrong entries.
    """
    step = torch.randperm(N, generator=torch.Generator().manual_seed(7))
    angles = step * (2 * torch.pi / N)
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    bank = MemoryBank(N, DIM, 6)
    bank.initialize(features, step // 10)
    return bank


def members_of(bank: MemoryBank, cluster: int) -> set[int]:
    return set(torch.nonzero(bank.labels == cluster).flatten().tolist())


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ranked_outside_cluster(bank: MemoryBank, index: int) -> list[int]:
    """Reference ranking: bank entries outside `index`'s cluster, most similar first."""
    query = bank.features[index]
    others = [j for j in range(N) if bank.labels[j] != bank.labels[index]]
    return sorted(others, key=lambda j: -float(query @ bank.features[j]))


def queries_of(bank: MemoryBank, indices: torch.Tensor) -> torch.Tensor:
    return F.normalize(bank.features[indices], dim=1)


def test_hard_returns_exactly_the_top_ranked_non_cluster_entries(bank):
    indices = torch.tensor([0, 15, 33, 59])
    picked = sample_negatives(bank, queries_of(bank, indices), indices, "hard", 7, 20)
    assert picked.shape == (4, 7)
    for row, index in zip(picked.tolist(), indices.tolist(), strict=True):
        reference = ranked_outside_cluster(bank, index)
        sims = [float(bank.features[index] @ bank.features[j]) for j in row]
        assert set(row) <= set(reference[:8])  # ties at the 7th place (equal angles) allowed
        assert all(a >= b - 1e-6 for a, b in itertools.pairwise(sims))  # most similar first


@pytest.mark.parametrize("strategy", ["semihard", "semieasy"])
def test_pools_draw_distinct_entries_only_from_their_pool(bank, strategy):
    indices = torch.tensor([5, 25, 44])
    pool, count = 16, 6
    seen = {i: set() for i in indices.tolist()}
    for seed in range(200):
        picked = sample_negatives(
            bank, queries_of(bank, indices), indices, strategy, count, pool, generator(seed)
        )
        assert picked.shape == (3, count)
        for row, index in zip(picked.tolist(), indices.tolist(), strict=True):
            ranked = ranked_outside_cluster(bank, index)
            allowed = set(ranked[:pool] if strategy == "semihard" else ranked[-pool:])
            assert len(set(row)) == count  # without replacement
            assert set(row) <= allowed
            seen[index].update(row)
    for index in indices.tolist():  # uniform over the pool: every member gets drawn
        ranked = ranked_outside_cluster(bank, index)
        assert seen[index] == set(ranked[:pool] if strategy == "semihard" else ranked[-pool:])


def test_random_is_uniform_outside_the_cluster(bank):
    indices = torch.tensor([12] * 20)
    counts = torch.zeros(N)
    for seed in range(100):
        picked = sample_negatives(
            bank, queries_of(bank, indices), indices, "random", 40, 0, generator(seed)
        )
        counts += torch.bincount(picked.flatten(), minlength=N)
    own = bank.labels == bank.labels[12]
    assert counts[own].sum() == 0  # never the query's own cluster
    outside = counts[~own]
    expected = 100 * 20 * 40 / 50  # 80,000 draws over 50 entries; sd ~ 40
    assert (outside - expected).abs().max() < 0.1 * expected  # ~7 standard deviations


@pytest.mark.parametrize("strategy", ["random", "hard", "semihard", "semieasy"])
def test_no_negative_shares_the_query_cluster(bank, strategy):
    indices = torch.arange(0, N, 3)
    picked = sample_negatives(
        bank, queries_of(bank, indices), indices, strategy, 9, 30, generator()
    )
    assert picked.shape == (len(indices), 9)
    assert not (bank.labels[picked] == bank.labels[indices].unsqueeze(1)).any()


def test_positives_come_from_the_cluster_and_can_include_the_query(bank):
    indices = torch.full((20000,), 23)
    cluster = int(bank.labels[23])
    picked = sample_positives(bank, indices, generator())
    assert (bank.labels[picked] == cluster).all()
    share_self = (picked == 23).float().mean().item()
    assert share_self == pytest.approx(0.1, abs=0.01)  # 1 of 10 members, as in the original
    assert set(picked.tolist()) == members_of(bank, cluster)


def test_positives_can_exclude_the_query(bank):
    indices = torch.arange(N).repeat(200)
    picked = sample_positives(bank, indices, generator(), exclude_self=True)
    assert (picked != indices).all()
    assert (bank.labels[picked] == bank.labels[indices]).all()
    assert set(picked[indices == 23].tolist()) == members_of(bank, int(bank.labels[23])) - {23}


def test_counts_that_do_not_fit_are_named(bank):
    index = torch.tensor([0])
    query = queries_of(bank, index)
    with pytest.raises(ValueError, match="num_negatives=60 must be smaller than the bank"):
        sample_negatives(bank, query, index, "random", 60, 0)
    with pytest.raises(ValueError, match="num_negatives=20 exceeds the semihard pool=10"):
        sample_negatives(bank, query, index, "semihard", 20, 10)
    with pytest.raises(ValueError, match="unknown negative sampling 'nearest'"):
        sample_negatives(bank, query, index, "nearest", 5, 10)


def test_false_negative_share_counts_known_same_class_negatives_and_names_a_stray_table():
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    indices = torch.tensor([0, 2])
    negatives = torch.tensor([[1, 2, 4], [3, 3, 5]])  # query 0: 1 same of 2 known; query 2: 2 of 3
    assert false_negative_share(labels, indices, negatives).item() == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="labels are on meta but the indices on cpu"):
        false_negative_share(labels.to("meta"), indices, negatives)
    with pytest.raises(ValueError, match="labels are on cpu but the negatives on meta"):
        false_negative_share(labels, indices, negatives.to("meta"))
