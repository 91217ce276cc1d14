import math

import pytest
import torch
import torch.nn.functional as F

from interlab.losses import apply_margin, info_nce, margin_nce, nt_xent, positive_probability


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


def hand_margin_loss(positive_logit: float, negative_logits: list[float], t: float) -> float:
    logits = [positive_logit, *negative_logits]
    return -math.log(math.exp(logits[0] / t) / sum(math.exp(x / t) for x in logits))


# The query along x, the positive at 60 degrees (cos 0.5), negatives at 90 and 180 degrees.
QUERY, POSITIVE = unit([1.0, 0.0]), unit([0.5, math.sqrt(3) / 2])
NEGATIVES = unit([0.0, 1.0], [-1.0, 0.0])
THETA = math.pi / 3


@pytest.mark.parametrize(
    ("margin", "kind", "positive_logit"),
    [
        (-0.5, "cos", 0.5 + 0.5),  # cos(theta) - m, the released default: less stringent
        (0.5, "cos", 0.5 - 0.5),  # a stricter, CosFace-like boundary
        (0.3, "arc", math.cos(THETA + 0.3)),
        (-0.3, "arc", math.cos(THETA - 0.3)),
    ],
)
def test_margin_nce_matches_hand_computed_values(margin, kind, positive_logit):
    t = 0.2
    expected = hand_margin_loss(positive_logit, [0.0, -1.0], t)
    loss = margin_nce(QUERY, POSITIVE, NEGATIVES, t, margin, kind)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_arc_margin_fallbacks_where_theta_plus_m_leaves_0_pi():
    # Negative margin and theta <= |m|: cos(theta) + |m| sin|m| instead of cos(theta + m).
    near = torch.tensor([[math.cos(0.2)]], dtype=torch.float64)
    assert apply_margin(near, -0.5, "arc").item() == pytest.approx(
        math.cos(0.2) + 0.5 * math.sin(0.5), abs=1e-6
    )
    # Positive margin and theta >= pi - m: cos(theta) - m sin(m).
    far = torch.tensor([[math.cos(3.0)]], dtype=torch.float64)
    assert apply_margin(far, 0.5, "arc").item() == pytest.approx(
        math.cos(3.0) - 0.5 * math.sin(0.5), abs=1e-6
    )


def test_margin_zero_is_exactly_info_nce():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(6, 16), dim=1), F.normalize(torch.randn(6, 16), dim=1)
    negatives = F.normalize(torch.randn(6, 9, 16), dim=1)
    for kind in ("cos", "arc"):
        assert torch.equal(
            margin_nce(q, p, negatives, 0.2, 0.0, kind), info_nce(q, p, negatives, 0.2)
        )


def test_negative_margin_lowers_the_loss_and_bad_kind_is_named():
    torch.manual_seed(1)
    q, p = F.normalize(torch.randn(6, 16), dim=1), F.normalize(torch.randn(6, 16), dim=1)
    negatives = F.normalize(torch.randn(20, 16), dim=1)
    losses = [margin_nce(q, p, negatives, 0.2, m).item() for m in (-0.5, 0.0, 0.5)]
    assert losses[0] < losses[1] < losses[2]
    with pytest.raises(ValueError, match="unknown margin kind 'sphere'"):
        margin_nce(q, p, negatives, 0.2, 0.1, "sphere")


def test_positive_probability_shows_saturation_at_low_temperature():
    """The issue's example: a positive at cosine 0.6 against 650 negatives at 0.3, margin -0.5.

    At t=0.1 the positive's logit is (0.6 + 0.5) / 0.1 = 11 against 3 for each negative:
    p = 1 / (1 + 650 e^-8) = 0.821. At t=0.2: 5.5 against 1.5, p = 1 / (1 + 650 e^-4) = 0.0775.
    """
    positive = torch.tensor([0.6])
    negatives = torch.full((1, 650), 0.3)
    at_01 = positive_probability(positive, negatives, 0.1, margin=-0.5, kind="cos")
    at_02 = positive_probability(positive, negatives, 0.2, margin=-0.5, kind="cos")
    assert at_01.item() == pytest.approx(1 / (1 + 650 * math.exp(-8)), rel=1e-5)
    assert at_02.item() == pytest.approx(1 / (1 + 650 * math.exp(-4)), rel=1e-5)
    assert at_01.item() == pytest.approx(0.821, abs=1e-3)
    assert at_02.item() == pytest.approx(0.0775, abs=1e-4)


@pytest.mark.parametrize(("margin", "kind"), [(-0.5, "cos"), (0.3, "arc"), (0.0, "cos")])
def test_margin_nce_is_minus_log_of_the_positive_probability(margin, kind):
    generator = torch.Generator().manual_seed(3)
    query = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    positive = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    negatives = F.normalize(torch.randn(5, 7, 8, generator=generator), dim=2)
    loss = margin_nce(query, positive, negatives, 0.2, margin, kind)
    cosines = (query * positive).sum(1), torch.einsum("bd,bkd->bk", query, negatives)
    probability = positive_probability(*cosines, 0.2, margin, kind)
    assert loss.item() == pytest.approx(-probability.log().mean().item(), rel=1e-5)


def test_positive_probability_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"positive \(B,\) and negatives \(B, K\)"):
        positive_probability(torch.zeros(3), torch.zeros(2, 4), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        positive_probability(torch.zeros(3), torch.zeros(3, 4), 0.0)
