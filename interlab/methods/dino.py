"""DINO (Caron et al., ICCV 2021) with a ResNet: self-distillation from an EMA teacher, multi-crop.

The student sees 2 global crops (data size) and `n_local` small crops; the EMA teacher sees
the 2 global ones. Targets are the teacher's prototype scores, centred (an EMA of their batch
mean, against collapse to one prototype) and sharpened (low temperature, against a uniform
output); the loss is the cross-entropy over every (teacher global i, student view v != i)
pair. SCFS (`scfs.py`) subclasses this and adds per-layer terms through `build_student`,
`backbone_pass` and `losses`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from interlab.augment import AugmentConfig, multi_crop
from interlab.distill import (
    DINOHead,
    HeadEmbedding,
    clip_per_parameter,
    cosine_momentum,
    cross_pairs,
    ema_center,
    scaled_warmup,
    sharpen,
    soft_cross_entropy,
    teacher_temperature,
)
from interlab.methods.base import Method, MethodSetup
from interlab.nets import make_momentum_copy, momentum_update

N_GLOBAL = 2  # global crops; the teacher sees only these


@dataclass
class DINOOptions:
    """CIFAR-sized DINO defaults (4,096 prototypes instead of ImageNet's 65,536; 16 px locals)."""

    out_dim: int = 4096  # prototypes
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    teacher_temp_warmup_epochs: int = 30  # capped at 30% of training (see DINO)
    teacher_momentum: float = 0.996  # cosine schedule up to 1 over training
    center_momentum: float = 0.9
    n_local: int = 6
    local_size: int = 16
    global_scale: tuple[float, float] = (0.3, 1.0)  # replaces aug.scale for the global crops
    local_scale: tuple[float, float] = (0.08, 0.3)
    clip_grad: float = 3.0  # per-parameter gradient norm cap; 0 = off
    freeze_last_layer_epochs: int = 1  # the prototype layer's gradients are dropped meanwhile

    def __post_init__(self) -> None:
        at_least_one = ("out_dim", "head_hidden", "head_bottleneck", "head_layers", "local_size")
        for key in at_least_one:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        for key in ("n_local", "teacher_temp_warmup_epochs", "freeze_last_layer_epochs"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0; got {getattr(self, key)}")
        temperatures = ("student_temperature", "teacher_temperature", "warmup_teacher_temperature")
        for key in temperatures:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0; got {getattr(self, key)}")
        for key in ("teacher_momentum", "center_momentum"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1]; got {getattr(self, key)}")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0 (0 = off); got {self.clip_grad}")
        for key in ("global_scale", "local_scale"):
            low, high = getattr(self, key)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(
                    f"{key} must be (low, high) with 0 < low <= high <= 1; got {(low, high)}"
                )


@dataclass
class NetworkPass:
    """One network's outputs for a list of views (global views first)."""

    logits: Tensor  # (V, B, out_dim) prototype scores before the temperature
    global_maps: dict[int, Tensor]  # layer -> (N_GLOBAL * B, C, H, W); empty for plain DINO
    local_maps: dict[int, Tensor]  # layer -> (n_local * B, C, h, w)


class DINO(Method):
    """Student trained to match its EMA teacher's centred, sharpened prototype distribution.

    The teacher temperature rises linearly from `warmup_teacher_temperature` to
    `teacher_temperature` over `teacher_temp_warmup_epochs` epochs, but never over more than
    30% of the run: a 10-epoch run warms up over min(30, round(0.3 * 10)) = 3 epochs, so short
    runs still reach the final temperature. The evaluated `backbone` is the teacher's.
    """

    name = "dino"
    options_class = DINOOptions

    def __init__(
        self,
        setup: MethodSetup,
        options: DINOOptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        if "scale" in setup.augment_keys_set:
            raise ValueError(
                f"{self.name} sets its crop areas with global_scale / local_scale; "
                f"aug.scale={list(augment.scale)} would be ignored, so it is refused"
            )
        self.global_augment = dataclasses.replace(augment, scale=options.global_scale)
        self.local_augment = dataclasses.replace(
            augment, size=options.local_size, scale=options.local_scale
        )
        self.student = self.build_student()
        self.teacher = make_momentum_copy(self.student)
        self.register_buffer("center", torch.zeros(1, options.out_dim))
        self.warmup_epochs = scaled_warmup(options.teacher_temp_warmup_epochs, setup.epochs)
        self.on_epoch_start(0)

    def build_student(self) -> nn.ModuleDict:
        """Backbone + DINO head; subclasses add modules here so the teacher copy holds them too."""
        o = self.options
        backbone = self.setup.build_backbone()
        head = DINOHead(
            backbone.feature_dim, o.out_dim, o.head_hidden, o.head_bottleneck, o.head_layers
        )
        return nn.ModuleDict({"backbone": backbone, "head": head})

    @property
    def backbone(self) -> nn.Module:
        return self.teacher["backbone"]

    @property
    def embedder(self) -> nn.Module:
        """The teacher's backbone and head up to its L2-normalised bottleneck."""
        return HeadEmbedding(self.teacher["backbone"], self.teacher["head"])

    def networks_to_compile(self) -> list[nn.Module]:
        return [net[part] for net in (self.student, self.teacher) for part in ("backbone", "head")]

    def make_views(self, images: Tensor, sizes: Tensor | None = None) -> list[Tensor]:
        """2 global crops at the data size, then `n_local` local crops at `local_size`."""
        o = self.options
        return multi_crop(
            images, self.global_augment, N_GLOBAL, self.local_augment, o.n_local, self.generator,
            sizes,
        )  # fmt: skip

    def backbone_pass(
        self, backbone: nn.Module, images: Tensor
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Pooled features (B, D) and the feature maps a subclass needs (none here)."""
        return backbone(images), {}

    def run(self, network: nn.ModuleDict, views: list[Tensor]) -> NetworkPass:
        """One backbone pass per crop size (globals, then locals), one head pass for all."""
        batch = len(views[0])
        pooled, maps = [], []
        for group in (views[:N_GLOBAL], views[N_GLOBAL:]):
            if group:
                features, group_maps = self.backbone_pass(network["backbone"], torch.cat(group))
                pooled.append(features)
                maps.append(group_maps)
        logits = network["head"](torch.cat(pooled)).view(len(views), batch, -1)
        return NetworkPass(logits, maps[0], maps[1] if len(maps) > 1 else {})

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        student = self.run(self.student, views)
        with torch.no_grad():
            teacher = self.run(self.teacher, views[:N_GLOBAL])
        return self.losses(student, teacher)

    def losses(self, student: NetworkPass, teacher: NetworkPass) -> dict[str, Tensor]:
        """{"loss", "loss_dino"}; the centre moves after the targets used the old one (DINO)."""
        targets = sharpen(teacher.logits, self.teacher_temp, self.center)
        pairs = cross_pairs(N_GLOBAL, len(student.logits), student.logits.device)
        loss = soft_cross_entropy(targets, student.logits, self.options.student_temperature, pairs)
        self.center.copy_(ema_center(self.center, teacher.logits, self.options.center_momentum))
        return {"loss": loss, "loss_dino": loss.detach()}

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen for the first `freeze_last_layer_epochs` epochs."""
        return [self.student["head"].last_layer.weight]

    def before_optimizer_step(self) -> None:
        if self.options.clip_grad > 0:
            clip_per_parameter(self.student.parameters(), self.options.clip_grad)
        if self.epoch < self.options.freeze_last_layer_epochs:
            for parameter in self.last_layer_parameters():
                parameter.grad = None  # SGD then skips it: no step, no weight decay

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        o = self.options
        self.teacher_temp = teacher_temperature(
            epoch, self.warmup_epochs, o.warmup_teacher_temperature, o.teacher_temperature
        )

    def after_step(self, progress: float) -> dict[str, Tensor]:
        momentum = cosine_momentum(progress, self.options.teacher_momentum)
        momentum_update(self.teacher, self.student, momentum)
        return {"teacher_momentum": torch.tensor(momentum)}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {"teacher_temperature": self.teacher_temp}
