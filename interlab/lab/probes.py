"""Probes of one trained InterCLR run's memory bank, shared by the study notebooks and the
negatives explorer: which negatives each sampler draws for the same queries, how similar they
are, how many are same-class, and the positive / negative logits MarginNCE sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from interlab.config import TrainConfig
from interlab.data import ImageSet, load_dataset
from interlab.features import features_as_trained
from interlab.lab.report import finished_checkpoint
from interlab.losses import MARGIN_KINDS, apply_margin, positive_probability
from interlab.sampling import (
    NEGATIVE_STRATEGIES,
    false_negative_share,
    sample_negatives,
    sample_positives,
)
from interlab.train import load_trained


@dataclass
class BankProbe:
    """One trained run, its training images and a fixed random set of probed queries."""

    config: TrainConfig
    method: Any
    train_set: ImageSet
    indices: torch.Tensor  # the probed images' bank indices
    queries: torch.Tensor  # their embeddings, as the bank compares them

    def describe(self) -> str:
        o, memory = self.method.options, self.method.memory
        return (
            f"probing {self.config.method} ({o.neg_sampling}, margin {o.margin} "
            f"{o.margin_kind}) on {len(self.indices)} queries: bank of {memory.size}, "
            f"{memory.num_clusters} clusters"
        )


def probe_bank(
    sweep_dir: str | Path, *settings: str, queries: int = 256, seed: int = 0
) -> BankProbe:
    """Load the first finished run matching `settings` (see `finished_checkpoint`) on the CPU
    and embed `queries` training images drawn with `seed`."""
    config, method = load_trained(
        finished_checkpoint(sweep_dir, *settings, method="interclr"), device="cpu"
    )
    train_set = load_dataset(config.data, "train", root=config.data_root)
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(train_set), generator=generator)[:queries]
    return BankProbe(
        config, method, train_set, indices, query_embeddings(method, train_set.images[indices])
    )


@torch.no_grad()
def query_embeddings(method: Any, images: torch.Tensor) -> torch.Tensor:
    """Projection embeddings of un-augmented images, as the bank's features are compared."""
    return features_as_trained(method, method.encoder, images)


def draw_negatives(
    method: Any,
    queries: torch.Tensor,
    indices: torch.Tensor,
    strategy: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """(B, K) bank indices of `strategy`'s negatives, with the trained run's sizes."""
    o = method.options
    return sample_negatives(
        method.memory, queries, indices, strategy, o.num_negatives, o.pool, generator
    )


@torch.no_grad()
def negatives_per_strategy(
    method: Any, indices: torch.Tensor, queries: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """What each sampler draws for the same queries."""
    generator = torch.Generator(device=queries.device).manual_seed(seed)
    return {s: draw_negatives(method, queries, indices, s, generator) for s in NEGATIVE_STRATEGIES}


def negative_similarities(
    method: Any, indices: torch.Tensor, queries: torch.Tensor, seed: int = 0
) -> dict[str, np.ndarray]:
    """Cosine similarities of the negatives each sampler draws for the same queries."""
    drawn = negatives_per_strategy(method, indices, queries, seed)
    features = method.memory.features
    return {
        strategy: torch.einsum("bd,bkd->bk", queries, features[negatives]).flatten().cpu().numpy()
        for strategy, negatives in drawn.items()
    }


def false_negative_rates(
    method: Any, indices: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Share of same-class negatives per sampler, on one trained bank (known labels only)."""
    drawn = negatives_per_strategy(method, indices, queries, seed)
    return {s: float(false_negative_share(labels, indices, n)) for s, n in drawn.items()}


@torch.no_grad()
def inter_logits(
    method: Any, indices: torch.Tensor, queries: torch.Tensor, seed: int = 0
) -> dict[str, np.ndarray]:
    """Positive and negative cosines of the inter branch, with the run's own sampler."""
    generator = torch.Generator(device=queries.device).manual_seed(seed)
    positives = sample_positives(method.memory, indices, generator, exclude_self=True)
    negatives = draw_negatives(method, queries, indices, method.options.neg_sampling, generator)
    positive = (queries * method.memory.features[positives]).sum(dim=1)
    negative = torch.einsum("bd,bkd->bk", queries, method.memory.features[negatives])
    return {"positive": positive.cpu().numpy(), "negative": negative.cpu().numpy()}


def inter_temperature(method: Any) -> float:
    """The temperature a trained InterCLR run's inter branch used."""
    return method.options.inter_temperature or method.options.temperature


def saturation_table(
    logits: dict[str, np.ndarray], margins: list[float], temperatures: list[float]
) -> str:
    """Markdown: the mean softmax probability of the positive for each margin, kind and
    temperature, on probed (positive, negatives) cosines. Near 1 the inter loss is saturated:
    its gradient vanishes and the margin under study changes nothing."""
    positive = torch.from_numpy(logits["positive"])
    negative = torch.from_numpy(logits["negative"]).reshape(len(positive), -1)
    columns = [(kind, t) for t in temperatures for kind in MARGIN_KINDS]
    lines = [
        "| margin | " + " | ".join(f"{kind}, t={t:g}" for kind, t in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for margin in margins:
        cells = [
            positive_probability(positive, negative, t, margin, kind).mean().item()
            for kind, t in columns
        ]
        lines.append(f"| {margin:+g} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_similarity_histograms(
    values: dict[str, np.ndarray], title: str, xlabel: str = "cosine similarity"
) -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    bins = np.linspace(low, high, 61) if high > low else 20
    for name, sims in values.items():
        ax.hist(sims, bins=bins, density=True, histtype="step", linewidth=1.6, label=name)
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_margin_effect(logits: dict[str, np.ndarray], margins: list[float], kind: str) -> Figure:
    """The positive logit under each margin against the (unchanged) negative logits."""
    shifted = {
        f"positive, m={m:+g}": apply_margin(torch.from_numpy(logits["positive"]), m, kind).numpy()
        for m in margins
    }
    shifted["negatives"] = logits["negative"].ravel()
    return plot_similarity_histograms(
        shifted, f"{kind} margin: what the softmax sees", "logit (before / t)"
    )
