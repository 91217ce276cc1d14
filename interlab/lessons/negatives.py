"""Lesson 5, "Which negatives?": a small InterCLR run, a toy bank for the exercises, checks.

The lesson trains a short InterCLR run (its memory bank and k-means pseudo-labels are what
the samplers of `interlab.sampling` draw from), shows one query's negatives per sampler with
`NegativeExplorer`, and the false-negative rate of each sampler over many queries. The
exercises work on a toy bank of 16 entries small enough to read as a table; every check
computes the expected answer with `interlab.sampling` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from interlab.data import ImageSet, load_dataset
from interlab.lab.paths import in_project
from interlab.lessons.checking import Verdict, as_tensor, call_answer, failed, passed
from interlab.memory import MemoryBank
from interlab.sampling import NEGATIVE_STRATEGIES, false_negative_share, sample_negatives

TOY_CLASSES = ["cat", "dog", "ship"]
# Four pseudo-label clusters over three true classes: clusters 0 and 1 are both cats, so a
# cat query's nearest "negatives" in cluster 1 are false negatives (the lesson's point).
TOY_CLUSTER_CLASS = (0, 0, 1, 2)


def lesson_run(
    out_dir: str = "runs/lessons/negatives", epochs: int = 3, device: str = "cpu"
) -> tuple[Path, Any, ImageSet]:
    """(run folder, trained InterCLR method on the CPU, its training images).

    Trains a CPU-sized InterCLR run (quickstart settings, ConvNet) into `out_dir/run`, resumed
    or reused when it is already there; no kNN evaluation during training (the lesson looks
    at the bank, not the accuracy).
    """
    from interlab.lab.quickstart import quickstart_config
    from interlab.train import load_trained, train

    config = quickstart_config(
        method="interclr",
        epochs=epochs,
        device=device,
        out_dir=str(in_project(out_dir)),
        overrides={"snapshot_every": 1, "eval_every": 0},
    )
    path = train(config, progress=False).out
    config, method = load_trained(Path(path) / "checkpoint.pt", device="cpu")
    return Path(path), method, load_dataset(config.data, "train", root=config.data_root)


@dataclass
class ToyBank:
    """A 16-entry memory bank: entry 0 is the query; similarities, pseudo-labels, classes."""

    bank: MemoryBank
    similarity: torch.Tensor  # (N,) cosine of each entry with the query (entry 0)
    clusters: torch.Tensor  # (N,) pseudo-labels (k-means clusters of the bank)
    classes: torch.Tensor  # (N,) true classes (never seen in training)
    class_names: list[str]
    query: int = 0

    @property
    def query_cluster(self) -> int:
        return int(self.clusters[self.query])

    def table(self) -> str:
        """Markdown: one row per entry (the query first)."""
        lines = ["| entry | cosine with the query | cluster | true class |", "|---|---|---|---|"]
        for i in range(len(self.similarity)):
            name = "query" if i == self.query else str(i)
            cls = self.class_names[int(self.classes[i])]
            lines.append(
                f"| {name} | {self.similarity[i]:+.3f} | {int(self.clusters[i])} | {cls} |"
            )
        return "\n".join(lines)


def toy_bank(seed: int = 0, size: int = 16, dim: int = 8) -> ToyBank:
    """A reproducible toy bank: 4 balanced clusters around unit centres, entry 0 in cluster 0.

    Cluster 1's centre lies near cluster 0's and both are cats; one entry of another cluster
    is a cat too (k-means is not perfect), so hard negatives include false ones.
    """
    generator = torch.Generator().manual_seed(seed)
    num_clusters = len(TOY_CLUSTER_CLASS)
    centres = F.normalize(torch.randn(num_clusters, dim, generator=generator), dim=1)
    centres[1] = F.normalize(centres[0] + 0.7 * centres[1], dim=0)
    clusters = torch.arange(size) % num_clusters
    clusters[1:] = clusters[1:][torch.randperm(size - 1, generator=generator)]
    noise = 0.45 * torch.randn(size, dim, generator=generator)
    features = F.normalize(centres[clusters] + noise, dim=1)
    classes = torch.tensor(TOY_CLUSTER_CLASS)[clusters]
    stray = int(torch.nonzero(clusters == 2)[0])  # a cat that k-means put in a ship cluster
    classes[stray] = 0
    bank = MemoryBank(size, dim, num_clusters)
    bank.initialize(features, clusters)
    similarity = bank.features @ bank.features[0]
    return ToyBank(bank, similarity, clusters, classes, list(TOY_CLASSES))


def package_negatives(toy: ToyBank, strategy: str, count: int, pool: int, seed: int = 0):
    """`interlab.sampling.sample_negatives` for the toy bank's query: (count,) bank indices."""
    query = toy.bank.features[toy.query : toy.query + 1]
    generator = torch.Generator().manual_seed(seed)
    indices = torch.tensor([toy.query])
    return sample_negatives(toy.bank, query, indices, strategy, count, pool, generator)[0]


def _as_indices(answer: Any) -> torch.Tensor | None:
    got = as_tensor(answer)
    if got is None or got.dim() != 1:
        return None
    return got.round().long()


def _index_verdict(
    exercise: str, toy: ToyBank, answer: Any, expected: torch.Tensor, ordered: bool, what: str
) -> Verdict:
    got = _as_indices(answer)
    if got is None:
        return failed(exercise, f"{what} should be a 1-D list or tensor of bank indices")
    if len(got) != len(expected):
        return failed(exercise, f"{what} should hold {len(expected)} indices; got {len(got)}")
    if ((got < 0) | (got >= len(toy.clusters))).any():
        return failed(exercise, f"{what}: indices must lie in [0, {len(toy.clusters)})")
    own = toy.clusters[got] == toy.query_cluster
    if own.any():
        return failed(
            exercise,
            f"{what} includes entries {got[own].tolist()} of the query's own cluster "
            f"{toy.query_cluster}: those are the query's positives, never its negatives",
        )
    if set(got.tolist()) == set(expected.tolist()):
        if not ordered or got.tolist() == expected.tolist():
            return passed(exercise, f"{what} match `interlab.sampling`")
        return failed(exercise, f"right entries, wrong order: {what} go most similar first")
    outside = toy.similarity.masked_fill(toy.clusters == toy.query_cluster, float("inf"))
    least = outside.topk(len(expected), largest=False).indices
    if set(got.tolist()) == set(least.tolist()):
        return failed(
            exercise, "these are the least similar entries (semi-easy): take the most similar"
        )
    return failed(exercise, f"{what} should be {len(expected)} entries; yours differ")


def _answers_on_toy_banks(
    exercise: str, function: Any, size: int
) -> tuple[list[tuple[ToyBank, Any]], Verdict | None]:
    """The student's answer on toy banks 0 and 1 (given copies), or the verdict of a crash."""
    answers = []
    for seed in (0, 1):
        toy = toy_bank(seed)
        bank = (toy.similarity.clone(), toy.clusters.clone(), toy.query_cluster)
        answer, problem = call_answer(exercise, function, *bank, size)
        if problem is not None:
            return [], problem
        answers.append((toy, answer))
    return answers, None


def check_hard_negatives(function: Any, count: int = 4) -> Verdict:
    """Exercise 5.1: `function(similarity, clusters, query_cluster, count)` -> hard negatives.

    Right when it returns what `sample_negatives(..., "hard", count)` draws, on two toy banks.
    """
    exercise = "5.1 hard negatives"
    answers, problem = _answers_on_toy_banks(exercise, function, count)
    if problem is not None:
        return problem
    for toy, answer in answers:
        expected = package_negatives(toy, "hard", count, count)
        verdict = _index_verdict(exercise, toy, answer, expected, True, "hard negatives")
        if not verdict:
            return verdict
    return passed(
        exercise,
        f"the {count} most similar entries outside the query's cluster, most similar first, "
        "as `interlab.sampling` picks them",
    )


def check_semihard_pool(function: Any, pool: int = 8, count: int = 3) -> Verdict:
    """Exercise 5.2: `function(similarity, clusters, query_cluster, pool)` -> the semi-hard pool.

    Right when the returned set is the `pool` most similar entries outside the query's
    cluster (any order) and holds every semi-hard draw of `interlab.sampling` over 50 seeds.
    """
    exercise = "5.2 semi-hard pool"
    answers, problem = _answers_on_toy_banks(exercise, function, pool)
    if problem is not None:
        return problem
    for toy, answer in answers:
        expected = package_negatives(toy, "hard", pool, pool)
        verdict = _index_verdict(exercise, toy, answer, expected, False, "the pool")
        if not verdict:
            return verdict
        mine = set(_as_indices(answer).tolist())
        draws = [package_negatives(toy, "semihard", count, pool, s) for s in range(50)]
        if not all(set(d.tolist()) <= mine for d in draws):
            return failed(exercise, "some semi-hard draws of `interlab.sampling` fall outside it")
    return passed(
        exercise,
        f"the {pool} most similar entries outside the cluster; all 50 semi-hard draws of "
        f"{count} from `interlab.sampling` lie in your pool",
    )


def check_false_negative_share(function: Any) -> Verdict:
    """Exercise 5.3: `function(classes, query, negatives)` -> the share of same-class negatives.

    Compared with `interlab.sampling.false_negative_share` on the toy banks' hard and random
    negatives.
    """
    exercise = "5.3 false-negative share"
    for seed in (0, 1):
        toy = toy_bank(seed)
        for strategy, count in (("hard", 6), ("random", 10)):
            negatives = package_negatives(toy, strategy, count, count, seed)
            answer, problem = call_answer(
                exercise, function, toy.classes.clone(), toy.query, negatives.clone()
            )
            if problem is not None:
                return problem
            got = as_tensor(answer)
            if got is None or got.numel() != 1:
                return failed(exercise, "the share should be one number in [0, 1]")
            value = float(got.flatten()[0])
            if not math.isfinite(value):
                return failed(exercise, "the share is not a finite number")
            indices = torch.tensor([toy.query])
            want = float(false_negative_share(toy.classes, indices, negatives.unsqueeze(0)))
            if abs(value - want) < 1e-6:
                continue
            same = int((toy.classes[negatives] == toy.classes[toy.query]).sum())
            if abs(value - same) < 1e-6 and same != want:
                return failed(exercise, f"{value:g} is a count: divide by the {count} negatives")
            if abs(value - 100 * want) < 1e-4:
                return failed(exercise, "a fraction in [0, 1], not a percentage")
            if abs(value - (1 - want)) < 1e-6:
                return failed(
                    exercise, "that is the share of true negatives: count same-class ones"
                )
            if value == 0 and want > 0:
                return failed(
                    exercise,
                    "0, but some negatives share the query's true class: compare true classes, "
                    "not clusters (negatives never share the query's cluster)",
                )
            return failed(
                exercise, f"{value:.3f}; the share is {want:.3f} for {strategy} negatives"
            )
    return passed(exercise, "matches `interlab.sampling.false_negative_share` on every draw")


def false_negative_chance(method: Any, labels: torch.Tensor, indices: torch.Tensor) -> float:
    """The false-negative rate of a sampler that ignored similarity: the share of same-class
    entries among those outside the query's cluster, averaged over the queries."""
    bank = method.memory
    outside = bank.labels.unsqueeze(0) != bank.labels[indices].unsqueeze(1)
    same_class = labels.unsqueeze(0) == labels[indices].unsqueeze(1)
    return float(((outside & same_class).sum(1) / outside.sum(1).clamp_min(1)).mean())


def plot_false_negative_rates(rates: dict[str, float], chance: float, queries: int) -> Figure:
    """One bar per sampler: the share of its negatives that share the query's true class."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [s for s in NEGATIVE_STRATEGIES if s in rates]
    bars = ax.bar(names, [rates[s] for s in names], color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(
        chance, color="k", ls="--", lw=1, label=f"same class outside the cluster {chance:.3f}"
    )
    ax.set(ylabel="false-negative rate", title=f"false negatives per sampler, {queries} queries")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def negatives_table(found: dict[str, Any], labels: torch.Tensor, classes: list[str]) -> str:
    """Markdown: per sampler, the shown negatives' cosines and true classes (false ones bold).

    `found` is `NegativeExplorer.current` (or `negatives_for`): the query and its draws.
    """
    query = int(found["query"])
    name = _class_name(labels, classes, query)
    lines = [
        f"query {query} (**{name}**), positive {found['positive']} "
        f"({_class_name(labels, classes, found['positive'])}); **bold** = false negative",
        "",
        "| sampler | negatives: cosine, true class | false negatives |",
        "|---|---|---|",
    ]
    for strategy, drawn in found["strategies"].items():
        cells = []
        for index, cosine, false in zip(
            drawn["indices"], drawn["cosines"], drawn["false"], strict=True
        ):
            cell = f"{cosine:.2f} {_class_name(labels, classes, index)}"
            cells.append(f"**{cell}**" if false else cell)
        lines.append(f"| {strategy} | {', '.join(cells)} | {sum(drawn['false'])} of {len(cells)} |")
    return "\n".join(lines)


def _class_name(labels: torch.Tensor, classes: list[str], index: int) -> str:
    value = int(labels[int(index)])
    return classes[value] if 0 <= value < len(classes) else "unlabelled"
