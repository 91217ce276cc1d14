"""SCFS (Song et al., ICCV 2023): DINO plus per-layer heads and a local-to-global feature search.

For each layer l in `layers`, shallow heads P_l (a residual bottleneck block on the map, GAP,
BN-MLP, unit output) add two terms to DINO's loss, each with the DINO cross-entropy:

- global-to-global: the teacher's P_l on global view i (centred with its own per-layer
  centre) is the target of the student's P_l on the other global view;
- feature search, local-to-global: each local crop's pooled student map at layer l (detached,
  L2-normalised) is the query; its cosine with every position of the teacher's map of global
  view 1 is a weight map A in [0, 1] (no softmax: post-ReLU features). The teacher's P_l on
  A * map (the un-normalised map re-weighted position by position) is that crop's target,
  uncentred; the student's P_l on the crop's whole map predicts it.

Total = L_dino + sum_l (L_glob,l + L_fs,l) / 2. The ablation ladder is reachable by options:
`per_layer_heads=false` is plain DINO; `per_layer_heads=true, search=false` keeps both
per-layer terms but with all-ones weights (every crop's target is the teacher's P_l on the
whole global view 1, uncentred), so it differs from SCFS in the search alone.

`target=byol` is NOT the paper's: the per-layer terms become BYOL's 2 - 2 cos between the
student's and the teacher's unit outputs (no softmax, no centre); the DINO term is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from interlab.augment import Augment, AugmentConfig, to_float
from interlab.distill import (
    ShallowHead,
    cosine_pair_loss,
    cross_pairs,
    ema_center,
    matched_pairs,
    reweight,
    search_weights,
    sharpen,
    soft_cross_entropy,
)
from interlab.methods.base import MethodSetup
from interlab.methods.dino import DINO, N_GLOBAL, DINOOptions, NetworkPass
from interlab.nets import stage_maps, stage_modules

TARGETS = ("dino", "byol")
LAST_STAGE = 4  # the stage whose pooled map is the backbone's feature vector


@dataclass
class SCFSOptions(DINOOptions):
    """DINO's options plus the per-layer heads (CIFAR sizes: hidden 1024, output 256)."""

    layers: tuple[int, ...] = (2, 3, 4)
    per_layer_heads: bool = True  # false: plain DINO (first rung of the ladder)
    search: bool = True  # false: all-ones weights (second rung)
    target: str = "dino"  # dino | byol (byol: cosine targets, a deviation from the paper)
    shallow_hidden: int = 1024
    shallow_dim: int = 256
    shallow_bottleneck: int = 128  # residual block width: min(C_l / 2, this)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct stage numbers; got {self.layers}")
        if any(not 1 <= layer <= LAST_STAGE for layer in self.layers):
            raise ValueError(f"layers must lie in 1..{LAST_STAGE}; got {self.layers}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {self.target!r}")
        if self.search and not self.per_layer_heads:
            raise ValueError("search=true needs per_layer_heads=true (the search feeds them)")
        if self.per_layer_heads and self.n_local < 1:
            raise ValueError(f"per-layer heads need local crops; got n_local={self.n_local}")
        for key in ("shallow_hidden", "shallow_dim", "shallow_bottleneck"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")


@dataclass
class SearchMaps:
    """Where each local crop found itself in the whole image: what `search_attention` returns."""

    images: Tensor  # (B, H, W, 3) uint8, the global views
    local_views: Tensor  # (n_local, B, 3, s, s) normalised local crops
    boxes: Tensor  # (n_local, B, 4) top, left, height, width in image pixels
    attention: dict[int, Tensor]  # layer -> (n_local, B, H_l, W_l) weights in [0, 1]


class SCFS(DINO):
    """DINO + per-layer shallow heads + semantics-consistent feature search (module docstring)."""

    name = "scfs"
    options_class = SCFSOptions

    def __init__(
        self,
        setup: MethodSetup,
        options: SCFSOptions,
        augment: AugmentConfig,
    ) -> None:
        super().__init__(setup, options, augment)
        layers = options.layers if options.per_layer_heads else ()
        for layer in layers:  # buffers: every centre is checkpointed
            self.register_buffer(f"center_layer{layer}", torch.zeros(1, options.shallow_dim))

    # ---- networks ------------------------------------------------------------------------
    def build_student(self) -> nn.ModuleDict:
        student = super().build_student()
        if self.options.per_layer_heads:
            o = self.options
            channels = self.layer_channels(student["backbone"])
            student["shallow"] = nn.ModuleDict(
                {
                    str(layer): ShallowHead(
                        c, min(c // 2, o.shallow_bottleneck), o.shallow_hidden, o.shallow_dim
                    )
                    for layer, c in channels.items()
                }
            )
        return student

    def networks_to_compile(self) -> list[nn.Module]:
        """With per-layer heads the step walks the backbones stage by stage (`stage_maps`),
        so the stages are compiled rather than the backbones' whole forward."""
        if not self.options.per_layer_heads:
            return super().networks_to_compile()
        modules: list[nn.Module] = []
        for net in (self.student, self.teacher):
            modules += stage_modules(net["backbone"])
            modules += [net["head"], *net["shallow"].values()]
        return modules

    def layer_channels(self, backbone: nn.Module) -> dict[int, int]:
        """Channels of each searched layer; refuses maps under 2x2 for the local crops."""
        setup = self.setup
        imagenet_stem = setup.backbone.startswith("resnet") and not setup.cifar_stem
        if imagenet_stem and self.global_augment.size <= 32:
            raise ValueError(
                "SCFS requires the cifar stem at 32 px (set cifar_stem=true): with the "
                "ImageNet stem layer4 is 1x1 and layer3 2x2, so there is nothing to search"
            )
        size = self.local_augment.size
        backbone.eval()  # a probe pass must not touch the BN statistics
        with torch.no_grad():
            maps = stage_maps(backbone, torch.zeros(1, 3, size, size), self.options.layers)
        backbone.train()
        small = {layer: tuple(m.shape[-2:]) for layer, m in maps.items() if min(m.shape[-2:]) < 2}
        if small:
            raise ValueError(
                f"local crops of {size} px give maps smaller than 2x2 at {small} "
                f"({setup.backbone}); use a larger local_size or other layers"
            )
        return {layer: m.shape[1] for layer, m in maps.items()}

    def backbone_pass(
        self, backbone: nn.Module, images: Tensor
    ) -> tuple[Tensor, dict[int, Tensor]]:
        if not self.options.per_layer_heads:
            return super().backbone_pass(backbone, images)
        maps = stage_maps(backbone, images, sorted({*self.options.layers, LAST_STAGE}))
        pooled = maps[LAST_STAGE].mean(dim=(2, 3))  # what backbone(images) returns
        return pooled, {layer: maps[layer] for layer in self.options.layers}

    # ---- losses --------------------------------------------------------------------------
    def losses(self, student: NetworkPass, teacher: NetworkPass) -> dict[str, Tensor]:
        outputs = super().losses(student, teacher)
        if not self.options.per_layer_heads:
            return outputs
        for layer in self.options.layers:
            glob, local = self.layer_losses(layer, student, teacher)
            outputs["loss"] = outputs["loss"] + 0.5 * (glob + local)
            outputs[f"loss_global_l{layer}"] = glob.detach()
            outputs[f"loss_local_l{layer}"] = local.detach()
        return outputs

    def layer_losses(
        self, layer: int, student: NetworkPass, teacher: NetworkPass
    ) -> tuple[Tensor, Tensor]:
        """(global-to-global, local-to-global) terms of one layer."""
        head = self.student["shallow"][str(layer)]
        batch = student.logits.shape[1]
        local_maps = student.local_maps[layer]
        key_map = teacher.global_maps[layer][:batch]  # global view 1 only, as SCFS
        predictions = head(student.global_maps[layer]).view(N_GLOBAL, batch, -1)
        with torch.no_grad():
            targets = self.teacher["shallow"][str(layer)](teacher.global_maps[layer])
        pairs = cross_pairs(N_GLOBAL, N_GLOBAL, predictions.device)
        glob = self.layer_loss(
            targets.view(N_GLOBAL, batch, -1), predictions, pairs, center=f"center_layer{layer}"
        )
        local = self.local_term(layer, head(local_maps), key_map, self.weights(local_maps, key_map))
        return glob, local

    def weights(self, local_maps: Tensor, key_map: Tensor) -> Tensor:
        """Search weights (n_local, B, H, W): cosines with the detached pooled queries, or ones."""
        n_local = len(local_maps) // len(key_map)
        if not self.options.search:
            return key_map.new_ones(n_local, len(key_map), *key_map.shape[-2:], dtype=torch.float32)
        queries = local_maps.detach().mean(dim=(2, 3)).reshape(n_local, len(key_map), -1)
        return search_weights(queries, key_map)

    def local_term(
        self, layer: int, predictions: Tensor, key_map: Tensor, weights: Tensor
    ) -> Tensor:
        """Each crop's prediction (n * B, D) against the teacher head on its re-weighted map."""
        n_local, batch = weights.shape[:2]
        with torch.no_grad():
            targets = self.teacher["shallow"][str(layer)](reweight(key_map, weights))
        return self.layer_loss(
            targets.view(n_local, batch, -1), predictions.view(n_local, batch, -1),
            matched_pairs(n_local, predictions.device), center=None,
        )  # fmt: skip

    def layer_loss(
        self, targets: Tensor, predictions: Tensor, pairs: Tensor, center: str | None
    ) -> Tensor:
        """DINO cross-entropy (centred when `center` names a buffer), or BYOL's cosine."""
        if self.options.target == "byol":
            return cosine_pair_loss(targets, predictions, pairs)
        shift = getattr(self, center) if center else None
        probs = sharpen(targets, self.teacher_temp, shift)
        loss = soft_cross_entropy(probs, predictions, self.options.student_temperature, pairs)
        if center:
            shift.copy_(ema_center(shift, targets, self.options.center_momentum))
        return loss

    # ---- visualisation -----------------------------------------------------------------------
    @torch.no_grad()
    def search_attention(
        self,
        images: Tensor,
        n_local: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SearchMaps:
        """The search weights of plain local crops (no colour change, no flip) of uint8 images.

        The global view is the whole un-augmented image, so each weight map lines up with it
        and with the returned crop boxes; works for any trained scfs run (search on or off),
        in whatever train/eval mode the caller left the method.
        """
        n_local = n_local or max(1, self.options.n_local)
        config = self.local_augment
        plain = Augment(replace(config, jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0))
        batch, height, width, _ = images.shape
        repeated = images.repeat(n_local, 1, 1, 1)
        params = plain.sample_params(len(repeated), height, width, images.device, generator)
        local_views = plain.apply(repeated, params)
        whole = to_float(images, config.mean, config.std)
        layers = self.options.layers
        local_maps = stage_maps(self.student["backbone"], local_views, layers)
        global_maps = stage_maps(self.teacher["backbone"], whole, layers)
        attention = {
            layer: search_weights(
                local_maps[layer].mean(dim=(2, 3)).reshape(n_local, batch, -1), global_maps[layer]
            )
            for layer in layers
        }
        return SearchMaps(
            images=images,
            local_views=local_views.reshape(n_local, batch, *local_views.shape[1:]),
            boxes=params.boxes.view(n_local, batch, 4),
            attention=attention,
        )
