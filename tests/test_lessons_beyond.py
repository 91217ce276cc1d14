"""Lesson 7 (Beyond one image): every check with a right, a wrong and an unfinished answer,
and the notebook (two short runs) executed headless with the solutions filled in."""

from pathlib import Path

import pytest
import torch

from interlab.lessons import beyond as lesson
from interlab.lessons.checking import FAIL_MARK
from interlab.lessons.solutions import beyond as solutions
from tests.lesson_runs import assert_lesson_passed, execute, unfinished

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "lessons" / "07_beyond_one_image.ipynb"


def test_soft_neighbour_check():
    assert lesson.check_soft_neighbour(solutions.soft_neighbour)
    unnormalised = lesson.check_soft_neighbour(lambda q, s, t: (s @ q / t).softmax(0) @ s)
    assert not unnormalised and "renormalise" in unnormalised.message
    no_t = lesson.check_soft_neighbour(lambda q, s, t: solutions.soft_neighbour(q, s, 1.0))
    assert not no_t and "temperature" in no_t.message
    weights = lesson.check_soft_neighbour(lambda q, s, t: (s @ q / t).softmax(0))
    assert not weights and "weights" in weights.message
    hard = lesson.check_soft_neighbour(lambda q, s, t: s[(s @ q).argmax()])
    assert not hard and "hard nearest neighbour" in hard.message


def test_cycle_back_check():
    assert lesson.check_cycle_back(solutions.cycle_back)
    least = lesson.check_cycle_back(lambda n, f: int((f @ n).argmin()))
    assert not least and "least similar" in least.message
    cosine = lesson.check_cycle_back(lambda n, f: float((f @ n).max()))
    assert not cosine and "not a frame index" in cosine.message
    fixed = lesson.check_cycle_back(lambda n, f: 2)  # the own frame moves between the cases
    assert not fixed


def test_search_weights_check():
    assert lesson.check_search_weights(solutions.search_weights)
    dot = lesson.check_search_weights(lambda x, m: torch.einsum("c,chw->hw", x, m))
    assert not dot and "normalise" in dot.message
    softmax = lesson.check_search_weights(
        lambda x, m: solutions.search_weights(x, m).flatten().softmax(0).view(m.shape[1:])
    )
    assert not softmax and "no softmax" in softmax.message


@pytest.mark.parametrize(
    "check", [lesson.check_soft_neighbour, lesson.check_cycle_back, lesson.check_search_weights]
)
def test_unfinished_and_broken_answers_are_not_yet(check):
    for answer in (None, ..., unfinished):
        verdict = check(answer)
        assert not verdict and FAIL_MARK in str(verdict)
    raising = check(lambda *a: 1 / 0)
    assert not raising and "ZeroDivisionError" in raising.message


def test_toy_search_weights_are_cosines_in_unit_range():
    toy = lesson.toy_search(0)
    weights = solutions.search_weights(toy["local"], toy["map"])
    assert weights.shape == toy["map"].shape[1:]
    assert float(weights.min()) >= 0 and float(weights.max()) <= 1 + 1e-9


@pytest.mark.slow
def test_lesson_runs_headless_with_solutions(tmp_path):
    notebook = execute(
        NOTEBOOK, tmp_path, out_dir=str(tmp_path / "runs"), cycle_epochs=1, scfs_epochs=1
    )
    assert_lesson_passed(notebook)
