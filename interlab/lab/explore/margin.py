"""MarginExplorer: why a less stringent decision boundary tolerates noisy inter-image positives.

For a positive at cosine c among fixed negatives, MarginNCE's softmax gives the positive the
probability p(c) = e^{l+(c)/t} / (e^{l+(c)/t} + sum_j e^{n_j/t}), with l+ the margin-shifted
logit. The loss gradient pulls the positive with weight (1 - p) dl+/dc / t and pushes each
negative with weight p_j / t. A negative margin raises p at every c, so a wrong positive
(low c, a noisy pseudo-label) is pulled less hard: the explorer draws both curves live.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from interlab.lab.explore.display import redraw, show_with_static
from interlab.losses import MARGIN_KINDS, apply_margin

GRID = np.linspace(-0.99, 0.99, 199)


def margin_slope(cosine: np.ndarray, margin: float, kind: str) -> np.ndarray:
    """d l+ / d cos(theta): 1 for the cosine margin, sin(theta + m) / sin(theta) for arc."""
    if kind == "cos" or margin == 0:
        return np.ones_like(cosine)
    theta = np.arccos(np.clip(cosine, -1 + 1e-7, 1 - 1e-7))
    slope = np.sin(theta + margin) / np.sin(theta)
    fallback = (theta <= abs(margin)) if margin < 0 else (theta >= math.pi - margin)
    return np.where(fallback, 1.0, slope)


def margin_curves(
    negatives: np.ndarray, margin: float, kind: str, temperature: float, grid: np.ndarray = GRID
) -> dict[str, np.ndarray]:
    """Over positive cosines `grid`: the positive's probability and the gradient weights.

    `negatives` are negative cosines (the logits before / t). Returns `probability`,
    `pull` (gradient weight on the positive) and `push` (total weight on the negatives).
    """
    if kind not in MARGIN_KINDS:
        raise ValueError(f"unknown margin kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    shifted = apply_margin(torch.from_numpy(grid).double(), margin, kind).numpy()
    negatives = np.asarray(negatives, dtype=np.float64).ravel()
    top = max(shifted.max(), negatives.max()) / temperature
    positive_term = np.exp(shifted / temperature - top)
    negative_sum = np.exp(negatives / temperature - top).sum()
    probability = positive_term / (positive_term + negative_sum)
    pull = (1 - probability) * margin_slope(grid, margin, kind) / temperature
    push = (1 - probability) / temperature  # the negatives' probabilities sum to 1 - p
    return {"cosine": grid, "probability": probability, "pull": pull, "push": push}


def draw_margin_figure(
    positives: np.ndarray, negatives: np.ndarray, margin: float, kind: str, temperature: float
) -> Figure:
    """Logit histograms, then p(positive) and the pull on the positive, against margin 0."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    shifted = apply_margin(
        torch.from_numpy(np.asarray(positives, np.float64)), margin, kind
    ).numpy()
    # a negative margin lifts positives above 1: widen the bins so none drop off the plot
    bins = np.linspace(min(-1.0, shifted.min()), max(1.0, shifted.max()), 61)
    axes[0].hist(negatives, bins=bins, density=True, alpha=0.5, label="negatives")
    axes[0].hist(positives, bins=bins, density=True, alpha=0.5, label="positives")
    axes[0].hist(
        shifted,
        bins=bins,
        density=True,
        histtype="step",
        color="k",
        label=f"positives, m={margin:+.2f}",
    )
    axes[0].set(xlabel="cosine / logit before / t", title="what the softmax compares")
    reference = margin_curves(negatives, 0.0, kind, temperature)
    current = margin_curves(negatives, margin, kind, temperature)
    for ax, key, title in (
        (axes[1], "probability", "p(positive)"),
        (axes[2], "pull", "gradient pull on the positive"),
    ):
        ax.plot(current["cosine"], current[key], label=f"{kind} m={margin:+.2f}")
        ax.plot(reference["cosine"], reference[key], "--", color="gray", label="m=0")
        ax.set(xlabel="cosine of the positive", title=f"{title}, t={temperature:g}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class MarginExplorer:
    """Sliders for margin, temperature and kind over a trained model's positive/negative cosines.

    `positives` / `negatives` are cosine samples (e.g. from `interlab.lab.probes.inter_logits`).
    `show()` displays the widgets (live in JupyterLab) and a static figure of the initial
    settings, so a headless execution still shows the picture.
    """

    def __init__(
        self,
        positives: np.ndarray,
        negatives: np.ndarray,
        margin: float = -0.5,
        kind: str = "cos",
        temperature: float = 0.2,
        max_negatives: int = 4096,
    ) -> None:
        import ipywidgets as widgets

        self.positives = np.asarray(positives, dtype=np.float64).ravel()
        negatives = np.asarray(negatives, dtype=np.float64).ravel()
        if self.positives.size == 0 or negatives.size == 0:
            raise ValueError("MarginExplorer needs at least one positive and one negative cosine")
        self.negatives = negatives[:: max(1, negatives.size // max_negatives)]
        full = {"description_width": "initial"}  # labels in full, never "temperat..."
        self.margin = widgets.FloatSlider(
            value=margin, min=-1.0, max=1.0, step=0.05, description="margin m", style=full
        )
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.05, max=1.0, step=0.05, description="temperature t", style=full
        )
        self.kind = widgets.Dropdown(
            options=list(MARGIN_KINDS), value=kind, description="margin kind", style=full
        )
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.margin, self.temperature, self.kind):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.margin, self.temperature, self.kind]), self.summary, self.output]
        )
        self.update()

    def curves(self) -> dict[str, np.ndarray]:
        return margin_curves(
            self.negatives, self.margin.value, self.kind.value, self.temperature.value
        )

    def mean_positive_probability(self) -> float:
        """p(positive) averaged over the model's own positives at the current settings."""
        curves = self.curves()
        return float(np.interp(self.positives, curves["cosine"], curves["probability"]).mean())

    def update(self) -> None:
        self.summary.value = (
            f"mean p(positive) over {self.positives.size} positives: "
            f"<b>{self.mean_positive_probability():.3f}</b>"
        )
        redraw(self.output, self.figure)
        self.drawn = (self.margin.value, self.kind.value, self.temperature.value)

    def figure(self) -> Figure:
        return draw_margin_figure(
            self.positives,
            self.negatives,
            self.margin.value,
            self.kind.value,
            self.temperature.value,
        )

    def show(self) -> None:
        show_with_static(self.widget, [self.figure])
