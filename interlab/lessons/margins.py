"""Lesson 6, "How strict a boundary?": MarginNCE's margin on the positive logit, and checks.

The lesson's cosines are synthetic with a fixed seed (`synthetic_cosines`): clean inter-image
positives (the pseudo-label is right, the cosine is high), noisy ones (the pseudo-label is
wrong, the cosine is as low as a negative's) and negatives, so the student sees, in seconds,
how a loose (negative) margin pulls the noisy positives less hard. Every check computes the
expected value with `interlab.losses` (`apply_margin`, `positive_probability`).
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from interlab.lab.explore.margin import margin_curves
from interlab.lessons.checking import Verdict, call_answer, compare, passed
from interlab.losses import apply_margin, positive_probability


def synthetic_cosines(
    positives: int = 400, noisy_share: float = 0.3, negatives: int = 4096, seed: int = 0
) -> dict[str, np.ndarray]:
    """Cosines as a trained inter-image branch sees them (synthetic, fixed seed).

    Clean positives ~ N(0.6, 0.12), noisy positives (wrong pseudo-label) ~ N(0.15, 0.12),
    negatives ~ N(0.1, 0.15), all clipped to [-0.99, 0.99]. Returns `positive`, `noisy`
    (bool per positive) and `negative`.
    """
    rng = np.random.default_rng(seed)
    noisy = rng.random(positives) < noisy_share
    positive = np.where(noisy, rng.normal(0.15, 0.12, positives), rng.normal(0.6, 0.12, positives))
    negative = rng.normal(0.1, 0.15, negatives)
    return {
        "positive": np.clip(positive, -0.99, 0.99),
        "noisy": noisy,
        "negative": np.clip(negative, -0.99, 0.99),
    }


def pull_by_group(
    cosines: dict[str, np.ndarray], margins: list[float], kind: str, temperature: float
) -> dict[float, dict[str, float]]:
    """Per margin: the mean gradient pull on clean and on noisy positives and its noisy share.

    The pull on a positive at cosine c is (1 - p(c)) dl+/dc / t (`margin_curves`); its share
    going to noisy positives is how much of the inter-image gradient follows wrong labels.
    """
    out = {}
    for margin in margins:
        curves = margin_curves(cosines["negative"], margin, kind, temperature)
        pull = np.interp(cosines["positive"], curves["cosine"], curves["pull"])
        noisy = cosines["noisy"]
        out[margin] = {
            "clean": float(pull[~noisy].mean()),
            "noisy": float(pull[noisy].mean()),
            "noisy_share": float(pull[noisy].sum() / pull.sum()),
        }
    return out


def plot_pull_by_group(pulls: dict[float, dict[str, float]], kind: str, temperature: float):
    """Mean pull on clean and noisy positives against the margin."""
    margins = sorted(pulls)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for group, colour in (("clean", "#4c72b0"), ("noisy", "#dd8452")):
        ax.plot(margins, [pulls[m][group] for m in margins], "o-", color=colour, label=group)
    ax.set(
        xlabel="margin m",
        ylabel="mean gradient pull",
        title=f"{kind} margin, t={temperature:g}: pull on clean vs noisy positives",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probability_and_gradient(
    positive: float, negatives: torch.Tensor, temperature: float, margin: float, kind: str
) -> tuple[float, float]:
    """p(positive) and d loss / d cos(theta+) at one positive cosine, by autograd.

    The same numbers `margin_curves` draws in closed form: -d loss/d c = (1 - p) dl+/dc / t.
    """
    cosine = torch.tensor([positive], dtype=torch.float64, requires_grad=True)
    p = positive_probability(cosine, negatives.double().unsqueeze(0), temperature, margin, kind)
    (-torch.log(p)).sum().backward()
    return float(p.detach()), float(cosine.grad)


# ---- exercises --------------------------------------------------------------------------

COSINES = torch.tensor([-0.5, -0.1, 0.2, 0.45, 0.7, 0.9], dtype=torch.float64)


def near(value: torch.Tensor, atol: float = 1e-4):
    """A hint test: the answer equals `value` (a typical mistake's result)."""
    return lambda got: got.shape == value.shape and torch.allclose(got, value, atol=atol)


def check_cosine_margin(function: Any) -> Verdict:
    """Exercise 6.1: `function(cosine, margin)` -> the positive logit under a cosine margin."""
    exercise = "6.1 cosine margin"
    for margin in (0.3, -0.4):
        answer, problem = call_answer(exercise, function, COSINES.clone(), margin)
        if problem is not None:
            return problem
        expected = apply_margin(COSINES, margin, "cos")
        verdict = compare(
            exercise,
            answer,
            expected,
            f"the logits at m={margin:+g}",
            hints=(
                (near(COSINES + margin), "wrong sign: subtract m"),
                (near(COSINES), "the margin is missing"),
                (
                    near(COSINES * (1 - margin)),
                    "the margin shifts the cosine, it does not scale it",
                ),
            ),
        )
        if not verdict:
            return verdict
    return passed(exercise, "cos(theta) - m, as `apply_margin(..., 'cos')`")


def check_arc_margin(function: Any) -> Verdict:
    """Exercise 6.2: `function(cosine, margin)` -> cos(theta + m), theta = arccos(cosine).

    Tested where theta + m stays in [0, pi] (no fallback): |m| <= 0.3 and theta in [0.45, 2.1].
    """
    exercise = "6.2 angular margin"
    for margin in (0.3, -0.3):
        answer, problem = call_answer(exercise, function, COSINES.clone(), margin)
        if problem is not None:
            return problem
        expected = apply_margin(COSINES, margin, "arc").double()
        theta = torch.acos(COSINES)
        verdict = compare(
            exercise,
            answer,
            expected,
            f"the logits at m={margin:+g}",
            hints=(
                (
                    near(torch.cos(theta - margin)),
                    "wrong sign: the angle grows by m, cos(theta + m)",
                ),
                (
                    near(torch.cos(COSINES + margin)),
                    "cos(cosine + m) adds m to the cosine: take theta = arccos(cosine) first",
                ),
                (
                    near(COSINES - margin),
                    "that is the cosine margin: the angular one adds m to the angle",
                ),
                (
                    near(torch.cos(theta + math.radians(margin))),
                    "m is in radians, not degrees",
                ),
            ),
        )
        if not verdict:
            return verdict
    return passed(exercise, "cos(arccos(c) + m), as `apply_margin(..., 'arc')`")


PROBABILITY_CASE = {
    "positive": torch.tensor([0.8, 0.3, 0.1], dtype=torch.float64),
    "negatives": torch.tensor(
        [[0.2, 0.5, -0.1, 0.3], [0.4, 0.1, 0.0, 0.2], [0.6, -0.3, 0.2, 0.1]], dtype=torch.float64
    ),
}


def check_positive_probability(function: Any, temperature: float = 0.2) -> Verdict:
    """Exercise 6.3: `function(positive, negatives, temperature, margin)` -> p(positive) (B,).

    Cosine margin; compared with `interlab.losses.positive_probability`.
    """
    exercise = "6.3 positive probability"
    positive, negatives = PROBABILITY_CASE["positive"], PROBABILITY_CASE["negatives"]

    def softmax_first(pos: torch.Tensor, neg: torch.Tensor, t: float) -> torch.Tensor:
        return torch.cat([pos.unsqueeze(1), neg], dim=1).div(t).softmax(dim=1)[:, 0]

    for margin in (-0.3, 0.2):
        answer, problem = call_answer(
            exercise, function, positive.clone(), negatives.clone(), temperature, margin
        )
        if problem is not None:
            return problem
        expected = positive_probability(positive, negatives, temperature, margin, "cos").double()
        shifted = positive - margin

        verdict = compare(
            exercise,
            answer,
            expected,
            f"p(positive) at m={margin:+g}",
            hints=(
                (near(softmax_first(shifted, negatives, 1.0)), "the temperature is missing"),
                (
                    near(softmax_first(positive, negatives, temperature)),
                    "the margin is missing (shifting the negatives too cancels it)",
                ),
                (
                    near(softmax_first(positive + margin, negatives, temperature)),
                    "wrong sign of the margin: the positive logit is cos - m",
                ),
                (
                    near(softmax_first(shifted, negatives - margin, temperature)),
                    "the margin moves the positive logit only, not the negatives",
                ),
                (
                    near(shifted.div(temperature).exp() / negatives.div(temperature).exp().sum(1)),
                    "the denominator sums over the positive too",
                ),
            ),
        )
        if not verdict:
            return verdict
    return passed(exercise, "the softmax of the margin-shifted positive among its negatives")
