"""NegativeExplorer: one query, its positive, and the negatives each sampler draws for it.

Each strategy's negatives are shown as an image grid annotated with their cosine to the
query; a red frame marks a false negative (same true class as the query). Below, over many
queries: each sampler's false-negative rate and the similarity histogram of its draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from interlab.lab.explore.display import redraw, show_with_static
from interlab.lab.plots import class_name, show_image
from interlab.lab.probes import (
    draw_negatives,
    false_negative_rates,
    negative_similarities,
    plot_similarity_histograms,
    query_embeddings,
)
from interlab.sampling import NEGATIVE_STRATEGIES, sample_positives


class NegativeExplorer:
    """Pick a query (index or random); see each strategy's negatives side by side."""

    def __init__(
        self,
        method: Any,
        images: torch.Tensor,
        labels: torch.Tensor,
        shown: int = 8,
        seed: int = 0,
        classes: Sequence[str] | None = None,
    ) -> None:
        """`classes` names the labels (an ImageSet's `classes`) in titles and messages."""
        import ipywidgets as widgets

        if len(images) != method.memory.size:
            raise ValueError(
                f"the bank holds {method.memory.size} images; got {len(images)} images"
            )
        self.method, self.images, self.labels, self.shown = method, images, labels, shown
        self.classes = list(classes) if classes is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.index = widgets.BoundedIntText(
            value=0, min=0, max=len(images) - 1, description="query"
        )
        self.random = widgets.Button(description="random query")
        self.message = widgets.HTML()
        self.output = widgets.Output()
        self.index.observe(lambda _change: self.update(), names="value")
        self.random.on_click(lambda _button: self.pick_random())
        self.widget = widgets.VBox(
            [widgets.HBox([self.index, self.random]), self.message, self.output]
        )
        self.current: dict[str, Any] = {}
        self.update()

    def pick_random(self) -> None:
        self.index.value = int(torch.randint(len(self.images), (1,), generator=self.generator))

    @torch.no_grad()
    def negatives_for(self, index: int, seed: int = 0) -> dict[str, Any]:
        """The query's positive and, per strategy, its first `shown` negatives with cosines."""
        if not 0 <= index < len(self.images):
            raise ValueError(f"query index {index} is out of range [0, {len(self.images)})")
        indices = torch.tensor([index])
        query = query_embeddings(self.method, self.images[indices])
        generator = torch.Generator().manual_seed(seed)
        positive = int(
            sample_positives(self.method.memory, indices, generator, exclude_self=True)[0]
        )
        found: dict[str, Any] = {"query": index, "positive": positive, "strategies": {}}
        for strategy in NEGATIVE_STRATEGIES:
            drawn = draw_negatives(self.method, query, indices, strategy, generator)[
                0, : self.shown
            ]
            cosines = (self.method.memory.features[drawn] @ query[0]).tolist()
            false = (self.labels[drawn] == self.labels[index]) & (self.labels[index] >= 0)
            found["strategies"][strategy] = {
                "indices": drawn.tolist(),
                "cosines": cosines,
                "false": false.tolist(),
            }
        return found

    def update(self) -> None:
        try:
            self.current = self.negatives_for(int(self.index.value))
        except ValueError as error:  # shown in the widget, not as a traceback
            self.message.value = f"<span style='color:#b00'>{error}</span>"
            return
        name = class_name(self.classes, int(self.labels[self.index.value]))
        self.message.value = (
            f"query {self.index.value} ({name}); red frame = same class as the query"
        )
        redraw(self.output, self.figure)

    def figure(self) -> Figure:
        """Row 0: query and positive; one row per strategy: its negatives with their cosines."""
        rows = 1 + len(NEGATIVE_STRATEGIES)
        fig, axes = plt.subplots(
            rows, self.shown, figsize=(1.3 * self.shown, 1.45 * rows), squeeze=False
        )
        for ax in axes.flat:
            ax.axis("off")
        for col, role in enumerate(("query", "positive")):
            index = self.current[role]
            name = class_name(self.classes, int(self.labels[index]))
            show_image(axes[0][col], self.images[index], f"{role}\n{name}")
        for row, (strategy, drawn) in enumerate(self.current["strategies"].items(), start=1):
            for col, (index, cosine, false) in enumerate(
                zip(drawn["indices"], drawn["cosines"], drawn["false"], strict=True)
            ):
                show_image(
                    axes[row][col],
                    self.images[index],
                    f"{cosine:.2f} {class_name(self.classes, int(self.labels[index]))}",
                    frame="red" if false else None,
                    fontsize=7,
                )
            axes[row][0].text(
                -0.15,
                0.5,
                strategy,
                transform=axes[row][0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize=9,
            )
        fig.tight_layout()
        return fig

    def pool_figure(self, queries: int = 256, seed: int = 0) -> tuple[Figure, dict[str, float]]:
        """Over many queries: similarity histograms per sampler and their false-negative rates."""
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(self.images), generator=generator)[:queries]
        embedded = query_embeddings(self.method, self.images[indices])
        rates = false_negative_rates(self.method, indices, embedded, self.labels, seed)
        sims = negative_similarities(self.method, indices, embedded, seed)
        titled = {f"{s} (false neg. {rates[s]:.2f})": v for s, v in sims.items()}
        return plot_similarity_histograms(titled, f"negatives of {len(indices)} queries"), rates

    def show(self) -> None:
        show_with_static(self.widget, [self.figure, lambda: self.pool_figure()[0]])
