"""Lesson 4, from instances to clusters: InterCLR's memory bank and its k-means pseudo-labels.

The notebook trains two short InterCLR runs with the package (online and offline label
maintenance, a bank snapshot every epoch); this module reads their snapshots, draws
clusters as image grids with class names, finds a false negative among sampled negatives,
measures how the labels change between epochs, and checks the three exercises against the
package (`interlab.cluster.purity`, `interlab.sampling.false_negative_share`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from interlab.cluster import nmi, purity
from interlab.config import TrainConfig
from interlab.lab.plots import show_image
from interlab.lab.probes import draw_negatives, query_embeddings
from interlab.lessons.checking import Verdict, as_tensor, call_answer, compare, failed, passed
from interlab.sampling import false_negative_share
from interlab.snapshots import list_snapshots, load_snapshot


def interclr_config(
    online: bool, epochs: int, device: str, out_dir: str | Path, recluster_every: int = 2
) -> TrainConfig:
    """The quickstart's CPU-sized InterCLR run, a bank snapshot every epoch; `online=False`
    keeps the labels fixed between k-means re-clusterings every `recluster_every` epochs."""
    from interlab.lab.quickstart import quickstart_config

    overrides: dict[str, Any] = {
        "snapshot_every": 1,
        # the README's sizing for C = 10 classes: 10 clusters per class, a pool of 30% of N
        "num_clusters": 100,
        "pool_share": 0.3,
        "online_labels": online,
        "eval_every": epochs,
    }
    if not online:
        overrides["recluster_every"] = recluster_every
    return quickstart_config(
        method="interclr",
        device=device,
        epochs=epochs,
        out_dir=str(Path(out_dir) / ("online" if online else "offline")),
        overrides=overrides,
    )


# ---- reading the bank snapshots ----------------------------------------------------------------
def snapshot_labels(run_dir: str | Path) -> dict[int, np.ndarray]:
    """Pseudo-labels of the bank at every saved epoch (0 = the initial k-means)."""
    return {epoch: load_snapshot(run_dir, epoch)["labels"] for epoch in list_snapshots(run_dir)}


def label_changes(run_dir: str | Path) -> dict[str, list[float]]:
    """Epoch by epoch: the share of images whose cluster id changed since the epoch before,
    and the NMI between the two labelings (1 = the same partition, whatever the ids)."""
    labels = snapshot_labels(run_dir)
    epochs = sorted(labels)
    rows: dict[str, list[float]] = {"epoch": [], "changed": [], "nmi_to_previous": []}
    for previous, epoch in pairwise(epochs):
        rows["epoch"].append(epoch)
        rows["changed"].append(float((labels[epoch] != labels[previous]).mean()))
        rows["nmi_to_previous"].append(nmi(labels[previous], labels[epoch]))
    return rows


def plot_maintenance(runs: dict[str, dict[str, Any]]) -> Figure:
    """Online vs offline: label changes between epochs, partition stability, NMI vs classes.

    `runs` maps a name to {"dir": run folder, "metrics": its per-epoch records}.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for colour, (name, run) in enumerate(runs.items()):
        changes = label_changes(run["dir"])
        style = {"marker": "o", "color": f"C{colour}", "label": name}
        axes[0].plot(changes["epoch"], [100 * c for c in changes["changed"]], **style)
        axes[1].plot(changes["epoch"], changes["nmi_to_previous"], **style)
        scored = [m for m in run["metrics"] if "nmi" in m]
        axes[2].plot([m["epoch"] for m in scored], [m["nmi"] for m in scored], **style)
    axes[0].set(xlabel="epoch", ylabel="% of images", title="cluster id changed since last epoch")
    axes[1].set(xlabel="epoch", ylabel="NMI", title="same partition as last epoch? (1 = yes)")
    axes[2].set(xlabel="epoch", ylabel="NMI", title="pseudo-labels vs true classes")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def cluster_table(pseudo: np.ndarray, true: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Every cluster's size, majority class (by name) and purity, purest first."""
    rows = []
    for cluster in np.unique(pseudo):
        members = true[pseudo == cluster]
        counts = np.bincount(members, minlength=len(classes))
        rows.append({
            "cluster": int(cluster),
            "size": len(members),
            "majority": classes[int(counts.argmax())],
            "purity": float(counts.max() / len(members)),
        })  # fmt: skip
    return sorted(rows, key=lambda row: -row["purity"])


def plot_cluster_grid(
    images: Tensor,
    true: np.ndarray,
    pseudo: np.ndarray,
    clusters: Sequence[int],
    classes: Sequence[str],
    per_cluster: int = 8,
    seed: int = 0,
) -> Figure:
    """One row per cluster: a random sample of its members, titled with their class names;
    a red frame marks members outside the cluster's majority class."""
    fig, axes = plt.subplots(
        len(clusters), per_cluster, figsize=(1.3 * per_cluster, 1.5 * len(clusters))
    )
    axes = np.asarray(axes).reshape(len(clusters), per_cluster)
    rng = np.random.default_rng(seed)
    for row, cluster in zip(axes, clusters, strict=True):
        members = np.flatnonzero(pseudo == cluster)
        majority = int(np.bincount(true[members]).argmax())
        share = float((true[members] == majority).mean())
        for ax, index in zip(row, rng.permutation(members)[:per_cluster], strict=False):
            frame = None if true[index] == majority else "tab:red"
            show_image(ax, images[index], classes[int(true[index])], frame, fontsize=7)
        for ax in row[len(members) :]:
            ax.axis("off")
        row[0].set_ylabel(
            f"cluster {cluster}\n{len(members)} imgs\n{share:.0%} {classes[majority]}", fontsize=7
        )
    fig.suptitle(
        "clusters as image grids (red frame: not the cluster's majority class)", fontsize=10
    )
    fig.tight_layout()
    return fig


@torch.no_grad()
def find_false_negatives(
    method: Any,
    images: Tensor,
    labels: Tensor,
    strategy: str = "semihard",
    queries: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Draw `strategy`'s negatives for random queries from the trained bank; returns the
    share of false negatives (same true class as the query) and the first query that has one."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(images), generator=generator)[:queries]
    negatives = draw_negatives(
        method, query_embeddings(method, images[indices]), indices, strategy, generator
    )
    labels = torch.as_tensor(labels)
    share = float(false_negative_share(labels, indices, negatives))
    same = labels[negatives] == labels[indices].unsqueeze(1)
    row = int(same.any(dim=1).float().argmax())
    column = int(same[row].float().argmax())
    return {
        "share": share,
        "query": int(indices[row]),
        "negative": int(negatives[row, column]),
        "negatives": negatives[row].tolist(),
        "strategy": strategy,
    }


def plot_false_negative(
    found: dict[str, Any], images: Tensor, labels: Tensor, pseudo: np.ndarray,
    classes: Sequence[str], shown: int = 7,
) -> Figure:  # fmt: skip
    """The query, one of its false negatives (red) and other negatives drawn for it."""
    query = found["query"]
    others = [n for n in found["negatives"] if n != found["negative"]][: shown - 1]
    fig, axes = plt.subplots(1, shown + 1, figsize=(1.5 * (shown + 1), 2.0))
    own = int(labels[query])
    show_image(axes[0], images[query], f"query: {classes[own]}\ncluster {pseudo[query]}", "k")
    for ax, index in zip(axes[1:], [found["negative"], *others], strict=False):
        label = int(labels[index])
        frame = "tab:red" if label == own else None
        show_image(ax, images[index], f"{classes[label]}\ncluster {pseudo[index]}", frame)
    fig.suptitle(
        f"{found['strategy']} negatives of one query: red = same class (a false negative)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---- exercises -------------------------------------------------------------------------------


# A small labelling: 12 images of 3 classes in 4 clusters (cluster ids are arbitrary names).
PURITY_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
PURITY_CLUSTERS = np.array([3, 3, 3, 1, 1, 1, 1, 0, 0, 0, 2, 2])


def _inverse_purity(true: np.ndarray, clusters: np.ndarray) -> float:
    return purity(clusters, true)


def check_purity(my_purity: Callable[[np.ndarray, np.ndarray], float]) -> Verdict:
    """Exercise 4.1: `my_purity(true_labels, cluster_labels)`: the share of images that belong
    to their cluster's majority class (checked against `interlab.cluster.purity`)."""
    exercise = "exercise 4.1"
    true, clusters = PURITY_TRUE.copy(), PURITY_CLUSTERS.copy()
    result, verdict = call_answer(exercise, my_purity, true.copy(), clusters.copy())
    if verdict is not None:
        return verdict
    hints = (
        (lambda g: abs(float(g) - float((true == clusters).mean())) < 1e-6,
         "cluster ids are names, not classes: count each cluster's most common class instead"),
        (lambda g: abs(float(g) - _inverse_purity(true, clusters)) < 1e-6,
         "that is the other direction (each class's most common cluster); purity goes per cluster"),
        (lambda g: float(g) > 1.0,
         "purity is a share: divide the count of majority members by the number of images"),
    )  # fmt: skip
    verdict = compare(exercise, result, purity(true, clusters), "the purity", hints=hints)
    if not verdict:
        return verdict
    rng = np.random.default_rng(1)  # a second, random labelling: not tuned to one example
    true2, clusters2 = rng.integers(0, 5, 60), rng.integers(0, 7, 60)
    second, verdict = call_answer(exercise, my_purity, true2, clusters2)
    if verdict is not None:
        return verdict
    verdict = compare(
        exercise, second, purity(true2, clusters2), "the purity of a second labelling"
    )
    if verdict:
        return passed(exercise, "the purity matches on the given and on a random labelling")
    return verdict


LABELS_BEFORE = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
LABELS_AFTER = np.array([0, 1, 1, 1, 2, 2, 0, 3, 3, 2])


def check_label_change(my_change_ratio: Callable[[np.ndarray, np.ndarray], float]) -> Verdict:
    """Exercise 4.2: `my_change_ratio(before, after)`: the share of images whose pseudo-label
    changed (InterCLR's `label_change_ratio`: (after != before).mean())."""
    exercise = "exercise 4.2"
    before, after = LABELS_BEFORE.copy(), LABELS_AFTER.copy()
    result, verdict = call_answer(exercise, my_change_ratio, before.copy(), after.copy())
    if verdict is not None:
        return verdict
    expected = float((before != after).mean())
    hints = (
        (lambda g: abs(float(g) - (before != after).sum()) < 1e-6,
         "that is the number of changed labels; divide by the number of images"),
        (lambda g: abs(float(g) - (1 - expected)) < 1e-6,
         "you counted the labels that stayed the same"),
    )  # fmt: skip
    return compare(exercise, result, expected, "the label change ratio", hints=hints)


def false_negative_problem(seed: int = 0) -> dict[str, Tensor]:
    """Exercise 4.3's data: 40 bank images' true classes and pseudo-labels (clusters mix
    classes), 6 query indices and 5 negatives each, drawn outside the query's cluster."""
    generator = torch.Generator().manual_seed(seed)
    true = torch.randint(0, 4, (40,), generator=generator)
    pseudo = torch.where(
        torch.rand(40, generator=generator) < 0.7,
        true,
        torch.randint(0, 4, (40,), generator=generator),
    )
    queries = torch.randperm(40, generator=generator)[:6]
    negatives = []
    for query in queries:
        outside = torch.nonzero(pseudo != pseudo[query]).squeeze(1)
        negatives.append(outside[torch.randperm(len(outside), generator=generator)[:5]])
    return {"true": true, "pseudo": pseudo, "queries": queries, "negatives": torch.stack(negatives)}


def check_false_negative_share(my_share: Callable[..., float]) -> Verdict:
    """Exercise 4.3: `my_share(true_labels, pseudo_labels, queries, negatives)`: the share of
    the (B, K) sampled negatives whose true class is their query's
    (`interlab.sampling.false_negative_share`)."""
    exercise = "exercise 4.3"
    problem = false_negative_problem()
    true, pseudo, queries, negatives = (
        problem[k] for k in ("true", "pseudo", "queries", "negatives")
    )
    result, verdict = call_answer(
        exercise, my_share, true.clone(), pseudo.clone(), queries.clone(), negatives.clone()
    )
    if verdict is not None:
        return verdict
    expected = float(false_negative_share(true, queries, negatives))
    hints = (
        (lambda g: abs(float(g)) < 1e-6,
         "zero: you compared pseudo-labels, which never match (negatives are drawn outside the "
         "query's cluster); compare the true classes"),
        (lambda g: abs(float(g) - (1 - expected)) < 1e-6,
         "you counted the true negatives (another class); a false negative has the query's class"),
        (lambda g: abs(float(g) - expected * negatives.numel()) < 1e-6,
         "that is a count; divide by the number of sampled negatives"),
    )  # fmt: skip
    if as_tensor(result) is not None and as_tensor(result).numel() != 1:
        return failed(exercise, "the share should be one number over all queries and negatives")
    return compare(exercise, result, expected, "the false-negative share", hints=hints)
