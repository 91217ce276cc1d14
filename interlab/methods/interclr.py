"""InterCLR (Xie et al., IJCV 2022): MoCo v2 plus an inter-image branch over a clustered bank.

The intra branch is MoCo v2 unchanged. The inter branch takes the same query embedding,
draws its positive from the query's pseudo-label cluster in the memory bank and its
negatives from outside it (random / hard / semi-hard / semi-easy), and scores them with
MarginNCE. The three components the paper studies are switches:

- `online_labels`: labels follow each step's features (True) or only change when the
  whole bank is re-clustered every `recluster_every` epochs (False, DeepCluster-style);
- `neg_sampling`: `random`, `hard`, `semihard` (default) or `semieasy`;
- `margin` / `margin_kind`: the decision boundary (cos or arc; negative = less stringent).

`pseudo_labels` adds two controls beside k-means (`kmeans`): `oracle` takes the true classes
as the pseudo-labels and `shuffled` the true labels permuted across images by the run's seed
(the classes' cluster sizes, no class information). Both need a labelled training set, use
one cluster per class and keep their labels fixed: no online re-assignment, no small-cluster
repair, no offline re-clustering (`online_labels` and `recluster_every` do nothing there).

Sizes left unset scale with the training set (N images, C classes, README "Choosing the
sizes"): 10 clusters per class (N/128 when C is unknown: ImageNet's 10,000), 1.3% of N
negatives per query, a semi-hard pool of 30% of N (at least 3/C, at most half), a minimum
cluster of about 16% of the mean cluster (the release's 20 of 128) and a centroid refresh
whenever about 0.2% of the bank was rewritten (the release's 10 steps of 256 of 1.28M).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from interlab.augment import AugmentConfig
from interlab.cluster import BACKENDS, cluster_scores, kmeans
from interlab.data import ImageSet
from interlab.distributed import gather_cat, world_size
from interlab.features import features_as_trained
from interlab.losses import MARGIN_KINDS, margin_nce
from interlab.memory import MemoryBank
from interlab.methods.base import MethodSetup
from interlab.methods.moco import MoCo, MoCoOptions
from interlab.sampling import (
    NEGATIVE_STRATEGIES,
    false_negative_share,
    sample_negatives,
    sample_positives,
)

PSEUDO_LABELS = ("kmeans", "oracle", "shuffled")
MEAN_CLUSTER_SIZE = 128  # the release's rule, N/128, where the classes are unknown
CLUSTERS_PER_CLASS = 10  # ImageNet's 10,000 clusters for 1,000 classes
NEGATIVES_SHARE = 0.013
POOL_SHARE = 0.30  # three classes' worth on CIFAR-10: "near", mostly other classes
POOL_CLASSES = 3  # the pool spans at least this many classes' worth ...
MAX_POOL_SHARE = 0.5  # ... and at most half the bank (beyond it, nearly random sampling)
MIN_CLUSTER_SHARE = 0.16  # of the mean cluster size: the release's 20 of 128
MIN_CLUSTER_RANGE = (2, 20)  # 2: a cluster can still be split; 20: the release's
REFRESH_BANK_SHARE = 0.002  # bank rewritten between centroid refreshes: 10 x 256 of 1.28M
MAX_CENTROID_INTERVAL = 10  # the release's `centroids_update_interval`


@dataclass
class InterCLROptions(MoCoOptions):
    """MoCo v2 options plus the inter-image branch; None means "scaled to the dataset"."""

    online_labels: bool = True
    neg_sampling: str = "semihard"
    num_clusters: int | None = None  # ~ 10 x C; N / 128 when C is unknown
    mean_cluster_size: int | None = None  # set: num_clusters ~ N / this (the release's 128)
    num_negatives: int | None = None  # ~ 1.3% of N
    pool: int | None = None  # semi-hard / semi-easy pool, ~ pool_share x N
    pool_share: float | None = None  # the pool as a share of N; None: 0.3, in [3/C, 0.5]
    margin: float = -0.5
    margin_kind: str = "cos"
    intra_margin: float = 0.0  # the original's optional margin on the MoCo branch (off)
    intra_margin_kind: str = "cos"
    intra_weight: float = 0.75
    inter_weight: float = 0.25
    inter_temperature: float | None = None  # None: the intra branch's temperature
    inter_warmup_epochs: int = 0  # inter weight 0 for these first epochs
    bank_momentum: float = 1.0  # 1.0 = replace each entry with the newest key
    min_cluster: int | None = None  # ~ 16% of N / K, in [2, 20] (the release's 20)
    centroid_interval: int | None = None  # steps between centroid refreshes (online), in [1, 10]
    recluster_every: int = 10  # epochs between full re-clusterings (offline)
    kmeans_iterations: int = 20
    kmeans_backend: str = "auto"
    exclude_self_positive: bool = False  # the original may draw the query's own entry
    probe_queries: int = 256  # bank entries whose negatives measure every sampler; 0 = off
    # kmeans; or a fixed control: oracle (the true classes), shuffled (them permuted by seed)
    pseudo_labels: str = "kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "neg_sampling": (self.neg_sampling, NEGATIVE_STRATEGIES),
            "margin_kind": (self.margin_kind, MARGIN_KINDS),
            "intra_margin_kind": (self.intra_margin_kind, MARGIN_KINDS),
            "kmeans_backend": (self.kmeans_backend, BACKENDS),
            "pseudo_labels": (self.pseudo_labels, PSEUDO_LABELS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"{key} must be one of {', '.join(valid)}; got {value!r}")
        at_least_one = (
            "num_clusters",
            "mean_cluster_size",
            "num_negatives",
            "pool",
            "min_cluster",
            "centroid_interval",
            "recluster_every",
            "kmeans_iterations",
        )
        for key in at_least_one:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1; got {value}")
        if self.intra_weight < 0 or self.inter_weight < 0:
            raise ValueError("intra_weight and inter_weight must be >= 0")
        if self.inter_temperature is not None and self.inter_temperature <= 0:
            raise ValueError(f"inter_temperature must be > 0; got {self.inter_temperature}")
        if self.inter_warmup_epochs < 0:
            raise ValueError(f"inter_warmup_epochs must be >= 0; got {self.inter_warmup_epochs}")
        if self.pool_share is not None and not 0 < self.pool_share < 1:
            raise ValueError(f"pool_share must be in (0, 1); got {self.pool_share}")
        if self.probe_queries < 0:
            raise ValueError(f"probe_queries must be >= 0; got {self.probe_queries}")

    def scaled_to(
        self, num_samples: int, num_classes: int = 0, batch_size: int = 256
    ) -> dict[str, Any]:
        """Fill the None sizes from the bank size, its number of classes (0 = unknown) and
        the global batch (bank entries rewritten per step); check they fit; return them."""
        sizes = super().scaled_to(num_samples)
        if num_samples < 2:
            raise ValueError("interclr needs the training-set size (num_samples >= 2) for its bank")
        self.scale_clusters(num_samples, num_classes, batch_size)
        if self.num_negatives is None:
            self.num_negatives = max(1, round(NEGATIVES_SHARE * num_samples))
        share = default_pool_share(num_classes) if self.pool_share is None else self.pool_share
        shared_pool = max(self.num_negatives, round(share * num_samples))
        if self.pool is None:
            self.pool = shared_pool
        elif self.pool_share is not None and self.pool != shared_pool:
            raise ValueError(
                f"pool={self.pool} and pool_share={self.pool_share} disagree (the share gives "
                f"{shared_pool} of {num_samples}); set one of them"
            )
        if self.num_clusters * 2 * self.min_cluster > num_samples:
            raise ValueError(
                f"num_clusters={self.num_clusters} with min_cluster={self.min_cluster} needs at "
                f"least {self.num_clusters * 2 * self.min_cluster} images; the bank has {num_samples}"
            )
        for key in ("num_negatives", "pool"):
            if getattr(self, key) >= num_samples:
                raise ValueError(
                    f"{key}={getattr(self, key)} must be smaller than the bank ({num_samples} images)"
                )
        if self.neg_sampling in ("semihard", "semieasy") and self.num_negatives > self.pool:
            raise ValueError(
                f"num_negatives={self.num_negatives} exceeds the {self.neg_sampling} pool={self.pool}"
            )
        return {
            **sizes,
            "num_clusters": self.num_clusters,
            "num_negatives": self.num_negatives,
            "pool": self.pool,
            "min_cluster": self.min_cluster,
            "centroid_interval": self.centroid_interval,
        }

    def scale_clusters(self, num_samples: int, num_classes: int, batch_size: int) -> None:
        """Fill `num_clusters`, `min_cluster` and `centroid_interval` where None. A defaulted
        K leaves room for every cluster to hold 2 x min_cluster, so it fits an explicit
        min_cluster; the defaulted min_cluster then follows the mean cluster size."""
        if self.num_clusters is None:
            floor = self.min_cluster or MIN_CLUSTER_RANGE[0]
            wanted = default_clusters(num_samples, num_classes, self.mean_cluster_size)
            self.num_clusters = max(2, min(wanted, num_samples // (2 * floor)))
        if self.min_cluster is None:
            low, high = MIN_CLUSTER_RANGE
            mean_size = num_samples / self.num_clusters
            self.min_cluster = min(high, max(low, round(MIN_CLUSTER_SHARE * mean_size)))
        if self.centroid_interval is None:
            steps = round(REFRESH_BANK_SHARE * num_samples / max(1, batch_size))
            self.centroid_interval = min(MAX_CENTROID_INTERVAL, max(1, steps))


def default_clusters(num_samples: int, num_classes: int, mean_size: int | None) -> int:
    """10 clusters per class (ImageNet's ratio); N / `mean_size` when that is set, and the
    release's N/128 when the classes are unknown (0)."""
    if mean_size is None and num_classes > 0:
        return CLUSTERS_PER_CLASS * num_classes
    return round(num_samples / (mean_size or MEAN_CLUSTER_SIZE))


def default_pool_share(num_classes: int) -> float:
    """0.3 of the bank, widened to span at least 3 classes' worth (3/C) but never past half
    the bank: a semi-hard pool of near entries, mostly of other classes than the query's."""
    if num_classes <= 0:
        return POOL_SHARE
    return min(MAX_POOL_SHARE, max(POOL_SHARE, POOL_CLASSES / num_classes))


class InterCLR(MoCo):
    """MoCo v2 + memory-bank inter-image contrast with pseudo-label positives."""

    name = "interclr"
    options_class = InterCLROptions
    graph_safe = False  # the bank's online relabelling repairs clusters on the host

    def __init__(
        self,
        setup: MethodSetup,
        options: InterCLROptions,
        augment: AugmentConfig,
    ) -> None:
        one_cluster_per_class(options, setup.num_classes)
        super().__init__(setup, options, augment)
        self.memory = MemoryBank(
            setup.num_samples, options.proj_dim, options.num_clusters, options.bank_momentum
        )
        self.register_buffer("bank_steps", torch.zeros((), dtype=torch.long))
        self.inter_active = options.inter_warmup_epochs == 0
        self.true_labels: Tensor | None = None
        self.train_images: Tensor | None = None
        self._pending: tuple[Tensor, Tensor] | None = None

    def scale_options(self, setup: MethodSetup) -> dict[str, Any]:
        """The sizes also follow the class count and the global batch: every rank's batch
        rewrites the shared bank, so the centroid refresh period counts all of them."""
        batch = setup.batch_size * world_size()
        return self.options.scaled_to(setup.num_samples, setup.num_classes, batch)

    # ---- bank set-up and re-clustering ------------------------------------------------------
    def on_fit_start(self, train_set: ImageSet) -> None:
        if len(train_set) != self.memory.size:
            raise ValueError(
                f"the bank holds {self.memory.size} entries; the training set has {len(train_set)}"
            )
        self.train_images = train_set.images
        self.true_labels = None
        if train_set.has_labels:  # where the bank is: every step indexes it with its indices
            self.true_labels = train_set.labels.to(self.memory.features.device)
        if self.label_control:
            self.check_control_labels(train_set)
        if not bool(self.memory.ready):  # a resumed run keeps its checkpointed bank
            self.fill_bank()

    @property
    def label_control(self) -> bool:
        """The pseudo-labels are a fixed control (oracle / shuffled), not k-means'."""
        return self.options.pseudo_labels != "kmeans"

    @property
    def relabels_online(self) -> bool:
        """Each step re-assigns labels and repairs clusters (k-means labels, online mode)."""
        return self.options.online_labels and not self.label_control

    def fill_bank(self) -> None:
        """The bank's first features and labels: the training set's embeddings, labelled by
        k-means or by a control's fixed labels (whose centroids are the class means)."""
        if self.label_control:
            self.memory.initialize(self.embed_training_set(), self.control_labels())
            return
        features, labels = self.cluster_training_set(seed=self.setup.seed)
        self.memory.initialize(features, labels)
        if self.options.online_labels:  # an untrained net's k-means can be very unbalanced
            self.memory.fix_small_clusters(self.options.min_cluster)
            self.memory.refresh_centroids()

    def check_control_labels(self, train_set: ImageSet) -> None:
        """A control needs every training image's class, and one bank cluster per class."""
        control = f"pseudo_labels={self.options.pseudo_labels!r}"
        if self.true_labels is None or bool((self.true_labels < 0).any()):
            raise ValueError(
                f"{control} needs a training set with every image labelled; "
                f"{train_set.name or 'this one'} is not"
            )
        if self.memory.num_clusters != train_set.num_classes:
            raise ValueError(
                f"{control} needs one cluster per class ({train_set.num_classes}); the bank "
                f"has {self.memory.num_clusters} (build the method with the data's num_classes)"
            )

    def control_labels(self) -> Tensor:
        """The control's fixed labels: the true classes (oracle), or the same labels permuted
        across images by a generator seeded with the run's seed (shuffled)."""
        if self.options.pseudo_labels == "oracle":
            return self.true_labels.clone()
        generator = torch.Generator().manual_seed(self.setup.seed)
        order = torch.randperm(len(self.true_labels), generator=generator)
        return self.true_labels[order.to(self.true_labels.device)]

    @torch.no_grad()
    def embed_training_set(self) -> Tensor:
        """Projection-head embeddings (L2-normalised) of every un-augmented training image."""
        return features_as_trained(self, self.encoder, self.train_images)

    def cluster_training_set(self, seed: int) -> tuple[Tensor, Tensor]:
        features = self.embed_training_set()
        result = kmeans(
            features,
            self.options.num_clusters,
            iterations=self.options.kmeans_iterations,
            seed=seed,
            backend=self.options.kmeans_backend,
        )
        return features, result.labels.to(features.device)

    def on_epoch_start(self, epoch: int) -> None:
        self.inter_active = epoch >= self.options.inter_warmup_epochs

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        offline = not self.options.online_labels
        if self.label_control:  # labels fixed; centroids stay the class means of the bank
            self.memory.refresh_centroids()
        elif offline and epoch % self.options.recluster_every == 0 and epoch < self.setup.epochs:
            _, labels = self.cluster_training_set(seed=self.setup.seed + epoch)
            self.memory.assign_all(labels)  # labels only: the bank keeps its features
            self.memory.refresh_centroids()
        return {**self.bank_cluster_metrics(), **self.sampler_false_negatives()}

    def snapshot(self) -> dict[str, np.ndarray]:
        """The bank as explorers replay it: float16 features, int32 labels, centroids."""
        return {
            "features": self.memory.features.half().cpu().numpy(),
            "labels": self.memory.labels.int().cpu().numpy(),
            "centroids": self.memory.centroids.float().cpu().numpy(),
        }

    def bank_cluster_metrics(self) -> dict[str, float]:
        """Cluster sizes and, when true labels exist, NMI / ARI / purity of the pseudo-labels."""
        sizes = self.memory.cluster_sizes().float()
        metrics = {
            "cluster_size_min": sizes.min().item(),
            "cluster_size_median": sizes.median().item(),
            "cluster_size_max": sizes.max().item(),
        }
        if self.true_labels is not None:
            metrics.update(cluster_scores(self.true_labels, self.memory.labels))
        return metrics

    @torch.no_grad()
    def sampler_false_negatives(self) -> dict[str, float]:
        """Every sampler's false-negative rate on the bank, whichever one trains (`fnr_<name>`).

        A fixed set of `probe_queries` bank entries (their own features as queries) draws
        negatives with each strategy and the run's sizes, so one run shows what study 2
        compares. Its generator is its own: the training stream is untouched.
        """
        count = min(self.options.probe_queries, self.memory.size)
        if self.true_labels is None or count == 0:
            return {}
        device = self.memory.features.device
        generator = torch.Generator(device=device).manual_seed(self.setup.seed)
        indices = torch.randperm(self.memory.size, generator=generator, device=device)[:count]
        queries = self.memory.features[indices]
        o = self.options
        metrics = {}
        for strategy in NEGATIVE_STRATEGIES:
            drawn = sample_negatives(
                self.memory, queries, indices, strategy, o.num_negatives, o.pool, generator
            )
            metrics[f"fnr_{strategy}"] = float(
                false_negative_share(self.true_labels, indices, drawn)
            )
        return metrics

    # ---- one step ----------------------------------------------------------------------------
    def contrast(self, queries: Tensor, keys: Tensor) -> Tensor:
        """MarginNCE against the queue, every direction summed (see `MoCo.contrast`)."""
        queue = self.queue.clone().detach()
        o = self.options
        loss = margin_nce(queries, keys, queue, o.temperature, o.intra_margin, o.intra_margin_kind)
        return loss * self.directions

    def inter_contrast(self, query: Tensor, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """MarginNCE against a cluster-mate and sampled non-cluster bank entries.

        Returns the loss and detached figures to log: the mean cosine to the positives and
        to the negatives and their gap (`cosine_figures`) and, when true labels exist, the
        share of negatives that are in fact the query's class (`false_negative_rate`).
        """
        with torch.autocast(query.device.type, enabled=False):  # bank ranks and logits in fp32
            return self._inter_contrast_fp32(query.float(), indices)

    def _inter_contrast_fp32(
        self, query: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        with torch.no_grad():
            positives = sample_positives(
                self.memory, indices, self.generator, o.exclude_self_positive
            )
            negatives = sample_negatives(
                self.memory, query, indices, o.neg_sampling, o.num_negatives, o.pool, self.generator
            )
        temperature = o.inter_temperature or o.temperature
        positive_rows = self.memory.features[positives]
        negative_rows = self.memory.features[negatives]
        loss = margin_nce(query, positive_rows, negative_rows, temperature, o.margin, o.margin_kind)
        figures = cosine_figures(query, positive_rows, negative_rows)
        false_negatives = self.false_negative_rate(indices, negatives)
        if false_negatives is not None:
            figures["false_negative_rate"] = false_negatives
        return loss, figures

    def false_negative_rate(self, indices: Tensor, negatives: Tensor) -> Tensor | None:
        """Share of sampled negatives whose true class is the query's (known labels only)."""
        if self.true_labels is None:
            return None
        return false_negative_share(self.true_labels, indices, negatives)

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        queries, keys = self.queries_and_keys(views)
        # Symmetric runs sum both directions, as the MoCo recipe does.
        intra = self.contrast(queries, keys)
        outputs: dict[str, Tensor] = {"loss_intra": intra.detach()}
        # During the inter warm-up the intra branch alone carries full weight (as the original).
        loss = self.options.intra_weight * intra if self.inter_active else intra
        if self.inter_active:
            inter, figures = self.inter_contrast(queries, indices.repeat(self.directions))
            inter = inter * self.directions
            loss = loss + self.options.inter_weight * inter
            outputs["loss_inter"] = inter.detach()
            outputs.update(figures)
        self.enqueue(keys)
        self._pending = (indices, keys[: len(indices)])  # the bank takes view 2's key (k2)
        outputs["loss"] = loss
        return outputs

    def after_step(self, progress: float) -> dict[str, Tensor]:
        super().after_step(progress)
        return self.update_bank()

    @torch.no_grad()
    def update_bank(self) -> dict[str, Tensor]:
        """Write every rank's keys into the bank, then maintain the labels (online mode).

        Small clusters are repaired before the centroid refresh (the original refreshes
        first), so after a refresh step every centroid is exactly its members' mean.
        """
        indices, keys = self._pending
        self._pending = None
        indices, keys = gather_cat(indices), gather_cat(keys.float())
        online = self.relabels_online
        changed = self.memory.update(indices, keys, relabel=online)
        self.bank_steps += 1
        refilled = 0
        if online:
            refilled = self.memory.fix_small_clusters(self.options.min_cluster)
            refresh = int(self.bank_steps) % self.options.centroid_interval == 0
            if refresh:  # the same step on every rank, so the broadcast is collective
                self.memory.refresh_centroids()
                self.memory.agree_across_ranks()
        return {
            "label_change_ratio": changed,
            "clusters_refilled": torch.tensor(float(refilled), device=changed.device),
        }


def one_cluster_per_class(options: InterCLROptions, num_classes: int) -> None:
    """The class-label controls cluster by class: `num_clusters` becomes the number of classes
    (whatever was set; recorded as used). Unknown classes (0) leave it to the checkpoint's
    recorded value or the data-size default, and `on_fit_start` checks it."""
    if options.pseudo_labels != "kmeans" and num_classes > 0:
        options.num_clusters = num_classes


@torch.no_grad()
def cosine_figures(query: Tensor, positives: Tensor, negatives: Tensor) -> dict[str, Tensor]:
    """Mean cosine of the queries (B, D) to their positives (B, D) and to their negatives
    (B, n, D), and the gap between them: how far apart the inter branch's pairs sit. Device
    tensors, so a step reads nothing back to the host; bank rows are unit vectors."""
    query = F.normalize(query.float(), dim=1)
    positive = (query * positives).sum(dim=1).mean()
    negative = torch.einsum("bd,bnd->bn", query, negatives).mean()
    return {"positive_cosine": positive, "negative_cosine": negative, "pn_gap": positive - negative}
