"""Lesson 3 (your first contrastive model): every check with right, wrong and unfinished
answers; the notebook executed headless with solutions (slow)."""

from __future__ import annotations

import pytest
import torch

from interlab.lessons import first_model as lesson
from interlab.lessons.solutions import first_model as solutions
from interlab.methods.moco import fifo_write
from tests.lesson_runs import LESSONS, assert_lesson_passed, execute, unfinished


def test_knn_check_right_wrong_unfinished() -> None:
    assert bool(lesson.check_knn_top1(solutions.knn_predict_by_hand)) is True
    problem = lesson.knn_problem()
    majority = lesson.check_knn_top1(lambda *_: lesson._majority_vote(problem))
    assert not majority and "weight" in majority.message
    raw = lesson.check_knn_top1(lambda *_: lesson._unnormalised_weighted(problem))
    assert not raw and "normalise" in raw.message
    for answer in (unfinished, None, ...):
        assert bool(lesson.check_knn_top1(answer)) is False
    crashed = lesson.check_knn_top1(lambda *_: 1 / 0)
    assert not crashed and "ZeroDivisionError" in crashed.message


def test_knn_problem_tells_the_mistakes_apart() -> None:
    problem = lesson.knn_problem()
    expected = lesson.expected_knn(problem)
    assert not torch.equal(expected, lesson._majority_vote(problem))
    assert not torch.equal(expected, lesson._unnormalised_weighted(problem))


def test_momentum_check_right_wrong_unfinished() -> None:
    assert bool(lesson.check_momentum_update(solutions.momentum_update_by_hand)) is True
    swapped = lesson.check_momentum_update(lambda k, q, m: m * q + (1 - m) * k)
    assert not swapped and "swapped" in swapped.message
    copied = lesson.check_momentum_update(lambda k, q, m: q)
    assert not copied and "copy" in copied.message
    assert bool(lesson.check_momentum_update(unfinished)) is False


def test_queue_check_right_wrong_unfinished() -> None:
    assert bool(lesson.check_queue_steps(solutions.QUEUE_STEPS)) is True
    assert bool(lesson.check_queue_steps(1024, queue_size=1024, batch_size=256)) is False
    upside = lesson.check_queue_steps(256 / 4096)
    assert not upside and "upside down" in upside.message
    assert not lesson.check_queue_steps(4096 * 256)
    assert bool(lesson.check_queue_steps(None)) is False
    assert bool(lesson.check_queue_steps("sixteen")) is False


def test_queue_lifetime_follows_fifo_write() -> None:
    assert lesson.queue_lifetime(4096, 256) == 16
    assert lesson.queue_lifetime(1024, 256) == 4
    queue, pointer = torch.zeros(8, 1), torch.zeros((), dtype=torch.long)
    fifo_write([queue], [torch.ones(4, 1)], pointer)
    assert int(pointer) == 4


def test_measured_sweep_and_explorer_figure() -> None:
    measured = lesson.load_measured("queue_momentum")
    assert {"device", "torch", "date", "command", "runs"} <= set(measured)
    assert all(0 < run["knn_top1"] < 1 for run in measured["runs"])
    explorer = lesson.QueueMomentumExplorer(measured)
    assert "kNN top-1" in explorer.describe() or "not in the stored sweep" in explorer.describe()
    fig = explorer.figure()
    assert len(fig.axes) >= 2
    assert explorer.queue.style.description_width == "initial"


def test_figures_name_classes() -> None:
    features = torch.nn.functional.normalize(torch.randn(30, 4), dim=1)
    labels = torch.arange(30) % 3
    images = torch.randint(0, 255, (30, 8, 8, 3), dtype=torch.uint8)
    classes = ["cat", "dog", "ship"]
    found = {"before": lesson.nearest_neighbours(features[:2], features, 3)}
    fig = lesson.plot_neighbours(range(2), images[:2], images, found, labels[:2], labels, classes)
    titles = {ax.get_title() for ax in fig.axes}
    assert "query: cat" in titles and titles <= {"query: cat", "query: dog", "cat", "dog", "ship"}
    points = {"a": features[:, :2].numpy()}
    fig = lesson.plot_umaps(points, labels, classes)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == classes


@pytest.mark.slow
def test_notebook_runs_with_solutions(tmp_path) -> None:
    notebook = execute(
        LESSONS / "03_first_model.ipynb", tmp_path,
        epochs=2, out_dir=str(tmp_path / "run"), umap_images=300,
    )  # fmt: skip
    assert_lesson_passed(notebook, min_figures=4)
