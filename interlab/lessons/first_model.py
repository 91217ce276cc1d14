"""Lesson 3, your first contrastive model: helpers, figures, the queue/momentum widget, checks.

The notebook trains a small MoCo v2 run with the package (`quickstart_config`, `train`);
this module embeds images with a network before and after training, draws the UMAPs and
nearest-neighbour grids, shows the stored queue-size x momentum sweep
(`measured/queue_momentum.json`, written by `benchmarks/lesson_queue_momentum.py`) and checks
the three exercises against the package (`interlab.evaluate.knn_predict`,
`interlab.nets.momentum_update`, `interlab.methods.moco.fifo_write`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from interlab.evaluate import knn_predict
from interlab.features import features_as_trained
from interlab.lab.explore.display import redraw, show_with_static
from interlab.lab.plots import show_image
from interlab.lessons.checking import Verdict, as_tensor, call_answer, compare, failed, passed
from interlab.methods.moco import fifo_write
from interlab.nets import momentum_update

MEASURED = Path(__file__).resolve().parent / "measured"
WIDE = {"description_width": "initial"}


def show_figure(fig: Figure) -> None:
    """Display a figure once (as the cell's output) and close it, so pyplot does not show it
    a second time at the end of the cell."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


# ---- embeddings before and after training -----------------------------------------------------
def backbone_features(method: Any, images: Tensor) -> Tensor:
    """L2-normalised backbone features of uint8 images, as the method's kNN evaluation sees them."""
    return features_as_trained(method, method.backbone, images).cpu()


def umap_points(features: Tensor, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP of (N, D) features (the explorers' settings)."""
    import warnings

    from interlab.lab.explore.clusters import umap_2d

    with warnings.catch_warnings():  # umap: "n_jobs overridden by random_state" (seeded on purpose)
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return umap_2d(features.numpy(), None, seed=seed)


def plot_umaps(
    maps: dict[str, np.ndarray], labels: Tensor, classes: Sequence[str], title: str = ""
) -> Figure:
    """One scatter per named 2-D map, points coloured by true class, one shared legend."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps) + 1.6, 4.6))
    axes = np.atleast_1d(axes)
    labels = np.asarray(labels.cpu())
    for ax, (name, points) in zip(axes, maps.items(), strict=True):
        for c, class_name in enumerate(classes):
            chosen = labels == c
            ax.scatter(*points[chosen].T, s=4, alpha=0.7, color=f"C{c % 10}", label=class_name)
        ax.set(xticks=[], yticks=[], title=name)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def nearest_neighbours(query: Tensor, memory: Tensor, k: int) -> Tensor:
    """(Q, k) indices of each query's k most cosine-similar memory rows (features normalised)."""
    return (query @ memory.T).topk(k, dim=1).indices


def plot_neighbours(
    queries: Sequence[int],
    query_images: Tensor,
    memory_images: Tensor,
    neighbours: dict[str, Tensor],
    query_labels: Tensor,
    memory_labels: Tensor,
    classes: Sequence[str],
) -> Figure:
    """Per query: the image, then its nearest training images under each network (one row
    per network); green frame = same class as the query, red = another class."""
    k = next(iter(neighbours.values())).shape[1]
    rows = len(queries) * len(neighbours)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.35 * (k + 1) + 1.2, 1.45 * rows))
    axes = np.asarray(axes).reshape(rows, k + 1)
    for q, query in enumerate(queries):
        own = int(query_labels[query])
        for n, (name, found) in enumerate(neighbours.items()):
            row = axes[q * len(neighbours) + n]
            show_image(row[0], query_images[query], f"query: {classes[own]}", fontsize=7)
            row[0].set_ylabel(name, fontsize=8)
            hits = 0
            for j, index in enumerate(found[q].tolist()):
                label = int(memory_labels[index])
                hits += label == own
                colour = "tab:green" if label == own else "tab:red"
                show_image(row[j + 1], memory_images[index], classes[label], colour, fontsize=7)
            row[-1].text(1.08, 0.5, f"{hits}/{k}", transform=row[-1].transAxes, va="center")
    fig.suptitle("nearest training images (green: the query's class)", fontsize=10)
    fig.tight_layout()
    return fig


# ---- the stored queue / momentum sweep -----------------------------------------------------
def load_measured(name: str = "queue_momentum") -> dict[str, Any]:
    """A stored measurement (`interlab/lessons/measured/NAME.json`)."""
    path = MEASURED / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run benchmarks/lesson_{name}.py")
    return json.loads(path.read_text(encoding="utf-8"))


class QueueMomentumExplorer:
    """Pick a queue size and a key-encoder momentum; see that run's measured kNN among all."""

    def __init__(self, measured: dict[str, Any] | None = None) -> None:
        import ipywidgets as widgets

        self.measured = measured or load_measured()
        runs = self.measured["runs"]
        self.queues = sorted({int(r["queue_size"]) for r in runs} | {1024})
        self.momenta = sorted({float(r["encoder_momentum"]) for r in runs} | {0.99})
        self.knn = {
            (int(r["queue_size"]), float(r["encoder_momentum"])): r["knn_top1"] for r in runs
        }
        self.queue = widgets.Dropdown(
            options=self.queues, value=self._middle(self.queues), description="queue size (keys)",
            style=WIDE,
        )  # fmt: skip
        self.momentum = widgets.Dropdown(
            options=self.momenta, value=self._middle(self.momenta),
            description="key-encoder momentum m", style=WIDE,
        )  # fmt: skip
        self.message = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.queue, self.momentum):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.queue, self.momentum]), self.message, self.output]
        )
        self.update()

    @staticmethod
    def _middle(values: list) -> Any:
        return values[len(values) // 2]

    def chosen(self) -> tuple[int, float]:
        return int(self.queue.value), float(self.momentum.value)

    def describe(self) -> str:
        queue, momentum = self.chosen()
        value = self.knn.get((queue, momentum))
        if value is None:
            return f"queue {queue}, m {momentum}: not in the stored sweep"
        best = max(self.knn, key=self.knn.get)
        return (
            f"queue {queue}, m {momentum}: kNN top-1 {100 * value:.1f}% "
            f"(best of the sweep: queue {best[0]}, m {best[1]}, {100 * self.knn[best]:.1f}%)"
        )

    def update(self) -> None:
        self.message.value = self.describe()
        redraw(self.output, self.figure)

    def figure(self) -> Figure:
        """Heat map of every measured combination (chosen one framed) and the ranked bars."""
        chosen = self.chosen()
        grid = np.full((len(self.momenta), len(self.queues)), np.nan)
        for (queue, momentum), value in self.knn.items():
            grid[self.momenta.index(momentum), self.queues.index(queue)] = 100 * value
        fig, (heat, bars) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=[1, 1.4])
        image = heat.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
        for i in range(len(self.momenta)):
            for j in range(len(self.queues)):
                text = "not run" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
                colour = "k" if np.isnan(grid[i, j]) else "w"
                heat.text(j, i, text, ha="center", va="center", color=colour)
        if chosen in self.knn:
            i, j = self.momenta.index(chosen[1]), self.queues.index(chosen[0])
            heat.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=3))
        heat.set(
            xticks=range(len(self.queues)), xticklabels=self.queues, xlabel="queue size",
            yticks=range(len(self.momenta)), yticklabels=self.momenta,
            ylabel="key-encoder momentum m", title="kNN top-1 (%) per setting",
        )  # fmt: skip
        fig.colorbar(image, ax=heat)
        ranked = sorted(self.knn.items(), key=lambda item: item[1])
        colours = ["tab:red" if key == chosen else "tab:blue" for key, _ in ranked]
        bars.barh(range(len(ranked)), [100 * v for _, v in ranked], color=colours)
        bars.set_yticks(range(len(ranked)), [f"Q {q}, m {m}" for (q, m), _ in ranked])
        values = [100 * v for _, v in ranked]
        bars.set_xlim(min(values) - 3, max(values) + 1)
        bars.set(xlabel="kNN top-1 (%)", title="ranked (red: your choice)")
        bars.grid(alpha=0.3, axis="x")
        m = self.measured
        fig.suptitle(
            f"MoCo v2, {m['epochs']} epochs on {m['data'].split(' ')[0]}, measured on "
            f"{m['device']} ({m['date']}, {m['command']})",
            fontsize=9,
        )
        fig.tight_layout()
        return fig

    def show(self) -> None:
        show_with_static(self.widget, [self.figure])


# ---- exercises -------------------------------------------------------------------------------
def knn_problem(seed: int = 3) -> dict[str, Any]:
    """Exercise 3.1's data: raw (not normalised) features of a tiny memory and test set."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=generator)
    train_labels = torch.arange(40) % 4
    train = centres[train_labels] + 1.2 * torch.randn(40, 8, generator=generator)
    train = train * torch.rand(40, 1, generator=generator).mul(4).add(0.2)  # lengths vary
    test_labels = torch.arange(12) % 4
    test = centres[test_labels] + 1.2 * torch.randn(12, 8, generator=generator)
    return {
        "train_features": train,
        "train_labels": train_labels,
        "test_features": test,
        "test_labels": test_labels,
        "num_classes": 4,
        "k": 7,
        "temperature": 0.1,
    }


def expected_knn(problem: dict[str, Any]) -> Tensor:
    """The package's weighted kNN on cosine similarity (features normalised first)."""
    return knn_predict(
        F.normalize(problem["train_features"], dim=1),
        problem["train_labels"],
        F.normalize(problem["test_features"], dim=1),
        problem["num_classes"],
        k=problem["k"],
        temperature=problem["temperature"],
    )


def _majority_vote(problem: dict[str, Any], normalise: bool = True) -> Tensor:
    train, test = problem["train_features"], problem["test_features"]
    if normalise:
        train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    top = (test @ train.T).topk(problem["k"], dim=1).indices
    votes = F.one_hot(problem["train_labels"][top], problem["num_classes"]).sum(1)
    return votes.float().argmax(1)


def _unnormalised_weighted(problem: dict[str, Any]) -> Tensor:
    return knn_predict(
        problem["train_features"], problem["train_labels"], problem["test_features"],
        problem["num_classes"], k=problem["k"], temperature=problem["temperature"],
    )  # fmt: skip


def check_knn_top1(knn: Callable[..., Any]) -> Verdict:
    """Exercise 3.1: `knn(train_features, train_labels, test_features, num_classes, k,
    temperature)` returns each test row's predicted class (weighted kNN, cosine similarity)."""
    exercise = "exercise 3.1"
    problem = knn_problem()
    args = [problem[key] for key in ("train_features", "train_labels", "test_features")]
    args += [problem["num_classes"], problem["k"], problem["temperature"]]
    result, verdict = call_answer(
        exercise, knn, *(a.clone() if isinstance(a, Tensor) else a for a in args)
    )
    if verdict is not None:
        return verdict
    got = as_tensor(result)
    expected = expected_knn(problem)
    if got is not None and got.shape == expected.shape:
        if torch.equal(got.round().long(), expected):
            top1 = (expected == problem["test_labels"]).float().mean().item()
            return passed(exercise, f"predictions match the package's kNN (top-1 {top1:.2f})")
        hints = (
            (_majority_vote(problem), "each neighbour must vote with weight exp(sim / t), "
             "not one vote each (a plain majority)"),
            (_unnormalised_weighted(problem), "normalise the features first (cosine "
             "similarity): raw dot products favour long vectors"),
            (_majority_vote(problem, normalise=False), "normalise the features (cosine) and "
             "weight each vote by exp(sim / t)"),
        )  # fmt: skip
        for wrong, message in hints:
            if torch.equal(got.round().long(), wrong):
                return failed(exercise, message)
        wrong_rows = int((got.round().long() != expected).sum())
        return failed(exercise, f"{wrong_rows} of {len(expected)} predictions differ")
    return compare(exercise, result, expected.double(), "the predicted classes")


def check_momentum_update(update: Callable[[Tensor, Tensor, float], Tensor]) -> Verdict:
    """Exercise 3.2: `update(key_weight, query_weight, m)` returns the key encoder's new weight."""
    exercise = "exercise 3.2"
    generator = torch.Generator().manual_seed(0)
    key, query = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        key.weight.copy_(torch.randn(3, 4, generator=generator))
        query.weight.copy_(torch.randn(3, 4, generator=generator))
    momentum = 0.9
    key_weight, query_weight = key.weight.detach().clone(), query.weight.detach().clone()
    momentum_update(key, query, momentum)  # the package's update, on the real modules
    expected = key.weight.detach().double()
    result, verdict = call_answer(
        exercise, update, key_weight.clone(), query_weight.clone(), momentum
    )
    if verdict is not None:
        return verdict
    k, q = key_weight.double(), query_weight.double()
    hints = (
        (lambda g: torch.allclose(g, momentum * q + (1 - momentum) * k, atol=1e-4),
         "roles swapped: the key encoder keeps m of its own weight and takes (1 - m) of the query's"),
        (lambda g: torch.allclose(g, q, atol=1e-4),
         "that is a plain copy of the query encoder (m = 0): the key encoder must move slowly"),
        (lambda g: torch.allclose(g, k, atol=1e-4),
         "the key weight did not move (m = 1): add (1 - m) of the query weight"),
    )  # fmt: skip
    return compare(exercise, result, expected, "the key encoder's new weight", hints=hints)


def queue_lifetime(queue_size: int, batch_size: int) -> int:
    """Training steps a key survives in MoCo's FIFO queue, found by running the package's
    `fifo_write` (the queue MoCo writes) until the first step's keys are overwritten."""
    queue = torch.full((queue_size, 1), -1.0)
    pointer = torch.zeros((), dtype=torch.long)
    step = 0
    while True:
        fifo_write([queue], [torch.full((batch_size, 1), float(step))], pointer)
        if step > 0 and not (queue == 0).any():
            return step
        step += 1


def check_queue_steps(answer: Any, queue_size: int = 4096, batch_size: int = 256) -> Verdict:
    """Exercise 3.3: for how many training steps is a key a negative (in the queue)?"""
    exercise = "exercise 3.3"
    expected = queue_lifetime(queue_size, batch_size)
    if answer is None or answer is Ellipsis:
        return failed(exercise, "no answer yet: set `answer` to a number of steps")
    value = as_tensor(answer)
    if value is None or value.numel() != 1:
        return failed(exercise, f"the answer should be one number; got {answer!r}")
    number = float(value.reshape(()))
    if abs(number - expected) < 1e-6:
        return passed(
            exercise, f"{expected} steps: queue_size / batch = {queue_size} / {batch_size}"
        )
    if abs(number - batch_size / queue_size) < 1e-6:
        return failed(exercise, "upside down: how many batches fit in the queue?")
    if abs(number - queue_size * batch_size) < 1e-6:
        return failed(exercise, "divide, don't multiply: each step pushes out one batch of keys")
    return failed(exercise, f"{number:g} steps is not it: each step enqueues {batch_size} keys")
