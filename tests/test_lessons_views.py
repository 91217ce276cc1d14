"""Lesson 1 (Views): every check with a right, a wrong and an unfinished answer; the measured
curve's JSON; the notebook executed headless with the solutions."""

from pathlib import Path

import pytest
import torch

from interlab.augment import AugmentConfig
from interlab.data import load_dataset
from interlab.lessons.solutions import views as solutions
from interlab.lessons.views import (
    PRESETS,
    WEAK_DIFFERENCE,
    ViewsExplorer,
    check_best_crop,
    check_crop_fraction,
    check_weak_views,
    crop_runs,
    load_views_curve,
    two_views,
    view_difference,
    views_config,
)
from tests.lesson_runs import assert_lesson_passed, execute

LESSON = Path(__file__).parents[1] / "notebooks" / "lessons" / "01_views.ipynb"
CURVE = {
    "epochs": 5,
    "date": "2026-01-01",
    "knn_top1_untrained": 0.30,
    "runs": [
        {"name": "crop 0.02", "min_crop_area": 0.02, "colour": True, "knn_top1": 0.33},
        {"name": "crop 0.2", "min_crop_area": 0.2, "colour": True, "knn_top1": 0.40},
        {"name": "crop 0.9", "min_crop_area": 0.9, "colour": True, "knn_top1": 0.31},
        {"name": "crop 0.2, no colour", "min_crop_area": 0.2, "colour": False, "knn_top1": 0.45},
    ],
}


@pytest.fixture(scope="module")
def images():
    return load_dataset("cifar10-mini", "train").images[:64]


def unfinished(boxes, height, width): ...  # what a student's untouched exercise cell holds


def test_views_config_scales_moco_v2s_recipe():
    assert views_config() == AugmentConfig()
    off = views_config(min_area=0.5, jitter_strength=0.0, gray_p=0.0, flip=False)
    assert off.scale == (0.5, 1.0) and off.jitter_p == 0.0 and off.flip_p == 0.0
    assert views_config(jitter_strength=10.0).jitter[3] == 0.5  # hue capped


def test_two_views_are_displayable_and_weak_views_differ_less(images):
    first, second = two_views(images[:4], AugmentConfig(), seed=1)
    assert first.shape == (4, 32, 32, 3) and 0 <= float(first.min()) <= float(first.max()) <= 1
    assert not torch.equal(first, second)
    presets = [views_config(**keys) for keys in PRESETS.values()]  # too weak ... too strong
    weakest, strongest = presets[0], presets[-1]
    assert view_difference(weakest, images) < view_difference(strongest, images)


def test_crop_fraction_check():
    assert bool(check_crop_fraction(solutions.crop_fraction)) is True
    pixels = check_crop_fraction(lambda boxes, h, w: boxes[:, 2] * boxes[:, 3])
    assert not pixels and "area in pixels" in pixels.message
    floor = check_crop_fraction(lambda boxes, h, w: boxes[:, 2] * boxes[:, 3] // (h * w))
    assert not floor and "true division" in floor.message
    corner = check_crop_fraction(lambda boxes, h, w: boxes[:, 0] * boxes[:, 1] / (h * w))
    assert not corner and "columns 2 and 3" in corner.message
    for answer in (unfinished, None, ..., 0.5, lambda boxes, h, w: 1 / 0):
        assert bool(check_crop_fraction(answer)) is False


def test_weak_views_check(images):
    assert view_difference(solutions.weak_config, images) < WEAK_DIFFERENCE
    assert bool(check_weak_views(solutions.weak_config, images)) is True
    moco = check_weak_views(AugmentConfig(), images)
    assert not moco and "colour jitter" in moco.message
    flips = check_weak_views(AugmentConfig(scale=(0.9, 1.0), jitter_p=0.0, gray_p=0.0), images)
    assert not flips and "flip" in flips.message
    identity = AugmentConfig(scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, flip_p=0.0)
    assert "keep some cropping" in check_weak_views(identity, images).message
    for answer in (None, ..., {"scale": (0.9, 1.0)}):
        assert bool(check_weak_views(answer, images)) is False


def test_best_crop_check():
    assert bool(check_best_crop(solutions.best_min_crop_area(CURVE), CURVE)) is True
    assert solutions.best_min_crop_area(CURVE) == 0.2  # the no-colour run is not in the sweep
    weak = check_best_crop(0.9, CURVE)
    assert not weak and "weaker" in weak.message
    strong = check_best_crop(0.02, CURVE)
    assert not strong and "stronger" in strong.message
    assert "pick one of them" in check_best_crop(0.3, CURVE).message
    for answer in (None, ..., "small", [0.2, 0.9]):
        assert bool(check_best_crop(answer, CURVE)) is False


def test_measured_curve_is_stored_with_its_provenance():
    curve = load_views_curve()
    for key in ("device", "torch", "date", "command", "epochs", "knn_top1_untrained"):
        assert key in curve
    assert "lesson_views_curve.py" in curve["command"]
    assert len(crop_runs(curve)) >= 2
    assert all(0 < run["knn_top1"] <= 1 for run in curve["runs"])
    assert bool(check_best_crop(solutions.best_min_crop_area(curve))) is True


def test_views_explorer_labels_and_static_figures(monkeypatch):
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    train = load_dataset("cifar10-mini", "train")
    explorer = ViewsExplorer(train, [0, 1])
    for control in (explorer.min_area, explorer.jitter, explorer.gray, explorer.flip):
        assert control.style.description_width == "initial"
    explorer.flip.value = False
    assert explorer.config().flip_p == 0.0
    explorer.show()
    figures = [obj for obj in shown if type(obj).__name__ == "Figure"]
    assert len(figures) >= len(PRESETS)
    titles = {t.get_text() for ax in figures[-1].axes for t in [ax.title]}
    assert titles & set(train.classes)  # class names, not numbers


@pytest.mark.slow
def test_lesson_runs_headless_with_solutions(tmp_path):
    notebook = execute(LESSON, tmp_path)
    assert_lesson_passed(notebook, min_figures=1 + len(PRESETS) + 1)
