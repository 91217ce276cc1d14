"""Colour kernels: ColorJitter, RandomGrayscale and Normalize on the (B, 3, pixels) view.

* brightness, contrast and saturation are per-sample 3x3 colour matrices (plus a per-sample
  offset for contrast) applied by one ``baddbmm`` and a clamp;
* ColorJitter's random per-sample op order is run as three blend passes, one hue pass, three
  blend passes: a sample's ops ordered before its hue go in the first passes, the others in
  the last ones, and a pass a sample does not use is an exact identity for it;
* hue goes through a branch-free HSV rotation (max and max - min are invariant);
* grayscale and Normalize fold into one final per-sample colour matrix.

Constants are built once per device so the hot path never copies from the host.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from interlab.augment.config import CONTRAST, HUE, SATURATION
from interlab.augment.params import AugmentParams

# torchvision's rgb_to_grayscale weights (torchvision/transforms/v2/functional/_color.py).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@functools.lru_cache(maxsize=32)
def gray_weights(device: torch.device) -> Tensor:
    return torch.tensor(GRAY_WEIGHTS, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def eye3(device: torch.device) -> Tensor:
    return torch.eye(3, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def _hue_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel differences (row c gives x[c+1] - x[c+2]) and the R, G, B phase offsets."""
    diff = torch.tensor([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], dtype=torch.float32, device=device)
    phase = torch.tensor([5.0, 3.0, 1.0], dtype=torch.float32, device=device).view(1, 3, 1)
    return diff, phase


@functools.lru_cache(maxsize=32)
def normalise_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """mean and std as (1, 3, 1) columns, and -mean/std (Normalize's bias once scaled by 1/std)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1)
    return mean_t, std_t, -mean_t / std_t


def blend_matrices(
    factor: Tensor, saturation: Tensor, contrast: Tensor, gray_w: Tensor, eye: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample colour matrices (..., 3, 3) of torchvision's three blends.

    Each op is clamp(a * x + (1 - a) * g): g = 0 (brightness), the pixel's gray value
    (saturation) or the image's mean gray value (contrast). So the result is
    clamp(M @ x + C @ mean(x)) with M = a*I + s*(1-a) * 1 w^T and C = c*(1-a) * 1 w^T,
    s and c being 0/1 masks of the op; factor 1 with both masks 0 is the exact identity.
    """
    to_gray = gray_w.view(1, 3).expand(3, 3)  # every row = the grayscale weights
    pull = (1.0 - factor)[..., None, None] * to_gray
    matrix = factor[..., None, None] * eye + saturation[..., None, None] * pull
    return matrix, contrast[..., None, None] * pull


def blend_pass(planes: Tensor, matrix: Tensor, contrast_matrix: Tensor) -> Tensor:
    """clamp(matrix @ x + contrast_matrix @ mean(x)), see blend_matrices; planes (B, 3, N)."""
    offset = torch.bmm(contrast_matrix, planes.mean(dim=2, keepdim=True))  # (B, 3, 1)
    return torch.baddbmm(offset, matrix, planes).clamp_(0.0, 1.0)


def shift_hue(planes: Tensor, delta: Tensor) -> Tensor:
    """Rotate hue by `delta` turns via HSV, like TF.adjust_hue, without branches.

    A hue rotation keeps V = max and S*V = max - min, so each output channel is
    max - (max - min) * clamp(min(k, 4 - k), 0, 1) with k = (phase_c + 6 * hue) mod 6.
    planes (B, 3, N) in [0, 1]; delta (B,).
    """
    diff, phase = _hue_constants(planes.device)
    red, green, _ = planes.unbind(dim=1)
    top = planes.amax(dim=1)
    spread = top - planes.amin(dim=1)
    # Index of the max channel, red before green before blue (any tied choice gives the same hue).
    not_red = red != top
    arg = not_red.to(torch.int64) + (not_red & (green != top))
    numerator = torch.matmul(diff, planes).gather(1, arg.unsqueeze(1)).squeeze(1)
    sextant = torch.add(numerator / torch.where(spread > 0, spread, 1.0), arg, alpha=2)
    sextant = (sextant + 6.0 * delta.view(-1, 1)).remainder_(6.0)
    k = (sextant.unsqueeze(1) + phase).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(top.unsqueeze(1), spread.unsqueeze(1), ramp, value=-1.0)


def color_jitter(planes: Tensor, params: AugmentParams, use_hue: bool) -> Tensor:
    """ColorJitter in each sample's own op order: blends before hue, hue, blends after hue.

    Pass k of each stage applies the sample's k-th blend op if that op falls in the stage,
    else the identity (factor 1, exact); so 3 + 3 blend passes and one hue pass replace
    4 slots x 4 ops. Without hue (jitter[3] == 0) the three blend passes suffice.
    """
    device = planes.device
    order = params.jitter_order
    # Stable sort moves hue last and keeps the blend ops in the sample's order.
    hue_last = torch.sort((order == HUE).to(torch.uint8), dim=1, stable=True).indices
    blends = order.gather(1, hue_last)[:, :3]  # (B, 3) op ids in application order
    factors = torch.stack([params.brightness, params.contrast, params.saturation], dim=1)
    blend_factor = factors.gather(1, blends)
    if use_hue:
        hue_slot = hue_last[:, 3:4]  # = number of ops applied before hue
        before_hue = torch.arange(3, device=device) < hue_slot
        active = torch.cat([before_hue, ~before_hue], dim=1).T  # (6, B)
        blends, blend_factor = blends.T.repeat(2, 1), blend_factor.T.repeat(2, 1)
    else:
        blends, blend_factor = blends.T, blend_factor.T
        active = torch.ones_like(blends, dtype=torch.bool)
    active = active & params.jitter_on
    factor = torch.where(active, blend_factor, 1.0)
    saturation = (active & (blends == SATURATION)).to(torch.float32)
    contrast = (active & (blends == CONTRAST)).to(torch.float32)
    matrices, contrast_matrices = blend_matrices(
        factor, saturation, contrast, gray_weights(device), eye3(device)
    )
    for k in range(3):
        planes = blend_pass(planes, matrices[k], contrast_matrices[k])
    if not use_hue:
        return planes
    shifted = shift_hue(planes, params.hue)
    planes = torch.where(params.jitter_on.view(-1, 1, 1), shifted, planes)
    for k in range(3, 6):
        planes = blend_pass(planes, matrices[k], contrast_matrices[k])
    return planes


def gray_and_normalise(
    planes: Tensor, gray: Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """RandomGrayscale then Normalize as one per-sample colour matrix plus bias."""
    device = planes.device
    _, std_t, bias = normalise_constants(mean, std, device)
    to_gray = gray_weights(device).view(1, 3).expand(3, 3)
    matrix = torch.where(gray.view(-1, 1, 1), to_gray, eye3(device)) / std_t  # rows / std
    return torch.baddbmm(bias, matrix, planes)
