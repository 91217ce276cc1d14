import math

import pytest
import torch
import torch.nn.functional as F

from interlab.losses import info_nce, nt_xent


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_info_nce_matches_hand_computed_value():
    # One query along x; positive at 60 degrees (cos 0.5); negatives at 90 and 180 degrees.
    query = unit([1.0, 0.0])
    positive = unit([0.5, math.sqrt(3) / 2])
    negatives = unit([0.0, 1.0], [-1.0, 0.0])
    t = 0.5
    expected = -math.log(
        math.exp(0.5 / t) / (math.exp(0.5 / t) + math.exp(0.0 / t) + math.exp(-1.0 / t))
    )
    assert info_nce(query, positive, negatives, t).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_per_query_negatives_equal_shared_when_repeated():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    negatives = F.normalize(torch.randn(5, 8), dim=1)
    shared = info_nce(q, p, negatives, 0.2)
    per_query = info_nce(q, p, negatives.expand(4, 5, 8), 0.2)
    assert per_query.item() == pytest.approx(shared.item(), abs=1e-6)


def test_info_nce_per_query_negatives_hand_value():
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([1.0, 0.0], [0.0, 1.0])
    negatives = torch.stack([unit([0.0, 1.0]), unit([0.0, -1.0])])  # (2, 1, 2)
    t = 1.0
    first = -math.log(math.e / (math.e + 1.0))  # cos(q0, n0) = 0
    second = -math.log(math.e / (math.e + math.exp(-1.0)))  # cos(q1, n1) = -1
    assert info_nce(q, p, negatives, t).item() == pytest.approx((first + second) / 2, abs=1e-6)


def test_info_nce_rejects_bad_shapes_and_temperature():
    q = unit([1.0, 0.0])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, q, q, 0.0)
    with pytest.raises(ValueError, match="negatives"):
        info_nce(q, q, torch.zeros(3, 5), 0.1)
    with pytest.raises(ValueError, match="query and positive"):
        info_nce(q, unit([1.0, 0.0], [0.0, 1.0]), q, 0.1)


def test_nt_xent_matches_hand_computed_value():
    # Two images, two views each; views of the same image coincide, other image orthogonal.
    z1 = unit([1.0, 0.0], [0.0, 1.0])
    z2 = unit([1.0, 0.0], [0.0, 1.0])
    t = 0.5
    # Each anchor: partner cos 1, the two other views cos 0 -> same loss for all four anchors.
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_equals_info_nce_over_other_views():
    torch.manual_seed(1)
    z1, z2 = F.normalize(torch.randn(3, 6), dim=1), F.normalize(torch.randn(3, 6), dim=1)
    z = torch.cat([z1, z2])
    losses = []
    for i in range(6):
        partner = (i + 3) % 6
        others = [j for j in range(6) if j not in (i, partner)]
        losses.append(info_nce(z[i : i + 1], z[partner : partner + 1], z[others], 0.3))
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(torch.stack(losses).mean().item(), abs=1e-6)
