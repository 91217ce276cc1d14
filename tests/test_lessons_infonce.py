"""Lesson 2 (InfoNCE by hand): every check with a right, a wrong and an unfinished answer;
the notebook executed headless with the solutions."""

from pathlib import Path

import pytest
import torch

from interlab.lessons.checking import FAIL_MARK
from interlab.lessons.infonce import (
    TemperatureExplorer,
    check_half_weight_temperature,
    check_info_nce_loss,
    check_negative_weights,
    half_weight_temperature,
    hardest_share,
    negative_gradients,
    softmax_weights,
    tiny_batch,
)
from interlab.lessons.solutions import infonce as solutions
from interlab.losses import info_nce
from tests.lesson_runs import assert_lesson_passed, execute

LESSON = Path(__file__).parents[1] / "notebooks" / "lessons" / "02_infonce.ipynb"


def unfinished(logits, temperature): ...  # what a student's untouched exercise cell holds


def test_tiny_batch_is_a_4_by_6_unit_batch_with_a_look_alike_negative():
    batch = tiny_batch()
    assert batch.logits.shape == (4, 6)
    for part in (batch.query, batch.positive):
        assert torch.allclose(part.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(batch.negatives.norm(dim=2), torch.ones(4, 5, dtype=torch.float64))
    # column 1 (the look-alike) is the hardest negative of every query
    assert (batch.logits[:, 1:].argmax(dim=1) == 0).all()
    assert torch.equal(tiny_batch(seed=3).query, tiny_batch(seed=3).query)


def test_negative_gradients_are_the_softmax_over_t():
    logits = tiny_batch().logits
    expected = softmax_weights(logits, 0.3)[:, 1:] / 0.3
    assert torch.allclose(negative_gradients(logits, 0.3), expected)


def test_half_weight_temperature_is_the_crossing():
    row = tiny_batch().logits[0]
    t = half_weight_temperature(row)
    assert hardest_share(row, t) > 0.5 >= hardest_share(row, t + 0.002)


def test_loss_check_right_answer():
    verdict = check_info_nce_loss(solutions.info_nce_from_logits)
    assert bool(verdict) is True, verdict
    batch = tiny_batch(seed=5)
    assert check_info_nce_loss(solutions.info_nce_from_logits, batch)
    by_hand = solutions.info_nce_from_logits(batch.logits, 0.2)
    assert torch.allclose(
        by_hand.float(), info_nce(batch.query, batch.positive, batch.negatives, 0.2)
    )


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        (
            lambda logits, t: solutions.info_nce_from_logits(logits, 1.0),
            "divide the logits by the temperature",
        ),
        (
            lambda logits, t: solutions.info_nce_from_logits(logits, t * t),
            "divided by the temperature twice",
        ),
        (
            lambda logits, t: -torch.log_softmax(logits / t, dim=1)[:, 0].sum(),
            "summed over the queries",
        ),
        (lambda logits, t: -torch.log_softmax(logits / t, dim=1)[:, 0], "one loss per query"),
        (lambda logits, t: torch.log_softmax(logits / t, dim=1)[:, 0].mean(), "sign is flipped"),
        (lambda logits, t: -torch.log_softmax(logits / t, dim=0)[:, 0].mean(), "wrong axis"),
        (lambda logits, t: 1 / 0, "raised ZeroDivisionError"),
        (lambda logits, t: "loss", "should be numbers"),
    ],
)
def test_loss_check_wrong_answers(wrong, reason):
    verdict = check_info_nce_loss(wrong)
    assert bool(verdict) is False
    assert reason in verdict.message, verdict


@pytest.mark.parametrize("answer", [unfinished, None, ..., 3.0])
def test_loss_check_unfinished(answer):
    verdict = check_info_nce_loss(answer)
    assert bool(verdict) is False
    assert FAIL_MARK in str(verdict)


def test_weights_check_right_answer():
    assert bool(check_negative_weights(solutions.negative_weights)) is True
    assert check_negative_weights(solutions.negative_weights, tiny_batch(seed=2))


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        (
            lambda logits, t: torch.softmax(logits / t, dim=1)[:, 1:],
            "the gradient on a cosine is probability / t",
        ),
        (lambda logits, t: torch.softmax(logits / t, dim=1) / t, "drop column 0"),
        (
            lambda logits, t: torch.softmax(logits[:, 1:] / t, dim=1) / t,
            "must include the positive",
        ),
        (
            lambda logits, t: torch.softmax(logits / t, dim=1)[:, 1:] / t / 4,
            "divided by the batch size",
        ),
        (lambda logits, t: -torch.softmax(logits / t, dim=1)[:, 1:] / t, "sign is flipped"),
        (lambda logits, t: torch.softmax(logits / t, dim=0)[:, 1:] / t, "wrong axis"),
    ],
)
def test_weights_check_wrong_answers(wrong, reason):
    verdict = check_negative_weights(wrong)
    assert bool(verdict) is False
    assert reason in verdict.message, verdict


@pytest.mark.parametrize("answer", [unfinished, None, ...])
def test_weights_check_unfinished(answer):
    assert bool(check_negative_weights(answer)) is False


def test_temperature_check():
    batch = tiny_batch()
    right = solutions.highest_half_temperature(batch.logits[0])
    assert bool(check_half_weight_temperature(right)) is True
    too_high = check_half_weight_temperature(right + 0.3)
    assert not too_high and "lower the temperature" in too_high.message
    too_low = check_half_weight_temperature(right / 4)
    assert not too_low and "find the highest" in too_low.message
    for unfinished_answer in (None, ..., "warm", -1.0):
        assert bool(check_half_weight_temperature(unfinished_answer)) is False


def test_temperature_explorer_draws_static_figures(monkeypatch):
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    explorer = TemperatureExplorer(tiny_batch().logits)
    assert "p(positive)" in explorer.summary.value
    assert explorer.temperature.style.description_width == "initial"
    explorer.temperature.value = 0.05
    assert "hardest negative takes 100%" in explorer.summary.value
    explorer.show()
    figures = [obj for obj in shown if type(obj).__name__ == "Figure"]
    assert len(figures) >= 3


@pytest.mark.slow
def test_lesson_runs_headless_with_solutions(tmp_path):
    assert_lesson_passed(execute(LESSON, tmp_path))
