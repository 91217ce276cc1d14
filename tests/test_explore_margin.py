"""MarginExplorer: its curves against hand-computed softmax values, its widgets drive them."""

import math

import numpy as np
import pytest
import torch

from interlab.lab.explore import MarginExplorer, margin_curves
from interlab.lab.explore.margin import margin_slope
from interlab.losses import apply_margin

NEGATIVES = np.array([0.1, -0.2, 0.3])


def test_probability_matches_the_softmax_by_hand():
    grid = np.array([0.5])
    for margin in (-0.5, 0.0, 0.5):
        t = 0.2
        positive = 0.5 - margin
        expected = math.exp(positive / t) / (
            math.exp(positive / t) + sum(math.exp(n / t) for n in NEGATIVES)
        )
        curves = margin_curves(NEGATIVES, margin, "cos", t, grid)
        assert curves["probability"][0] == pytest.approx(expected, rel=1e-9)
        assert curves["pull"][0] == pytest.approx((1 - expected) / t, rel=1e-9)


def test_a_negative_margin_raises_p_and_eases_the_pull_everywhere():
    loose = margin_curves(NEGATIVES, -0.5, "cos", 0.2)
    strict = margin_curves(NEGATIVES, 0.0, "cos", 0.2)
    assert (loose["probability"] > strict["probability"]).all()
    assert (loose["pull"] < strict["pull"]).all()


def test_arc_slope_is_the_derivative_of_the_shifted_logit():
    cosine = np.array([-0.6, 0.0, 0.4, 0.8])
    for margin in (-0.3, 0.3):
        h = 1e-3  # apply_margin's arc path runs in float32
        shifted = [
            apply_margin(torch.tensor(cosine + d, dtype=torch.float64), margin, "arc").numpy()
            for d in (h, -h)
        ]
        numeric = (shifted[0] - shifted[1]) / (2 * h)
        assert np.allclose(margin_slope(cosine, margin, "arc"), numeric, rtol=1e-3)


def test_sliders_drive_the_displayed_figures():
    rng = np.random.default_rng(0)
    explorer = MarginExplorer(rng.uniform(0.2, 0.9, 200), rng.uniform(-0.3, 0.5, 5000), margin=0.0)
    before, text_before = explorer.mean_positive_probability(), explorer.summary.value
    explorer.margin.value = -0.5  # what a student does with the slider
    assert explorer.mean_positive_probability() > before
    assert explorer.summary.value != text_before
    explorer.kind.value = "arc"
    explorer.temperature.value = 0.5
    assert explorer.curves()["probability"].shape == (199,)
    assert explorer.drawn == (-0.5, "arc", 0.5)  # the figure follows the last slider move


def test_empty_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        MarginExplorer(np.array([]), NEGATIVES)
    with pytest.raises(ValueError, match="unknown margin kind 'sphere'"):
        margin_curves(NEGATIVES, 0.1, "sphere", 0.2)
