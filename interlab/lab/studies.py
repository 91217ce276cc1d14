"""What the study notebooks compute: sweep results by epoch, and probes of a trained bank.

The three InterCLR notebooks (`01_pseudo_labels`, `02_negative_sampling`,
`03_decision_boundary`) read a sweep folder if it holds finished runs and otherwise run the
small form of their grid first (`ensure_sweep`). The probes load one trained InterCLR run and
look inside its memory bank: similarities of the negatives each sampler would pick, and the
positive / negative logits MarginNCE sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from interlab.evaluate import extract_features
from interlab.lab.experiment import check_training_run
from interlab.lab.grids import load_sweep
from interlab.lab.paths import grid_path, in_project
from interlab.lab.report import collect_runs, write_report
from interlab.lab.sweep import run_sweep
from interlab.losses import MARGIN_KINDS, apply_margin, positive_probability
from interlab.sampling import (
    NEGATIVE_STRATEGIES,
    false_negative_share,
    sample_negatives,
    sample_positives,
)


def ensure_sweep(grid: str, sweep_dir: str | Path, small: bool = True, workers: int = 1) -> Path:
    """Use the sweep folder's finished runs, or run the grid (small form by default) first.

    A relative `sweep_dir` is taken from the repository root, so JupyterLab (which starts
    kernels in notebooks/) and papermill runs find the same folder. Returns the absolute path.
    """
    sweep_dir = in_project(sweep_dir)
    try:
        done = [r for r in collect_runs(sweep_dir) if r["state"] == "done"]
    except ValueError:
        done = []
    if not done:
        sweep = load_sweep(grid_path(grid), small=small, check_run=check_training_run)
        run_sweep(sweep, sweep_dir, workers=workers)
    write_report(sweep_dir)
    return sweep_dir


def epoch_series(sweep_dir: str | Path, key: str) -> dict[str, dict[int, float]]:
    """Per setting, the mean over seeds of a per-epoch figure (e.g. nmi, knn_top1)."""
    import json

    series: dict[str, dict[int, list[float]]] = {}
    for row in collect_runs(sweep_dir):
        if row["state"] != "done":
            continue
        metrics = json.loads((Path(sweep_dir) / row["run"] / "metrics.json").read_text())
        for record in metrics.get("per_epoch", []):
            if key in record:
                series.setdefault(row["setting"], {}).setdefault(record["epoch"], []).append(
                    record[key]
                )
    return {s: {e: float(np.mean(v)) for e, v in sorted(by.items())} for s, by in series.items()}


def plot_epoch_series(
    sweep_dir: str | Path, keys: list[str], titles: list[str] | None = None
) -> Figure:
    """One panel per figure, one line per setting."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.4), squeeze=False)
    for ax, key, title in zip(axes[0], keys, titles or keys, strict=True):
        for setting, by_epoch in epoch_series(sweep_dir, key).items():
            ax.plot(list(by_epoch), list(by_epoch.values()), marker=".", label=setting)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def trained_run(sweep_dir: str | Path, *settings: str) -> Path:
    """The checkpoint of a finished InterCLR run of the sweep.

    `settings` are tried in order; each names a setting or its first grid values
    (`neg_sampling=semihard` matches `neg_sampling=semihard,pool_share=0.3`). None given, or
    none found: the first finished run.
    """
    finished = []
    for row in collect_runs(sweep_dir):
        checkpoint = Path(sweep_dir) / row["run"] / "run" / "checkpoint.pt"
        if row["state"] == "done" and checkpoint.exists():
            finished.append((f"{row['setting']},", checkpoint))
    for setting in settings:
        for name, checkpoint in finished:
            if name.startswith(f"{setting},"):
                return checkpoint
    if finished:
        return finished[0][1]
    raise ValueError(f"no finished run with a checkpoint in {sweep_dir}")


@torch.no_grad()
def query_embeddings(method: Any, images: torch.Tensor) -> torch.Tensor:
    """Projection embeddings of un-augmented images, as the bank's features are compared."""
    aug = method.augment.config
    return extract_features(
        method.encoder,
        images,
        mean=aug.mean,
        std=aug.std,
        progress=False,
        precision=method.precision,
    )


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
