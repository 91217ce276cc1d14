"""Lesson 6 (How strict a boundary?): every check with a right, a wrong and an unfinished
answer, the lesson's helpers, the explorer's full labels, and the notebook executed headless."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from interlab.lab.explore import MarginExplorer
from interlab.lab.explore.margin import margin_curves
from interlab.lessons import margins as lesson
from interlab.lessons.checking import FAIL_MARK
from interlab.lessons.solutions import margins as solutions
from tests.lesson_runs import assert_lesson_passed, execute, unfinished

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "lessons" / "06_margins.ipynb"


def test_cosine_margin_check():
    assert lesson.check_cosine_margin(solutions.cosine_margin)
    sign = lesson.check_cosine_margin(lambda c, m: c + m)
    assert not sign and "wrong sign" in sign.message
    missing = lesson.check_cosine_margin(lambda c, m: c)
    assert not missing and "missing" in missing.message


def test_arc_margin_check():
    assert lesson.check_arc_margin(solutions.arc_margin)
    no_angle = lesson.check_arc_margin(lambda c, m: torch.cos(c + m))
    assert not no_angle and "arccos" in no_angle.message
    sign = lesson.check_arc_margin(lambda c, m: torch.cos(torch.acos(c) - m))
    assert not sign and "wrong sign" in sign.message
    cosine_kind = lesson.check_arc_margin(solutions.cosine_margin)
    assert not cosine_kind and "cosine margin" in cosine_kind.message


def test_positive_probability_check():
    assert lesson.check_positive_probability(solutions.positive_probability)
    no_t = lesson.check_positive_probability(
        lambda p, n, t, m: solutions.positive_probability(p, n, 1.0, m)
    )
    assert not no_t and "temperature" in no_t.message
    no_margin = lesson.check_positive_probability(
        lambda p, n, t, m: solutions.positive_probability(p, n, t, 0.0)
    )
    assert not no_margin and "margin is missing" in no_margin.message
    sign = lesson.check_positive_probability(
        lambda p, n, t, m: solutions.positive_probability(p, n, t, -m)
    )
    assert not sign and "sign" in sign.message


@pytest.mark.parametrize(
    "check",
    [lesson.check_cosine_margin, lesson.check_arc_margin, lesson.check_positive_probability],
)
def test_unfinished_and_broken_answers_are_not_yet(check):
    for answer in (None, ..., unfinished):
        verdict = check(answer)
        assert not verdict and FAIL_MARK in str(verdict)
    wrong_shape = check(lambda *a: torch.zeros(2))
    assert not wrong_shape and "shape" in wrong_shape.message


def test_synthetic_cosines_are_fixed_and_shaped_as_described():
    first, again = lesson.synthetic_cosines(seed=0), lesson.synthetic_cosines(seed=0)
    assert np.array_equal(first["positive"], again["positive"])
    noisy = first["noisy"]
    assert first["positive"][~noisy].mean() > 0.5 > first["positive"][noisy].mean()
    assert np.abs(first["negative"]).max() <= 0.99


def test_autograd_gradient_is_the_explorers_pull():
    cosines = lesson.synthetic_cosines(negatives=65)
    negatives = torch.from_numpy(cosines["negative"])
    for margin, kind in ((-0.5, "cos"), (0.3, "arc")):
        p, grad = lesson.probability_and_gradient(0.3, negatives, 0.2, margin, kind)
        curve = margin_curves(cosines["negative"], margin, kind, 0.2, grid=np.array([0.3]))
        assert p == pytest.approx(curve["probability"][0], rel=1e-5)
        assert -grad == pytest.approx(curve["pull"][0], rel=1e-4)


def test_a_looser_margin_pulls_noisy_positives_less():
    pulls = lesson.pull_by_group(
        lesson.synthetic_cosines(negatives=65), [-0.5, 0.0, 0.5], "cos", 0.2
    )
    assert pulls[-0.5]["noisy"] < pulls[0.0]["noisy"] < pulls[0.5]["noisy"]
    assert pulls[-0.5]["clean"] < pulls[-0.5]["noisy"]  # the clean ones saturate first
    fig = lesson.plot_pull_by_group(pulls, "cos", 0.2)
    plt.close(fig)


def test_margin_explorer_labels_are_shown_in_full():
    explorer = MarginExplorer(np.array([0.5]), np.array([0.1, 0.2]))
    for control in (explorer.margin, explorer.temperature, explorer.kind):
        assert control.style.description_width == "initial", control.description
    assert explorer.temperature.description == "temperature t"
    plt.close("all")


@pytest.mark.slow
def test_lesson_runs_headless_with_solutions(tmp_path):
    assert_lesson_passed(execute(NOTEBOOK, tmp_path))
