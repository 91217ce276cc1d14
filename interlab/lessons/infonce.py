"""Lesson 2, InfoNCE by hand: a tiny batch, a temperature explorer and the exercises' checks.

The lesson computes the logits matrix, the softmax and the loss of a 4 x 6 batch (4 queries,
column 0 the positive, columns 1-5 the negatives) step by step and checks the result against
`interlab.losses.info_nce`. What is heavier or reused lives here: the seeded batch, the
per-query softmax weights, the temperature widget (bars live, static copies headless) and
the `check_...` functions, which compute the expected answers with the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from interlab.lab.explore.display import redraw, show_with_static
from interlab.lessons.checking import Verdict, as_tensor, call_answer, compare, failed, passed
from interlab.losses import contrastive_logits, info_nce

# Temperatures the exercises are checked at (one low, one high: a missing division shows).
CHECK_TEMPERATURES = (0.2, 0.5)
STATIC_TEMPERATURES = (0.05, 0.2, 1.0)
WIDE = {"description_width": "initial"}


@dataclass(frozen=True)
class TinyBatch:
    """L2-normalised embeddings: B queries, their positives and K negatives per query."""

    query: torch.Tensor  # (B, D)
    positive: torch.Tensor  # (B, D)
    negatives: torch.Tensor  # (B, K, D)

    @property
    def logits(self) -> torch.Tensor:
        """Cosine logits (B, 1 + K), positive in column 0 (before dividing by t)."""
        return contrastive_logits(self.query, self.positive, self.negatives)

    def loss(self, temperature: float) -> torch.Tensor:
        """The package's InfoNCE of this batch (mean over the queries)."""
        return info_nce(self.query, self.positive, self.negatives, temperature)


def tiny_batch(
    batch: int = 4, negatives: int = 5, dim: int = 16, seed: int = 0, noise: float = 0.7
) -> TinyBatch:
    """Made-up unit vectors with a fixed seed: each positive is its query plus noise, and
    each query gets one 'hard' negative near it (a look-alike) and random ones."""
    if batch < 1 or negatives < 2 or dim < 2:
        raise ValueError(
            f"need batch >= 1, negatives >= 2, dim >= 2; got {batch}, {negatives}, {dim}"
        )
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    scale = dim**-0.5  # a random vector of norm about 1
    jitter = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    positive = F.normalize(query + noise * scale * jitter, dim=1)
    others = torch.randn(batch, negatives, dim, generator=g, dtype=torch.float64)
    others[:, 0] = query + 1.1 * scale * others[:, 0]  # the look-alike
    return TinyBatch(query, positive, F.normalize(others, dim=2))


def softmax_weights(cosines: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over each row of (B, 1 + K) cosine logits divided by t."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    return torch.softmax(torch.as_tensor(cosines, dtype=torch.float64) / temperature, dim=-1)


def negative_gradients(cosines: torch.Tensor, temperature: float) -> torch.Tensor:
    """d(loss of each query) / d(cosine of each negative), (B, K), by autograd.

    The per-query loss is the cross-entropy of softmax(cosines / t) against column 0; the
    gradient on a negative's cosine is its softmax probability divided by t.
    """
    logits = torch.as_tensor(cosines, dtype=torch.float64).detach().clone().requires_grad_(True)
    targets = torch.zeros(len(logits), dtype=torch.long)
    loss = F.cross_entropy(logits / temperature, targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    return grad[:, 1:]


def hardest_share(cosine_row: Sequence[float] | torch.Tensor, temperature: float) -> float:
    """Of all the weight the negatives of one query take, the share of the hardest one."""
    negatives = torch.as_tensor(cosine_row, dtype=torch.float64)[1:]
    weights = torch.softmax(negatives / temperature, dim=0)
    return float(weights.max())


def half_weight_temperature(cosine_row: Sequence[float] | torch.Tensor) -> float:
    """The highest temperature (on a 0.001 grid) at which the hardest negative takes more than
    half the negatives' weight: below it one negative gets most of the push."""
    grid = torch.arange(1, 5000, dtype=torch.float64) / 1000  # 0.001 ... 4.999
    negatives = torch.as_tensor(cosine_row, dtype=torch.float64)[1:]
    shares = torch.softmax(negatives[None, :] / grid[:, None], dim=1).max(dim=1).values
    above = grid[shares > 0.5]
    if len(above) == 0:
        raise ValueError("no temperature in (0, 5) gives the hardest negative half the weight")
    return float(above.max())


# --- the temperature explorer ---------------------------------------------------------------


def draw_temperature_figure(cosines: torch.Tensor, query: int, temperature: float) -> Figure:
    """Bars of one query: cosines, softmax probabilities, and the gradient on each logit."""
    row = torch.as_tensor(cosines, dtype=torch.float64)[query]
    probs = softmax_weights(row[None], temperature)[0].numpy()
    grads = negative_gradients(row[None], temperature)[0].numpy()
    positive_pull = (1 - probs[0]) / temperature
    names = ["pos"] + [f"neg {j}" for j in range(1, len(row))]
    colours = ["tab:green"] + ["tab:red"] * (len(row) - 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].bar(names, row.numpy(), color=colours)
    axes[0].set(title=f"query {query}: cosine logits", ylim=(-1, 1))
    axes[1].bar(names, probs, color=colours)
    axes[1].set(title=f"softmax(cosine / t), t = {temperature:g}", ylim=(0, 1))
    axes[2].bar(names, np.concatenate([[-positive_pull], grads]), color=colours)
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set(title="gradient of the loss on each cosine (push = p / t)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


class TemperatureExplorer:
    """A temperature slider and a query picker over a batch's (B, 1 + K) cosine logits.

    Live bars in JupyterLab; `show()` adds static copies at `static_temperatures` so an
    executed notebook shows how the distribution sharpens.
    """

    def __init__(
        self,
        cosines: torch.Tensor,
        temperature: float = 0.2,
        static_temperatures: Sequence[float] = STATIC_TEMPERATURES,
    ) -> None:
        import ipywidgets as widgets

        self.cosines = torch.as_tensor(cosines, dtype=torch.float64)
        self.static_temperatures = tuple(static_temperatures)
        self.temperature = widgets.FloatLogSlider(
            value=temperature,
            base=10,
            min=-2,
            max=0.5,
            step=0.05,
            description="temperature t",
            style=WIDE,
            layout=widgets.Layout(width="420px"),
        )
        self.query = widgets.Dropdown(
            options=list(range(len(self.cosines))), value=0, description="query", style=WIDE
        )
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.temperature, self.query):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.temperature, self.query]), self.summary, self.output]
        )
        self.update()

    def describe(self, temperature: float) -> str:
        row = self.cosines[self.query.value]
        probs = softmax_weights(row[None], temperature)[0]
        return (
            f"t = {temperature:.3g}: p(positive) = {probs[0]:.3f}, hardest negative takes"
            f" {hardest_share(row, temperature):.0%} of the negatives' weight"
        )

    def update(self) -> None:
        self.summary.value = self.describe(self.temperature.value)
        redraw(self.output, lambda: self.figure(self.temperature.value))

    def figure(self, temperature: float) -> Figure:
        return draw_temperature_figure(self.cosines, self.query.value, temperature)

    def show(self) -> None:
        figures = [lambda t=t: self.figure(t) for t in self.static_temperatures]
        show_with_static(self.widget, figures)


# --- checks ---------------------------------------------------------------------------------


def _not_callable(exercise: str, answer: Any) -> Verdict | None:
    if answer is None or answer is Ellipsis:
        return failed(exercise, "no answer yet: write the function and run the cell again")
    if not callable(answer):
        return failed(exercise, f"pass your function itself; got a {type(answer).__name__}")
    return None


def _call(exercise: str, function: Callable, *args: Any) -> tuple[Any, Verdict | None]:
    """`call_answer` on copies of the tensors: the student's function may change its inputs."""
    copies = (a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    return call_answer(exercise, function, *copies)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    b = torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a.double(), b, atol=1e-4, rtol=0))


def _matches(value: torch.Tensor) -> Callable[[torch.Tensor], bool]:
    """A hint test: the answer equals `value` (a typical mistake's result)."""
    return lambda answer: _close(answer, value.detach())


def loss_hints(batch: TinyBatch, t: float) -> tuple[tuple[Callable, str], ...]:
    """The typical mistakes of exercise 2.1, as (test, reason) pairs for `compare`."""
    cosines = batch.logits
    per_query = F.cross_entropy(
        cosines / t, torch.zeros(len(cosines), dtype=torch.long), reduction="none"
    )
    return (
        (_matches(batch.loss(1.0)), "you forgot to divide the logits by the temperature"),
        (_matches(batch.loss(t * t)), "you divided by the temperature twice"),
        (_matches(per_query.sum()), "you summed over the queries; InfoNCE takes the mean"),
        (
            _matches(-batch.loss(t)),
            "the sign is flipped: the loss is MINUS the log-probability of the positive",
        ),
        (
            _matches(-torch.log_softmax(cosines / t, dim=0)[:, 0].mean()),
            "the softmax went over the wrong axis: normalise each row (dim=1), not each column",
        ),
    )


def check_info_nce_loss(my_loss: Any, batch: TinyBatch | None = None) -> Verdict:
    """Exercise 2.1: `my_loss(logits, temperature)` -> the mean InfoNCE of (B, 1 + K) cosine
    logits with positives in column 0; checked against `interlab.losses.info_nce`."""
    exercise = "exercise 2.1"
    if (verdict := _not_callable(exercise, my_loss)) is not None:
        return verdict
    batch = batch or tiny_batch()
    cosines = batch.logits
    for t in CHECK_TEMPERATURES:
        got, verdict = _call(exercise, my_loss, cosines, t)
        if verdict is not None:
            return verdict
        answer = as_tensor(got)
        if answer is not None and tuple(answer.shape) == (len(cosines),):
            return failed(exercise, "that is one loss per query; return their mean (one number)")
        verdict = compare(
            exercise, got, batch.loss(t), f"the loss at t={t}", hints=loss_hints(batch, t)
        )
        if not verdict:
            return verdict
    return passed(
        exercise, f"your loss equals interlab.losses.info_nce at t = {CHECK_TEMPERATURES}"
    )


def weight_hints(cosines: torch.Tensor, t: float) -> tuple[tuple[Callable, str], ...]:
    """The typical mistakes of exercise 2.2, as (test, reason) pairs for `compare`."""
    expected = negative_gradients(cosines, t)
    return (
        (
            _matches(softmax_weights(cosines, t)[:, 1:]),
            "those are the probabilities; the gradient on a cosine is probability / t",
        ),
        (
            _matches(expected / len(cosines)),
            "you divided by the batch size: give each query's own loss gradient",
        ),
        (
            _matches(torch.softmax(cosines[:, 1:] / t, dim=1) / t),
            "the softmax must include the positive (column 0); then keep the negatives' columns",
        ),
        (_matches(-expected), "the sign is flipped: raising a negative's cosine raises the loss"),
        (
            _matches(torch.softmax(cosines / t, dim=0)[:, 1:] / t),
            "the softmax went over the wrong axis: normalise each row (dim=1)",
        ),
    )


def check_negative_weights(my_weights: Any, batch: TinyBatch | None = None) -> Verdict:
    """Exercise 2.2: `my_weights(logits, temperature)` -> (B, K) gradient of each query's loss
    on each negative's cosine (softmax probability / t), checked against autograd."""
    exercise = "exercise 2.2"
    if (verdict := _not_callable(exercise, my_weights)) is not None:
        return verdict
    cosines = (batch or tiny_batch()).logits
    for t in CHECK_TEMPERATURES:
        got, verdict = _call(exercise, my_weights, cosines, t)
        if verdict is not None:
            return verdict
        answer = as_tensor(got)
        if answer is not None and tuple(answer.shape) == tuple(cosines.shape):
            return failed(exercise, "keep only the negatives: drop column 0 (the positive)")
        expected = negative_gradients(cosines, t)
        verdict = compare(
            exercise,
            got,
            expected,
            f"the negatives' gradients at t={t}",
            hints=weight_hints(cosines, t),
        )
        if not verdict:
            return verdict
    return passed(
        exercise, "each negative is pushed with its softmax probability / t, as autograd says"
    )


def check_half_weight_temperature(
    answer: Any, batch: TinyBatch | None = None, query: int = 0
) -> Verdict:
    """Exercise 2.3: the highest temperature (within 0.01) at which query 0's hardest negative
    takes more than half of the negatives' softmax weight."""
    exercise = "exercise 2.3"
    if answer is None or answer is Ellipsis:
        return failed(exercise, "no answer yet: set `answer` to a temperature")
    try:
        t = float(answer)
    except (TypeError, ValueError):
        return failed(
            exercise, f"the answer is one temperature (a number); got {type(answer).__name__}"
        )
    if not t > 0:
        return failed(exercise, f"a temperature is > 0; got {t}")
    row = (batch or tiny_batch()).logits[query]
    target = half_weight_temperature(row)
    share = hardest_share(row, t)
    if share <= 0.5:
        return failed(
            exercise,
            f"at t = {t:g} the hardest negative takes only {share:.0%}: lower the temperature",
        )
    if t < target - 0.01:
        return failed(
            exercise,
            f"at t = {t:g} it takes {share:.0%}, more than half, but a higher temperature still does: find the highest",
        )
    return passed(
        exercise,
        f"at t = {t:g} the hardest negative takes {share:.1%}; just above {target:.2f} it drops under half",
    )
