"""Lesson 1, Views: what a positive pair is, the augmentation as a widget, the measured curve.

Two random augmentations of one image are a positive pair; the lesson lets the student move
the recipe's knobs (minimum crop area, colour jitter strength, grayscale probability, flip)
and watch the two views of a few real images change, then reads the project's own measured
curve of kNN accuracy against view strength (`benchmarks/lesson_views_curve.py` writes
`interlab/lessons/measured/views_curve.json`). The augmentation is `interlab.augment`; this
module only draws, measures how different two views are, and checks the exercises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from interlab.augment import Augment, AugmentConfig
from interlab.data import ImageSet
from interlab.lab.explore.display import redraw, show_with_static
from interlab.lessons.checking import Verdict, as_tensor, compare, failed, passed

MEASURED_CURVE = Path(__file__).parent / "measured" / "views_curve.json"
MOCO_JITTER = (0.4, 0.4, 0.4, 0.1)  # MoCo v2's ColorJitter (brightness, contrast, saturation, hue)
WIDE = {"description_width": "initial"}
# Exercise 1.2: two views of the same image must differ by less than this on average (pixel
# values in [0, 1]); MoCo v2's recipe gives about 0.2.
WEAK_DIFFERENCE = 0.06
# The static copies the explorer shows when executed headless: name -> views_config arguments.
PRESETS: dict[str, dict[str, Any]] = {
    "too weak: crop >= 90% of the image, no colour change": {
        "min_area": 0.9,
        "jitter_strength": 0.0,
        "gray_p": 0.0,
        "flip": False,
    },
    "MoCo v2: crop >= 20%, colour jitter, 20% grayscale, flips": {
        "min_area": 0.2,
        "jitter_strength": 1.0,
        "gray_p": 0.2,
        "flip": True,
    },
    "too strong: crop >= 2%, double colour jitter, 50% grayscale": {
        "min_area": 0.02,
        "jitter_strength": 2.0,
        "gray_p": 0.5,
        "flip": True,
    },
}


def views_config(
    min_area: float = 0.2, jitter_strength: float = 1.0, gray_p: float = 0.2, flip: bool = True
) -> AugmentConfig:
    """The MoCo v2 recipe with its four knobs exposed.

    `jitter_strength` multiplies MoCo v2's jitter (0 = no colour jitter; hue capped at 0.5).
    """
    strengths = tuple(
        min(v * jitter_strength, 0.5) if i == 3 else v * jitter_strength
        for i, v in enumerate(MOCO_JITTER)
    )
    return AugmentConfig(
        scale=(min_area, 1.0),
        jitter=strengths,
        jitter_p=0.8 if jitter_strength > 0 else 0.0,
        gray_p=gray_p,
        flip_p=0.5 if flip else 0.0,
    )


def example_indices(images: ImageSet, count: int = 6, seed: int = 0) -> list[int]:
    """One image of each of the first `count` classes (a random one, fixed by `seed`)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(min(count, len(images.classes))):
        members = torch.nonzero(images.labels == c).flatten()
        picks.append(int(members[torch.randint(len(members), (1,), generator=g)]))
    return picks


def two_views(
    images: torch.Tensor, config: AugmentConfig, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of uint8 (N, H, W, 3) images, as displayable float
    (N, S, S, 3) arrays in [0, 1] (the normalisation undone)."""
    g = torch.Generator().manual_seed(seed)
    augment = Augment(config)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    views = []
    for _ in range(2):
        x = augment(images.cpu(), generator=g) * std + mean
        views.append(x.clamp(0, 1).permute(0, 2, 3, 1).contiguous())
    return views[0], views[1]


def view_difference(config: AugmentConfig, images: torch.Tensor, seed: int = 0) -> float:
    """Mean absolute pixel difference (values in [0, 1]) between two views of each image."""
    first, second = two_views(images, config, seed)
    return float((first - second).abs().mean())


def draw_views(
    images: ImageSet, indices: Sequence[int], config: AugmentConfig, seed: int = 0, title: str = ""
) -> Figure:
    """Rows: the image, view 1, view 2; one column per image, titled with its class name."""
    chosen = images.images[list(indices)]
    first, second = two_views(chosen, config, seed)
    n = len(indices)
    fig, axes = plt.subplots(3, n, figsize=(1.7 * n, 5.6), squeeze=False)
    for j, index in enumerate(indices):
        axes[0, j].set_title(images.classes[int(images.labels[index])], fontsize=10)
        for i, picture in enumerate((chosen[j].numpy(), first[j].numpy(), second[j].numpy())):
            axes[i, j].imshow(picture, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    for i, name in enumerate(("image", "view 1", "view 2")):
        axes[i, 0].set_ylabel(name)
    difference = view_difference(config, chosen, seed)
    fig.suptitle(f"{title}\nmean |view 1 - view 2| = {difference:.3f}".strip(), fontsize=10)
    fig.tight_layout()
    return fig


class ViewsExplorer:
    """Sliders for the recipe's knobs; redraws two views of each example image live.

    `show()` displays the widget and static copies of the `PRESETS` (too weak, MoCo v2's,
    too strong), so an executed notebook shows the pictures without a live kernel.
    """

    def __init__(self, images: ImageSet, indices: Sequence[int]) -> None:
        import ipywidgets as widgets

        self.images = images
        self.indices = list(indices)
        wide = widgets.Layout(width="480px")

        def slider(value: float, low: float, high: float, step: float, label: str):
            return widgets.FloatSlider(
                value=value, min=low, max=high, step=step, description=label,
                style=WIDE, layout=wide,
            )  # fmt: skip

        self.min_area = slider(0.2, 0.02, 1.0, 0.02, "minimum crop area (fraction of the image)")
        self.jitter = slider(1.0, 0.0, 2.5, 0.1, "colour jitter strength (x MoCo v2's)")
        self.gray = slider(0.2, 0.0, 1.0, 0.05, "grayscale probability")
        self.flip = widgets.Checkbox(value=True, description="random horizontal flip", style=WIDE)
        self.seed = widgets.IntSlider(
            value=0, min=0, max=99, description="random draw", style=WIDE, layout=wide
        )
        self.output = widgets.Output()
        controls = (self.min_area, self.jitter, self.gray, self.flip, self.seed)
        for control in controls:
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox([*controls, self.output])
        self.update()

    def config(self) -> AugmentConfig:
        return views_config(
            self.min_area.value, self.jitter.value, self.gray.value, bool(self.flip.value)
        )

    def update(self) -> None:
        redraw(self.output, lambda: self.figure(self.config(), "your settings"))

    def figure(self, config: AugmentConfig, title: str = "") -> Figure:
        return draw_views(self.images, self.indices, config, self.seed.value, title)

    def show(self) -> None:
        figures = [
            lambda name=name, keys=keys: self.figure(views_config(**keys), name)
            for name, keys in PRESETS.items()
        ]
        show_with_static(self.widget, figures)


# --- the measured curve ---------------------------------------------------------------------


def load_views_curve(path: str | Path = MEASURED_CURVE) -> dict[str, Any]:
    """The stored measurement (`benchmarks/lesson_views_curve.py`)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def crop_runs(curve: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the crop sweep (MoCo v2's colour recipe), by minimum crop area."""
    return sorted((r for r in curve["runs"] if r["colour"]), key=lambda r: r["min_crop_area"])


def draw_views_curve(curve: dict[str, Any]) -> Figure:
    """kNN top-1 against the minimum crop area; the run without colour changes; untrained."""
    runs = crop_runs(curve)
    fig, ax = plt.subplots(figsize=(7, 4))
    areas = [r["min_crop_area"] for r in runs]
    ax.plot(areas, [r["knn_top1"] for r in runs], "o-", label="crops + colour jitter + grayscale")
    for run in curve["runs"]:
        if not run["colour"]:
            ax.plot(
                run["min_crop_area"],
                run["knn_top1"],
                "s",
                color="tab:orange",
                markersize=9,
                label=f"{run['name']} (crops and flips only)",
            )
    ax.axhline(curve["knn_top1_untrained"], color="gray", ls="--", label="untrained network")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(areas, [f"{a:g}" for a in areas])
    ax.set(
        xlabel="minimum crop area (smaller = stronger views)",
        ylabel="kNN top-1 (test)",
        title=f"MoCo, {curve['epochs']} epochs on cifar10-mini, measured {curve['date']}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- checks ---------------------------------------------------------------------------------


def check_crop_fraction(my_fraction: Any, seed: int = 0) -> Verdict:
    """Exercise 1.1: `my_fraction(boxes, height, width)` -> (N,) fraction of the image's area
    each crop box (top, left, height, width) keeps; checked on boxes `Augment` draws."""
    exercise = "exercise 1.1"
    if my_fraction is None or my_fraction is Ellipsis:
        return failed(exercise, "no answer yet: write the function and run the cell again")
    if not callable(my_fraction):
        return failed(exercise, f"pass your function itself; got a {type(my_fraction).__name__}")
    config = AugmentConfig(scale=(0.08, 1.0), size=32)
    height, width = 32, 48  # not square: height and width must not be mixed up
    g = torch.Generator().manual_seed(seed)
    boxes = Augment(config).sample_params(64, height, width, generator=g).boxes
    try:
        got = my_fraction(boxes.clone(), height, width)
    except Exception as error:  # the student's code: report, never crash the lesson
        return failed(exercise, f"your function raised {type(error).__name__}: {error}")
    if got is None or got is Ellipsis:
        return failed(exercise, "your function returned nothing yet (replace the `...`)")
    area = (boxes[:, 2] * boxes[:, 3]).double()
    expected = area / (height * width)
    hints: tuple[tuple[Callable[[torch.Tensor], bool], str], ...] = (
        (
            lambda x: torch.allclose(x, area),
            "that is the area in pixels: divide by the image's area",
        ),
        (
            lambda x: bool((x == x.round()).all()),
            "the fractions came out as whole numbers: use true division (/), not //",
        ),
        (
            lambda x: torch.allclose(x, (boxes[:, 0] * boxes[:, 1]).double() / (height * width)),
            "columns 0 and 1 are the box's top and left corner; its size is in columns 2 and 3",
        ),
        (
            lambda x: torch.allclose(x, (boxes[:, 2] / height).double()),
            "a crop is two-dimensional: multiply its height and width",
        ),
    )
    verdict = compare(exercise, got, expected, "the crop fractions", hints=hints)
    if not verdict:
        return verdict
    return passed(
        exercise,
        f"the 64 crops keep {expected.min():.2f} to {expected.max():.2f} of the image; the recipe"
        f" asked for scale {config.scale}",
    )


def check_weak_views(config: Any, images: torch.Tensor | None = None, seed: int = 0) -> Verdict:
    """Exercise 1.2: an AugmentConfig whose two views of an image differ by less than
    WEAK_DIFFERENCE on average, yet still crop (scale below 1): a 'too weak' recipe."""
    exercise = "exercise 1.2"
    if config is None or config is Ellipsis:
        return failed(exercise, "no answer yet: set `weak` to an AugmentConfig(...)")
    if not isinstance(config, AugmentConfig):
        return failed(exercise, f"the answer is an AugmentConfig; got a {type(config).__name__}")
    if images is None:
        from interlab.data import load_dataset

        train = load_dataset("cifar10-mini", "train")
        images = train.images[:64]
    if config.scale[0] >= 1.0:
        return failed(
            exercise,
            "with scale (1, 1) every crop is the whole image; keep some cropping (e.g. >= 0.9)",
        )
    difference = view_difference(config, images, seed)
    if difference < WEAK_DIFFERENCE:
        return passed(
            exercise,
            f"two views differ by {difference:.3f} on average (MoCo v2's recipe:"
            f" {view_difference(views_config(), images, seed):.3f}): almost the same picture twice",
        )
    reasons = []
    if config.jitter_p > 0 and any(v > 0 for v in config.jitter):
        reasons.append("colour jitter changes every pixel (set jitter_p=0.0)")
    if config.gray_p > 0:
        reasons.append("grayscale changes every coloured pixel (gray_p=0.0)")
    if config.flip_p > 0:
        reasons.append("a flip moves every pixel (flip_p=0.0)")
    if config.blur_p > 0:
        reasons.append("blur changes every edge (blur_p=0.0)")
    if config.scale[0] < 0.8:
        reasons.append(f"crops down to {config.scale[0]:g} of the image zoom in a lot (raise it)")
    why = "; ".join(reasons) or "the views still differ too much"
    return failed(
        exercise,
        f"two views differ by {difference:.3f} on average, not under {WEAK_DIFFERENCE}: {why}",
    )


def check_best_crop(answer: Any, curve: dict[str, Any] | None = None) -> Verdict:
    """Exercise 1.3: the minimum crop area with the best kNN top-1 in the measured crop sweep."""
    exercise = "exercise 1.3"
    curve = curve or load_views_curve()
    runs = crop_runs(curve)
    if answer is None or answer is Ellipsis:
        return failed(exercise, "no answer yet: set `answer` to a minimum crop area from the plot")
    got = as_tensor(answer)
    if got is None or got.numel() != 1:
        return failed(exercise, f"the answer is one number (a crop area); got {answer!r}")
    value = float(got)
    best = max(runs, key=lambda r: r["knn_top1"])
    if abs(value - best["min_crop_area"]) < 1e-6:
        return passed(
            exercise,
            f"minimum crop area {value:g} gave kNN {best['knn_top1']:.3f}, against"
            f" {curve['knn_top1_untrained']:.3f} untrained; before calling it better, compare"
            " its lead with the noise of one seed",
        )
    near = [r for r in runs if abs(r["min_crop_area"] - value) < 1e-6]
    if not near:
        areas = ", ".join(f"{r['min_crop_area']:g}" for r in runs)
        return failed(exercise, f"the sweep measured minimum crop areas {areas}; pick one of them")
    side = "weaker" if value > best["min_crop_area"] else "stronger"
    return failed(
        exercise,
        f"{value:g} gave kNN {near[0]['knn_top1']:.3f}; a {side} view than the best one scores"
        " higher: read the curve again",
    )
