"""SimCLR: two views per image, every other view in the (global) batch is a negative."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interlab.augment import AugmentConfig
from interlab.distributed import gather_cat_with_grad
from interlab.losses import nt_xent
from interlab.methods.base import Method, MethodSetup, ProjectionOptions, build_encoder


@dataclass
class SimCLROptions(ProjectionOptions):
    """SimCLR's head: 2048-wide MLP with BN; t = 0.5 as in its CIFAR-10 experiments."""

    proj_hidden: int | None = 2048
    proj_bn: bool = True
    temperature: float = 0.5


class SimCLR(Method):
    name = "simclr"
    options_class = SimCLROptions
    graph_safe = True

    def __init__(
        self,
        setup: MethodSetup,
        options: SimCLROptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        self.encoder = build_encoder(setup, options)

    @property
    def backbone(self) -> torch.nn.Module:
        return self.encoder.backbone

    @property
    def embedder(self) -> torch.nn.Module:
        return self.encoder

    def networks_to_compile(self) -> list[torch.nn.Module]:
        return [self.encoder]

    def warm_start_encoders(self) -> list[torch.nn.Module]:
        return [self.encoder]

    def forward(self, views: list[Tensor], indices: Tensor) -> dict[str, Tensor]:
        # both views in one encoder pass, BN over the 2N views, as SimCLR runs its batch
        z1, z2 = (gather_cat_with_grad(z) for z in self.encoder(torch.cat(views)).chunk(2))
        loss = nt_xent(z1, z2, self.options.temperature)
        return {"loss": loss, "loss_contrast": loss.detach()}
