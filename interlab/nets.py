"""Backbones, projection heads, momentum encoders and shuffle-BN emulation.

Everything here is device agnostic: the same modules train on a 2-core CPU (tests, the
quickstart) and on one GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor, nn

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50", "convnet")

_RESNET_BUILDERS = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}


class ConvNet(nn.Module):
    """Small conv-BN-ReLU backbone that learns in minutes on a CPU with 32 px inputs.

    The default halves the resolution in the first three stages and keeps it in the last
    (32 px -> 4x4 before the global average pool, like a CIFAR-stem ResNet): a full-resolution
    first stage would cost ~5x more on a CPU for little gain at this scale.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 1),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) == 0 or any(int(w) < 1 for w in widths):
            raise ValueError(
                f"widths must be a non-empty sequence of positive ints, got {widths!r}"
            )
        if len(strides) != len(widths) or any(int(s) < 1 for s in strides):
            raise ValueError(
                f"strides must hold one positive int per stage ({len(widths)}), got {strides!r}"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        stages = []
        previous = in_channels
        for width, stride in zip(widths, strides, strict=True):
            stages.append(_conv_bn_relu(previous, int(width), int(stride)))
            previous = int(width)
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = previous

    def forward(self, images: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(images)), 1)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv without bias (the BN that follows has one), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_backbone(name: str, cifar_stem: bool = False) -> nn.Module:
    """Build a randomly initialised backbone mapping (B, 3, H, W) floats to (B, feature_dim).

    `cifar_stem` swaps the ResNet 7x7/2 conv + max-pool for a 3x3/1 conv, as in the MoCo
    CIFAR-10 recipe: without it a 32 px image is 1x1 by the last stage.
    """
    if name == "convnet":
        return ConvNet()
    if name not in _RESNET_BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    model = _RESNET_BUILDERS[name](weights=None)
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def stage_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules `stage_maps` calls one by one: a ResNet's stem conv and BN and layer1-4, a
    ConvNet's stages."""
    if isinstance(backbone, ConvNet):
        return list(backbone.features)
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):
        return [
            backbone.conv1,
            backbone.bn1,
            *(getattr(backbone, f"layer{i}") for i in range(1, 5)),
        ]
    raise ValueError(f"stage_modules supports ResNets and ConvNet, not {type(backbone).__name__}")


def stage_maps(backbone: nn.Module, images: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
    """Feature maps (B, C, H, W) after the given stages, numbered 1-4 like ResNet's layer1-4.

    A ResNet's `layerN` outputs; a `ConvNet`'s `features[N - 1]` (so its last three stages
    stand in for layers 2-4 in CPU runs). Stops after the deepest stage asked for.
    """
    if isinstance(backbone, ConvNet):
        stages = list(backbone.features)
        x = images
    elif all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):
        stages = [getattr(backbone, f"layer{i}") for i in range(1, 5)]
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
    else:
        raise ValueError(f"stage_maps supports ResNets and ConvNet, not {type(backbone).__name__}")
    wanted = set(layers)
    if not wanted or min(wanted) < 1 or max(wanted) > len(stages):
        raise ValueError(f"layers must lie in 1..{len(stages)}; got {tuple(layers)}")
    maps: dict[int, Tensor] = {}
    for number, stage in enumerate(stages[: max(wanted)], start=1):
        x = stage(x)
        if number in wanted:
            maps[number] = x
    return maps


class MLPHead(nn.Module):
    """Projection head: 1 layer is a plain Linear, 2+ layers put ReLU (and BN) between Linears.

    With `batch_norm` the hidden Linears drop their bias since the BN right after has one;
    `last_bn` adds a BatchNorm1d on the output (SimCLR v2 / MoCo v3 style).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = False,
        last_bn: bool = False,
    ) -> None:
        super().__init__()
        for label, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        previous = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(previous, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            previous = hidden_dim
        layers.append(nn.Linear(previous, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """EMA `t = m*t + (1-m)*o` over the parameters only, as one fused `lerp`.

    Buffers (BN running statistics) are left alone, as in facebookresearch/moco's builder and
    DINO: the target's statistics come from its own forward passes. A DINO teacher that copied
    the student's would carry statistics of the small local crops it never sees, and be
    evaluated with them. A training loop calls `MomentumUpdate` instead, which checks and
    lists the parameters once.
    """
    MomentumUpdate(target, online)(momentum)


class MomentumUpdate:
    """`momentum_update` of one (target, online) pair, its parameter lists checked and built
    once: a step then costs one `_foreach_lerp_` (a few kernels), no Python walk of the modules.

    The lists hold the parameter objects, which `module.to(...)`, `load_state_dict` and
    optimisers update in place, so they stay valid for the modules' lifetime.
    """

    def __init__(self, target: nn.Module, online: nn.Module) -> None:
        self.targets, self.onlines = _paired(target.parameters(), online.parameters(), "parameters")
        _paired(target.buffers(), online.buffers(), "buffers")  # same architecture, checked

    @torch.no_grad()
    def __call__(self, momentum: float) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if self.targets:
            torch._foreach_lerp_(self.targets, self.onlines, 1.0 - momentum)


def _paired(targets, onlines, kind: str) -> tuple[list[Tensor], list[Tensor]]:
    """Materialise two tensor iterators, insisting on the same structure."""
    targets, onlines = list(targets), list(onlines)
    if len(targets) != len(onlines):
        raise ValueError(
            f"target has {len(targets)} {kind} but online has {len(onlines)}; "
            "expected two copies of the same architecture"
        )
    mismatched = [
        i for i, (t, o) in enumerate(zip(targets, onlines, strict=True)) if t.shape != o.shape
    ]
    if mismatched:
        i = mismatched[0]
        raise ValueError(
            f"{kind} #{i} has shape {tuple(targets[i].shape)} in target but "
            f"{tuple(onlines[i].shape)} in online; expected identical shapes"
        )
    return targets, onlines


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """Deep copy whose parameters never receive gradients (momentum/key encoder)."""
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises `num_splits` sample groups independently.

    This emulates MoCo's shuffle-BN on one device: each group gets its own batch statistics,
    as each GPU's BN would over its share of the batch, so the key encoder cannot cheat
    through statistics shared with the query's sub-batch. Group g is the contiguous chunk of
    samples g*B/G ... (g+1)*B/G - 1, so in either memory format (channels_last or NCHW) the
    groups are a view of the input: one `var_mean` and one affine step per call, no copy of
    the activations and no change of layout. Eval mode is a plain BatchNorm2d.
    """

    def __init__(self, num_features: int, num_splits: int, **kw) -> None:
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        super().__init__(num_features, **kw)
        self.num_splits = int(num_splits)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(input)
        self._check_input_dim(input)
        batch, channels = input.shape[:2]
        splits = self.num_splits
        if batch % splits != 0:
            raise ValueError(
                f"batch size {batch} is not divisible by num_splits={splits}; "
                "expected a multiple of num_splits"
            )
        if input.numel() // (splits * channels) < 2:
            raise ValueError(
                f"expected more than 1 value per channel in each of the {splits} groups, got "
                f"input of size {tuple(input.shape)}"
            )
        if torch.compiler.is_compiling():  # the compiler fuses the plain arithmetic itself
            output, mean, var = _group_batch_norm(input, self.weight, self.bias, splits, self.eps)
        else:
            output, mean, var = _GroupBatchNorm.apply(
                input, self.weight, self.bias, splits, self.eps
            )
        if self.track_running_stats:
            self._update_running_stats(mean, var, input.numel() // (splits * channels))
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Each group's EMA of its own statistics, averaged over groups (what G BN layers on G
        devices, averaged, would hold): running += factor * (mean over groups - running), the
        variance unbiased as in nn.BatchNorm2d. One fused update of both buffers."""
        factor = self._update_factor()
        unbiased = var * (count / max(count - 1, 1))
        both = torch.stack([mean, unbiased]).flatten(2).mean(dim=1)  # (2, C)
        targets = [self.running_mean, self.running_var]
        torch._foreach_lerp_(targets, list(both.to(self.running_mean.dtype).unbind(0)), factor)

    def _update_factor(self) -> float:
        """Running-stat momentum, counting batches like nn.BatchNorm2d (cumulative if None)."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def _grouped(tensor: Tensor, splits: int) -> Tensor:
    """(B, C, H, W) as (G, B/G, C, H, W): a view in any memory format (dim 0 splits)."""
    batch, channels, height, width = tensor.shape
    return tensor.view(splits, batch // splits, channels, height, width)


_SAMPLE_DIMS = (1, 3, 4)  # of a `_grouped` tensor: a group's samples and pixels


def _group_batch_norm(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, splits: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """`_GroupBatchNorm`'s forward as plain differentiable arithmetic (autograd derives the
    backward): what torch.compile traces, and the reference the tests hold the hand-written
    backward to. Returns the output and the (G, 1, C, 1, 1) float32 mean and variance."""
    channels, dtype = input.shape[1], input.dtype
    grouped = _grouped(input, splits)
    # Float32 throughout, the output cast back: a compiler fuses the casts into the kernels
    # (and inductor's CPU code generator fails on bf16 accumulators of this backward).
    exact = torch.promote_types(dtype, torch.float32)
    grouped = grouped.to(exact)
    var, mean = torch.var_mean(grouped, dim=_SAMPLE_DIMS, keepdim=True, correction=0)
    scale = torch.rsqrt(var + eps)
    shift = -mean * scale
    if weight is not None:
        scale = scale * weight.view(1, 1, channels, 1, 1)
        shift = shift * weight.view(1, 1, channels, 1, 1) + bias.view(1, 1, channels, 1, 1)
    output = torch.addcmul(shift, grouped, scale).to(dtype).view(input.shape)
    return output, mean.detach(), var.detach()


class _GroupBatchNorm(torch.autograd.Function):
    """Batch norm with statistics per (group, channel), the groups being contiguous chunks of
    samples, with the backward written out (autograd through the same arithmetic records
    about 25 ops) and an output that is no view, so the network's in-place ReLU and residual
    add cost no copy in the backward. Statistics, per-channel factors and every element's
    arithmetic are float32 whatever the activations' dtype (as cuDNN's batch norm computes):
    bf16 activations are read, and their results written, as bf16. Centring before the
    products keeps a large mean from cancelling precision away. Per-channel tensors are
    (G, 1, C, 1, 1), broadcast against the (G, B/G, C, H, W) view."""

    @staticmethod
    def forward(ctx, input, weight, bias, splits, eps):
        channels = input.shape[1]
        grouped = _grouped(input, splits)
        exact = torch.promote_types(input.dtype, torch.float32)
        var, mean = torch.var_mean(grouped.to(exact), dim=_SAMPLE_DIMS, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        scale, shift = rstd, -mean * rstd
        if weight is not None:
            weight = weight.view(1, 1, channels, 1, 1)
            scale = rstd * weight
            shift = torch.addcmul(bias.view_as(weight), mean, scale, value=-1.0)
        output = torch.empty_like(input)
        # float32 factors against the activations: computed in float32, stored in their dtype
        torch.addcmul(shift, grouped, scale, out=_grouped(output, splits))
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.splits = splits
        ctx.mark_non_differentiable(mean, var)
        return output, mean, var

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_var):
        input, weight, mean, rstd = ctx.saved_tensors
        splits, exact = ctx.splits, mean.dtype
        count = input.numel() // mean.numel()
        dy = _grouped(grad_output, splits).to(exact)
        centred = _grouped(input, splits).to(exact) - mean
        sum_dy = dy.sum(dim=_SAMPLE_DIMS, keepdim=True)
        sum_dy_xhat = (dy * centred).sum(dim=_SAMPLE_DIMS, keepdim=True).mul_(rstd)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dx = w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) = a * dy + b * (x - mean) + c
            a = rstd if weight is None else rstd * weight
            b = (a * rstd).mul_(sum_dy_xhat).mul_(-1.0 / count)
            c = (a * sum_dy).mul_(-1.0 / count)
            grad_input = torch.empty_like(grad_output)
            partial = torch.addcmul(c, dy, a)
            torch.addcmul(partial, centred, b, out=_grouped(grad_input, splits))
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.sum(dim=0).flatten().to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_dy.sum(dim=0).flatten().to(weight.dtype)
        return grad_input, grad_weight, grad_bias, None, None


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d (in place) by a SplitBatchNorm2d with the same state.

    Returns the converted module; it is a new object only when `module` itself is a BN.
    """
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if isinstance(module, nn.BatchNorm2d):
        return _split_copy(module, num_splits)
    for name, child in module.named_children():
        setattr(module, name, convert_split_batchnorm(child, num_splits))
    return module


def _split_copy(bn: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
    """A SplitBatchNorm2d carrying `bn`'s hyper-parameters, parameters, buffers and mode."""
    split = SplitBatchNorm2d(
        bn.num_features,
        num_splits,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    reference = bn.weight if bn.weight is not None else bn.running_mean
    if reference is not None:
        split.to(device=reference.device, dtype=reference.dtype)
    split.load_state_dict(bn.state_dict())
    if bn.affine:
        split.weight.requires_grad_(bn.weight.requires_grad)
        split.bias.requires_grad_(bn.bias.requires_grad)
    split.train(bn.training)
    return split
