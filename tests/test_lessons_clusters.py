"""Lesson 4 (from instances to clusters): every check with right, wrong and unfinished
answers; the notebook executed headless with solutions (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlab.cluster import purity
from interlab.lessons import clusters as lesson
from interlab.lessons.solutions import clusters as solutions
from interlab.snapshots import save_snapshot
from tests.lesson_runs import LESSONS, assert_lesson_passed, execute, unfinished


def test_purity_check_right_wrong_unfinished() -> None:
    assert bool(lesson.check_purity(solutions.purity_by_hand)) is True
    identity = lesson.check_purity(lambda t, c: float((t == c).mean()))
    assert not identity and "names, not classes" in identity.message
    inverse = lesson.check_purity(lambda t, c: purity(c, t))
    assert not inverse and "other direction" in inverse.message
    assert bool(lesson.check_purity(unfinished)) is False
    assert bool(lesson.check_purity(None)) is False


def test_purity_example_tells_the_mistakes_apart() -> None:
    true, clusters = lesson.PURITY_TRUE, lesson.PURITY_CLUSTERS
    values = {purity(true, clusters), purity(clusters, true), float((true == clusters).mean())}
    assert len(values) == 3


def test_label_change_check_right_wrong_unfinished() -> None:
    assert bool(lesson.check_label_change(solutions.label_change_ratio_by_hand)) is True
    count = lesson.check_label_change(lambda a, b: int((a != b).sum()))
    assert not count and "divide" in count.message
    kept = lesson.check_label_change(lambda a, b: float((a == b).mean()))
    assert not kept and "stayed the same" in kept.message
    assert bool(lesson.check_label_change(unfinished)) is False


def test_false_negative_check_right_wrong_unfinished() -> None:
    check = lesson.check_false_negative_share
    assert bool(check(solutions.false_negative_share_by_hand)) is True

    def pseudo_labels(true, pseudo, queries, negatives):
        return float((pseudo[negatives] == pseudo[queries].unsqueeze(1)).float().mean())

    def other_class(true, pseudo, queries, negatives):
        return float((true[negatives] != true[queries].unsqueeze(1)).float().mean())

    wrong = check(pseudo_labels)
    assert not wrong and "pseudo-labels" in wrong.message
    wrong = check(other_class)
    assert not wrong and "true negatives" in wrong.message
    assert bool(check(unfinished)) is False
    assert bool(check(lambda *a: [0.1, 0.2])) is False


def test_label_changes_from_snapshots(tmp_path) -> None:
    features = np.zeros((6, 2), dtype=np.float16)
    for epoch, labels in enumerate([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 0], [1, 1, 2, 2, 0, 1]]):
        arrays = {"features": features, "labels": np.array(labels, dtype=np.int32),
                  "centroids": np.zeros((3, 2), dtype=np.float32)}  # fmt: skip
        save_snapshot(tmp_path, epoch, arrays)
    changes = lesson.label_changes(tmp_path)
    assert changes["epoch"] == [1, 2]
    assert changes["changed"] == pytest.approx([1 / 6, 1.0])
    assert changes["nmi_to_previous"][1] == pytest.approx(1.0)  # renamed, same partition


def test_cluster_grid_and_table_name_classes() -> None:
    images = torch.randint(0, 255, (12, 8, 8, 3), dtype=torch.uint8)
    true, pseudo = lesson.PURITY_TRUE, lesson.PURITY_CLUSTERS
    classes = ["cat", "dog", "ship"]
    table = lesson.cluster_table(pseudo, true, classes)
    assert table[0]["purity"] == 1.0 and table[0]["majority"] in classes
    fig = lesson.plot_cluster_grid(images, true, pseudo, [3, 0], classes, per_cluster=4)
    titles = {ax.get_title() for ax in fig.axes} - {""}
    assert titles <= set(classes) and titles


@pytest.mark.slow
def test_notebook_runs_with_solutions(tmp_path) -> None:
    notebook = execute(
        LESSONS / "04_clusters.ipynb", tmp_path,
        epochs=2, recluster_every=1, out_dir=str(tmp_path / "runs"),
    )  # fmt: skip
    assert_lesson_passed(notebook, min_figures=4)
