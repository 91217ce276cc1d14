"""Self-distillation pieces shared by DINO and SCFS: heads, sharpened targets, schedules, search.

Pure modules and functions of tensors (no method imports them back): the DINO prototype head,
SCFS's per-layer shallow head, the centred / sharpened cross-entropy over (teacher view,
student view) pairs, the teacher temperature and momentum schedules, per-parameter gradient
clipping and the feature-search weights. Losses and softmaxes run in fp32 whatever the
autocast state, so bf16 rounding never decides a target.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlab.distributed import gather_cat

# The teacher temperature warm-up never takes more than this share of training.
MAX_WARMUP_SHARE = 0.3


def full_precision(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on the tensor's device: the ops inside run in the inputs' (fp32) dtype."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


# ---- heads --------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 norm -> weight-normalised linear to `out_dim` prototypes.

    The last layer is weight-normed with its gain frozen at 1 (DINO's norm_last_layer): its
    rows are unit vectors, so logits are cosines in [-1, 1] and the temperature alone sets
    the sharpness.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def embed(self, features: Tensor) -> Tensor:
        """The L2-normalised bottleneck output: the embedding the prototypes score."""
        return F.normalize(self.mlp(features).float(), dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        x = self.embed(features)
        with full_precision(x):  # cosines to 4,096+ prototypes: bf16 would round the targets
            return F.linear(x, F.normalize(self.last_layer.weight.float(), dim=1))


class HeadEmbedding(nn.Module):
    """A backbone followed by a DINO head's bottleneck: the embedding its prototypes score."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head.embed(self.backbone(images))


class ShallowHead(nn.Module):
    """SCFS's per-layer head P_l: bottleneck residual block on the map, GAP, BN-MLP, L2 norm.

    The residual block lets the head re-read a (re-weighted) map spatially before pooling;
    the output is a unit vector, as the original divides it by the temperature.
    """

    def __init__(self, channels: int, bottleneck: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, bottleneck, 1, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck, bottleneck, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, maps: Tensor) -> Tensor:
        x = F.relu(maps + self.block(maps))
        return F.normalize(self.mlp(x.mean(dim=(2, 3))).float(), dim=1)


# ---- losses --------------------------------------------------------------------------------------


def cross_pairs(n_teacher: int, n_student: int, device: torch.device | None = None) -> Tensor:
    """(T, S) mask of every pair but a view with itself (teacher view i is student view i)."""
    return ~torch.eye(n_teacher, n_student, dtype=torch.bool, device=device)


def matched_pairs(n: int, device: torch.device | None = None) -> Tensor:
    """(n, n) mask pairing teacher target k with student view k only."""
    return torch.eye(n, dtype=torch.bool, device=device)


def sharpen(logits: Tensor, temperature: float, center: Tensor | None = None) -> Tensor:
    """Teacher targets softmax((logits - center) / temperature), in fp32."""
    logits = logits.float()
    if center is not None:
        logits = logits - center
    return F.softmax(logits / temperature, dim=-1)


def soft_cross_entropy(
    teacher_probs: Tensor, student_logits: Tensor, student_temperature: float, pairs: Tensor
) -> Tensor:
    """Mean over the chosen pairs of H(teacher_i, softmax(student_v / t)), each averaged over B.

    teacher_probs (T, B, K) sum to 1 over K; student_logits (S, B, K); pairs a (T, S) mask.
    """
    _check_views(teacher_probs, student_logits, pairs)
    with full_precision(student_logits):
        log_probs = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
        per_pair = -torch.einsum("tbk,sbk->ts", teacher_probs.float(), log_probs)
    return per_pair[pairs].mean() / student_logits.shape[1]


def cosine_pair_loss(targets: Tensor, predictions: Tensor, pairs: Tensor) -> Tensor:
    """BYOL's 2 - 2 cos between unit vectors, averaged over the chosen pairs and the batch."""
    _check_views(targets, predictions, pairs)
    with full_precision(predictions):
        cosines = torch.einsum("tbd,sbd->ts", targets.float(), predictions.float())
    return 2 - 2 * cosines[pairs].mean() / predictions.shape[1]


def _check_views(teacher: Tensor, student: Tensor, pairs: Tensor) -> None:
    if teacher.dim() != 3 or student.dim() != 3 or teacher.shape[1:] != student.shape[1:]:
        raise ValueError(
            f"expected teacher (T, B, K) and student (S, B, K); got {tuple(teacher.shape)} "
            f"and {tuple(student.shape)}"
        )
    if tuple(pairs.shape) != (len(teacher), len(student)) or not pairs.any():
        raise ValueError(
            f"pairs must be a ({len(teacher)}, {len(student)}) mask with at least one pair"
        )


@torch.no_grad()
def ema_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> Tensor:
    """momentum * center + (1 - momentum) * mean of the teacher outputs over views, batch, ranks."""
    batch_mean = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).mean(0, keepdim=True)
    batch_mean = gather_cat(batch_mean).mean(0, keepdim=True)  # all ranks' batches weigh alike
    return center * momentum + batch_mean * (1 - momentum)


# ---- schedules -----------------------------------------------------------------------------------


def scaled_warmup(warmup_epochs: int, total_epochs: int) -> int:
    """The warm-up actually used: at most MAX_WARMUP_SHARE of training (30 of 100 epochs)."""
    return min(warmup_epochs, round(MAX_WARMUP_SHARE * total_epochs))


def teacher_temperature(epoch: int, warmup_epochs: int, start: float, end: float) -> float:
    """`start` at epoch 0 rising linearly to `end` at epoch warmup - 1 (DINO's linspace), then `end`."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)


def cosine_momentum(progress: float, base: float) -> float:
    """EMA momentum from `base` at progress 0 up to 1 at progress 1, along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def clip_per_parameter(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to norm <= max_norm on its own (DINO's clipping).

    Not the global norm: one exploding layer is tamed without shrinking every other update.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (max_norm / (norms.float() + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scales.to(grads[0].dtype).unbind()))


# ---- feature search ----------------------------------------------------------------------------


def search_weights(queries: Tensor, key_map: Tensor) -> Tensor:
    """Cosine (N, B, H, W) between each query (N, B, C) and each position of key_map (B, C, H, W).

    No softmax or threshold (as SCFS): with post-ReLU features every cosine lies in [0, 1].
    """
    with full_precision(key_map):
        q = F.normalize(queries.float(), dim=-1)
        k = F.normalize(key_map.float(), dim=1)
        return torch.einsum("nbc,bchw->nbhw", q, k)


def reweight(key_map: Tensor, weights: Tensor) -> Tensor:
    """The searched features: key_map (B, C, H, W) times each weight map (N, B, H, W) -> (N*B, C, H, W)."""
    searched = weights.unsqueeze(2).to(key_map.dtype) * key_map.unsqueeze(0)
    return searched.flatten(0, 1)
