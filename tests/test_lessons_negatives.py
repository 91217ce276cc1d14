"""Lesson 5 (Which negatives?): every check with a right, a wrong and an unfinished answer,
the toy bank, and the notebook executed headless with the solutions filled in."""

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from interlab.lessons import negatives as lesson
from interlab.lessons.checking import FAIL_MARK
from interlab.lessons.solutions import negatives as solutions
from interlab.sampling import sample_negatives
from tests.lesson_runs import assert_lesson_passed, execute, unfinished

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "lessons" / "05_negatives.ipynb"


def test_toy_bank_is_reproducible_and_its_hardest_negative_is_false():
    first, again = lesson.toy_bank(0), lesson.toy_bank(0)
    assert torch.equal(first.similarity, again.similarity)
    assert first.query_cluster == 0 and float(first.similarity[0]) == pytest.approx(1.0)
    hard = lesson.package_negatives(first, "hard", 4, 4)
    assert bool(first.classes[hard[0]] == first.classes[0])  # a cat in the other cat cluster
    assert "| query |" in first.table() and "cat" in first.table()


def test_hard_negatives_check():
    assert lesson.check_hard_negatives(solutions.hard_negatives)
    with_own = lesson.check_hard_negatives(lambda s, c, q, k: s.topk(k).indices)
    assert not with_own and "own cluster" in with_own.message
    least = lesson.check_hard_negatives(
        lambda s, c, q, k: s.masked_fill(c == q, 9.0).topk(k, largest=False).indices
    )
    assert not least and "least similar" in least.message
    reversed_order = lesson.check_hard_negatives(lambda *a: solutions.hard_negatives(*a).flip(0))
    assert not reversed_order and "wrong order" in reversed_order.message


def test_semihard_pool_check():
    assert lesson.check_semihard_pool(solutions.semihard_pool)
    assert lesson.check_semihard_pool(lambda *a: solutions.semihard_pool(*a).flip(0))  # any order
    short = lesson.check_semihard_pool(lambda s, c, q, p: solutions.semihard_pool(s, c, q, p - 1))
    assert not short and "should hold 8 indices" in short.message


def test_false_negative_share_check():
    assert lesson.check_false_negative_share(solutions.false_negative_share)
    count = lesson.check_false_negative_share(lambda cl, q, n: int((cl[n] == cl[q]).sum()))
    assert not count and "count" in count.message
    percent = lesson.check_false_negative_share(lambda *a: 100 * solutions.false_negative_share(*a))
    assert not percent and "percentage" in percent.message
    zero = lesson.check_false_negative_share(lambda *a: 0.0)
    assert not zero and "true classes" in zero.message


@pytest.mark.parametrize(
    "check",
    [lesson.check_hard_negatives, lesson.check_semihard_pool, lesson.check_false_negative_share],
)
def test_unfinished_and_broken_answers_are_not_yet(check):
    for answer in (None, ..., unfinished):
        verdict = check(answer)
        assert not verdict and FAIL_MARK in str(verdict)
    raising = check(lambda *a: 1 / 0)
    assert not raising and "ZeroDivisionError" in raising.message


def test_semihard_draws_lie_in_the_solution_pool():
    toy = lesson.toy_bank(1)
    pool = set(solutions.semihard_pool(toy.similarity, toy.clusters, toy.query_cluster, 8).tolist())
    query = toy.bank.features[:1]
    for seed in range(5):
        drawn = sample_negatives(
            toy.bank,
            query,
            torch.tensor([0]),
            "semihard",
            3,
            8,
            torch.Generator().manual_seed(seed),
        )
        assert set(drawn[0].tolist()) <= pool


def test_negatives_table_names_classes_and_marks_false_negatives():
    labels = torch.tensor([3, 3, 5, 0])
    found = {
        "query": 0,
        "positive": 1,
        "strategies": {"hard": {"indices": [1, 2], "cosines": [0.9, 0.5], "false": [True, False]}},
    }
    classes = ["airplane", "b", "c", "cat", "e", "dog"]
    table = lesson.negatives_table(found, labels, classes)
    assert "(**cat**)" in table and "**0.90 cat**" in table and "0.50 dog" in table
    assert "1 of 2" in table


def test_false_negative_rate_plot():
    fig = lesson.plot_false_negative_rates({"hard": 0.2, "random": 0.1}, 0.1, 16)
    assert fig.axes[0].get_ylabel() == "false-negative rate"
    plt.close(fig)


@pytest.mark.slow
def test_lesson_runs_headless_with_solutions(tmp_path):
    notebook = execute(NOTEBOOK, tmp_path, out_dir=str(tmp_path / "run"), epochs=1, queries=128)
    assert_lesson_passed(notebook)
