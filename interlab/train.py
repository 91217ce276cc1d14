"""One training loop for every method: GPU-resident data, per-step schedule, resumable runs.

The loop lives here; the run folder's files are `interlab.run_folder`'s and checkpoints
(contents, RNG streams, rebuilding a trained method) `interlab.checkpoint`'s. `load_trained`
and `read_metrics` are imported here too, as the training API's readers.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from interlab import distributed as dist_utils
from interlab.checkpoint import (
    load_trained,
    read_checkpoint,
    restore_rng,
    rng_state,
    save_atomically,
    warm_start,
)
from interlab.config import TrainConfig
from interlab.data import ImageSet, load_dataset
from interlab.data.shards import ShardSet
from interlab.devices import (
    configure_backends,
    resolve_auto_backbone,
    resolve_device,
    run_precision,
)
from interlab.evaluate import evaluate_method
from interlab.methods import build_method
from interlab.methods.base import Method
from interlab.optim import build_optimizer, cosine_lr, set_lr
from interlab.run_folder import (
    CHECKPOINT_NAME,
    append_metrics,
    read_metrics,
    write_config,
    write_metrics,
)
from interlab.run_lock import RunLock
from interlab.snapshots import save_snapshot
from interlab.step_graph import GraphedStep

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "load_trained", "read_metrics", "train"]


# What a checkpoint's optimiser state must not change: the kernels this run steps with.
OPTIMIZER_KERNEL_KEYS = ("fused", "foreach")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    out: Path
    method: Method
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


def load_train_data(
    config: TrainConfig, device: torch.device
) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """Training images (on `device`) and, when labels exist, the kNN memory and test sets."""
    train_set = load_dataset(config.data, "train", root=config.data_root).to(device)
    if not train_set.has_labels:
        return train_set, None, None
    try:
        test_set = load_dataset(config.data, "test", root=config.data_root).to(device)
    except (ValueError, FileNotFoundError):  # no test split (a prepared folder without val/)
        return train_set, None, None
    return train_set, train_set, test_set


class Trainer:
    """Owns the method, its optimiser, RNGs and run folder; `fit` trains and evaluates."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        dist_utils.init_from_environment(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        configure_backends(self.device, config.deterministic)
        self.precision = run_precision(config, self.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.out = Path(config.out)
        self.progress = progress and dist_utils.is_main_process()
        picked = resolve_auto_backbone(config)
        if picked and dist_utils.is_main_process():
            print(picked, flush=True)
        self.train_set, self.memory_set, self.test_set = load_train_data(config, self.device)
        self.steps_per_epoch = len(self.train_set) // self.world // config.batch_size
        if config.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the {len(self.train_set) // self.world} "
                f"images each of {self.world} process(es) sees per epoch"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        torch.manual_seed(config.seed)
        self.method = self._build_method()
        self.model = self._wrap_distributed(self.method)
        self.optimizer = build_optimizer(
            self.method, config.optimizer, self._lr_of_this_run(config.lr), config.sgd_momentum,
            config.weight_decay,
        )  # fmt: skip
        self.order_generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(
            config.seed * 1000 + 1 + self.rank
        )
        self.method.generator = self.aug_generator
        self.graphed = self._graphed_step() if config.cuda_graph else None
        self.epoch = 0
        self.step = 0
        self.steps_this_process = 0
        self.metrics: list[dict[str, Any]] = []

    # ---- set-up -------------------------------------------------------------------------
    def _stream_at(self, method: Method, size: int) -> None:
        """Shards: the method must take full-size batches; evaluation crops at the run's size."""
        problem = method.shard_problem(self.train_set)
        if problem is not None:
            raise ValueError(
                f"method {method.name!r} cannot train from {self.train_set.name}: {problem}"
            )
        for image_set in (self.train_set, self.memory_set, self.test_set):
            if image_set is not None:
                image_set.eval_size = size

    def _build_method(self) -> Method:
        augment = self.config.augment_config(self.train_set.image_size)
        sizes = len(self.train_set), self.train_set.num_classes
        method = build_method(self.config, augment, *sizes).to(self.device)
        if isinstance(self.train_set, ShardSet):
            self._stream_at(method, augment.size)
        self.config.method_options.update(method.resolved_options())  # config.yaml records them
        if self.world > 1 and self.device.type == "cuda":
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        method = self.precision.prepare(method)
        method.precision = self.precision
        if self.precision.compile:
            method.compile_networks()
        return method

    def _lr_of_this_run(self, value: float) -> float | Tensor:
        """A graphed step reads its learning rate from the device: a tensor, filled per step;
        an eager step takes a plain float."""
        if not self.config.cuda_graph:
            return value
        return torch.tensor(value, dtype=torch.float32, device=self.device)

    def _optimizer_as_this_run_keeps_it(self, kernels: list[dict[str, Any]]) -> None:
        """A checkpoint brings its own optimiser settings: the kernels it stepped with (a CPU
        run's multi-tensor SGD, an older run's default) and its learning-rate objects (a float,
        or a graphed run's tensor). Put back this run's `kernels`, and make the rate this
        run's kind: a graphed step needs fused SGD reading a tensor it fills (a float would
        be baked into the graph; multi-tensor SGD reads a tensor rate on the host)."""
        for group, kernel in zip(self.optimizer.param_groups, kernels, strict=True):
            group.update(kernel, lr=self._lr_of_this_run(float(group["lr"])))

    def _graphed_step(self) -> GraphedStep:
        """The step body captured as a CUDA graph; refused, naming why, where it cannot be."""
        problems = []
        if self.device.type != "cuda":
            problems.append(f"it needs a CUDA device (this run is on {self.device})")
        if not self.method.graph_safe:
            problems.append(f"method {self.method.name!r} is not graph-safe (host syncs or "
                            "schedules read on the host in its step)")  # fmt: skip
        if self.config.optimizer != "sgd":
            problems.append(f"it needs optimizer sgd (fused), not {self.config.optimizer!r}")
        if self.world > 1:
            problems.append("it runs in one process only")
        if isinstance(self.train_set, ShardSet):
            problems.append("streamed shards decode on the host each step")
        if problems:
            raise ValueError("cuda_graph=true cannot be used: " + "; ".join(problems))
        return GraphedStep(
            self.step_body, self.config.batch_size, self.device, [self.aug_generator]
        )

    def _wrap_distributed(self, method: Method) -> nn.Module:
        if self.world == 1:
            return method
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            method, device_ids=device_ids, broadcast_buffers=False
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' autocast region under the run's precision policy."""
        return self.precision.autocast()

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def state(self, augment_per_rank: Tensor | None = None) -> dict[str, Any]:
        """What a checkpoint holds; `augment_per_rank` is every rank's augmentation-generator
        state (see `gather_augment_states`), so each rank resumes its own stream."""
        return {
            "config": self.config.to_dict(),
            "image_size": self.train_set.image_size,
            "num_samples": len(self.train_set),
            "epoch": self.epoch,
            "step": self.step,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.order_generator, self.aug_generator, augment_per_rank),
        }

    def gather_augment_states(self) -> Tensor:
        """(world, state size) uint8: every rank's augmentation-generator state, in rank order."""
        state = self.aug_generator.get_state().unsqueeze(0)
        return dist_utils.gather_cat(state.to(self.device)).cpu()

    def save_checkpoint(self) -> None:
        """Called by every rank at the same point (the gather is collective); rank 0 writes."""
        augment_per_rank = self.gather_augment_states()
        if not dist_utils.is_main_process():
            return
        save_atomically(self.checkpoint_path, self.state(augment_per_rank))

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        self.method.load_state_dict(state["method"])
        kernels = [
            {k: g.get(k) for k in OPTIMIZER_KERNEL_KEYS} for g in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(state["optimizer"])
        self._optimizer_as_this_run_keeps_it(kernels)
        self.epoch, self.step = state["epoch"], state["step"]
        reseed = self.config.seed * 1000 + 1 + self.rank + 7919 * self.epoch
        restore_rng(
            state["rng"], self.order_generator, self.aug_generator, self.rank, self.world, reseed
        )
        self.metrics = [m for m in read_metrics(self.out) if m["epoch"] <= self.epoch]

    # ---- the loop -----------------------------------------------------------------------------
    def epoch_order(self) -> Tensor:
        """This rank's image indices for one epoch: a shared permutation, split by rank."""
        order = torch.randperm(
            len(self.train_set), generator=self.order_generator, device=self.device
        )[self.rank :: self.world]
        if isinstance(self.train_set, ShardSet):  # the epoch's one host copy: steps need no sync
            self.train_set.follow_order(order)
        return order

    def train_step(self, indices: Tensor) -> dict[str, Tensor]:
        """One optimiser step on items `indices`: eager, or a replay of the captured graph.
        The first step of a compiled run says that it compiles, and how long it took."""
        set_lr(self.optimizer, self.current_lr())
        step = self.graphed if self.graphed is not None else self.step_body
        if self.steps_this_process == 0 and self.precision.compile:
            outputs = self._first_compiled_step(step, indices)
        else:
            outputs = step(indices)
        self.step += 1
        self.steps_this_process += 1
        return outputs

    def step_body(self, indices: Tensor) -> dict[str, Tensor]:
        """Everything a step runs on the device: views, losses, backward, update, momentum
        updates. No host syncs (a graphed step captures it as it is)."""
        views = [self.precision.images(v) for v in self.method.views_for(self.train_set, indices)]
        with self.precision.autocast(cache=self.graphed is None):
            outputs = self.model(views, indices)
        self.optimizer.zero_grad(set_to_none=True)
        outputs["loss"].backward()
        self.method.before_optimizer_step()
        self.optimizer.step()
        logged = self.method.after_step((self.step + 1) / self.total_steps)
        return {**outputs, **(logged or {})}

    def _first_compiled_step(self, step, indices: Tensor) -> dict[str, Tensor]:
        say = dist_utils.is_main_process()
        if say:
            print("compiling the training step's networks (torch.compile) ...", flush=True)
        start = time.perf_counter()
        outputs = step(indices)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if say:
            print(f"compiled in {time.perf_counter() - start:.1f} s", flush=True)
        return outputs

    def current_lr(self) -> float:
        warmup = round(self.config.warmup_epochs * self.steps_per_epoch)
        return cosine_lr(self.step, self.total_steps, warmup, self.config.lr, self.config.min_lr)

    def check_finite(self, loss_sum: Tensor) -> None:
        if not torch.isfinite(loss_sum):
            kept = self.checkpoint_path if self.checkpoint_path.exists() else "none written yet"
            raise NonFiniteLossError(
                f"loss became {loss_sum.item()} in epoch {self.epoch + 1} (step {self.step}); "
                f"stopping. Last good checkpoint: {kept}. Lower lr (now {self.current_lr():.4g}) "
                "or check the data."
            )

    def train_epoch(self, bar: tqdm | None) -> dict[str, float]:
        self.model.train()
        self.method.on_epoch_start(self.epoch)
        order = self.epoch_order()
        batch = self.config.batch_size
        sums: dict[str, Tensor] = {}
        start = time.perf_counter()
        streamed = isinstance(self.train_set, ShardSet)
        for i in range(self.steps_per_epoch):
            if streamed and i + 1 < self.steps_per_epoch:  # decode the next batch meanwhile
                upcoming = self.method.rows_to_decode(order[(i + 1) * batch : (i + 2) * batch])
                if upcoming is not None:
                    self.train_set.prefetch(upcoming)
            outputs = self.train_step(order[i * batch : (i + 1) * batch])
            for key, value in outputs.items():
                sums[key] = sums.get(key, 0) + value.detach().float()
            if (i + 1) % self.config.log_every == 0 or i + 1 == self.steps_per_epoch:
                self.check_finite(sums["loss"])
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{sums['loss'].item() / (i + 1):.4f}", lr=f"{self.current_lr():.3g}"
                    )
            if bar is not None:
                bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        averages = {key: (value / self.steps_per_epoch).item() for key, value in sums.items()}
        averages["lr"] = self.current_lr()
        averages["epoch_time_s"] = seconds
        averages["images_per_s"] = self.steps_per_epoch * batch * self.world / seconds
        return averages

    def knn_accuracy(self) -> dict[str, float]:
        """`knn_top1` (backbone), `knn_top1_head` (embedding) and any extra protocols; {}
        when the data has no labelled test split."""
        if self.memory_set is None or self.test_set is None:
            return {}
        return evaluate_method(
            self.method,
            self.memory_set,
            self.test_set,
            k=self.config.knn_k,
            temperature=self.config.knn_temperature,
            protocols=self.config.knn_protocols,
            device=self.device,
        )

    def should_evaluate(self) -> bool:
        every = self.config.eval_every
        return self.epoch == self.config.epochs or (every > 0 and self.epoch % every == 0)

    def should_checkpoint(self) -> bool:
        return self.epoch == self.config.epochs or self.epoch % self.config.checkpoint_every == 0

    def end_epoch(self, averages: dict[str, float]) -> dict[str, Any]:
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, **averages}
        record.update(self.method.on_epoch_end(self.epoch))
        dist_utils.broadcast_buffers(self.method)  # ranks agree on BN statistics, queues, banks
        if self.should_evaluate():
            record.update(self.knn_accuracy())
        self.metrics.append(record)
        if dist_utils.is_main_process():
            append_metrics(self.out, record)
        if self.should_checkpoint():
            self.save_checkpoint()
        if self.should_snapshot():
            self.save_snapshot()
        return record

    def should_snapshot(self) -> bool:
        every = self.config.snapshot_every
        return every > 0 and (self.epoch % every == 0 or self.epoch == self.config.epochs)

    def save_snapshot(self) -> None:
        arrays = self.method.snapshot()
        if arrays and dist_utils.is_main_process():
            save_snapshot(self.out, self.epoch, arrays)

    def start_run_folder(self, resume: bool) -> None:
        if dist_utils.is_main_process():
            self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            if self.progress and dist_utils.is_main_process():
                print(f"resuming {self.out} after epoch {self.epoch}", flush=True)
        if dist_utils.is_main_process():
            write_metrics(self.out, self.metrics)  # drops epochs after the checkpoint
            write_config(self.out, self.config.to_dict())

    def load_init_from(self) -> None:
        """A fresh run's query encoder (and its momentum copies) from `init_from`'s checkpoint;
        every rank reads the same file, so the ranks start equal."""
        file = warm_start(self.method, self.config.init_from, self.device)
        if self.progress and dist_utils.is_main_process():
            print(f"query encoder initialised from {file}", flush=True)

    def start(self, resume: bool) -> None:
        """Everything before the first step: the run folder (resuming its checkpoint when
        asked), a fresh run's warm start, then the method's preparation. The warm start
        comes first so InterCLR's initial clustering sees the warm encoder's features; a
        resumed run (step > 0) keeps its own weights."""
        self.start_run_folder(resume)
        if self.config.init_from is not None and self.step == 0:
            self.load_init_from()
        self.start_method()

    def start_method(self) -> None:
        """Let the method prepare (e.g. cluster the bank), then give every rank rank 0's buffers."""
        self.method.on_fit_start(self.train_set)
        dist_utils.broadcast_buffers(self.method)
        if self.epoch == 0 and self.config.snapshot_every > 0:
            self.save_snapshot()  # the initial clustering, before any step

    def fit(self, resume: bool = True, stop_after_epochs: int | None = None) -> TrainResult:
        """Train to `config.epochs` (resuming from the run folder's checkpoint when present).

        `stop_after_epochs` ends this call early, after a checkpoint, so a long run can be
        sliced into time-limited calls that each resume where the last one stopped. The run
        folder is locked meanwhile (rank 0): a second writer stops at once, naming this one.
        """
        lock = RunLock(self.out).acquire() if dist_utils.is_main_process() else None
        try:
            return self._fit(resume, stop_after_epochs)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, resume: bool, stop_after_epochs: int | None) -> TrainResult:
        self.start(resume)
        last_epoch = self.config.epochs
        if stop_after_epochs is not None:
            last_epoch = min(last_epoch, self.epoch + stop_after_epochs)
        bar = None
        if self.progress:
            bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
        try:
            while self.epoch < last_epoch:
                if bar is not None:
                    bar.set_description(f"epoch {self.epoch + 1}/{self.config.epochs}")
                averages = self.train_epoch(bar)
                self.epoch += 1
                record = self.end_epoch(averages)
                if bar is not None and "knn_top1" in record:
                    bar.write(f"epoch {self.epoch}: knn_top1 {record['knn_top1']:.4f}")
            if self.epoch == last_epoch and not self.should_checkpoint():
                self.save_checkpoint()  # a sliced run always leaves a checkpoint to resume from
        finally:
            if bar is not None:
                bar.close()
        return TrainResult(self.out, self.method, self.metrics)


def train(
    config: TrainConfig,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `config` into `config.out`; see `Trainer.fit`."""
    return Trainer(config, progress=progress).fit(
        resume=resume, stop_after_epochs=stop_after_epochs
    )
