"""Batched, per-sample random augmentation on the images' own device (GPU or CPU).

The MoCo v2 "aug+" recipe with torchvision's semantics, for a whole uint8 batch at once:
RandomResizedCrop -> RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(GaussianBlur, p)
-> RandomHorizontalFlip -> Normalize, every sample drawing its own parameters.

How it stays fast without Python loops over samples (about 160 small kernels per call,
whatever the batch size):

* crop + bilinear antialiased resize (+ the flip, + the /255) is ``Wy @ image @ Wx^T`` with
  per-sample interpolation matrices (B, S, H) and (B, S, W): two batched GEMMs;
* brightness, contrast and saturation are per-sample 3x3 colour matrices (plus a per-sample
  offset for contrast) applied to the (B, 3, pixels) view by one ``baddbmm`` and a clamp;
* ColorJitter's random per-sample op order is run as three blend passes, one hue pass, three
  blend passes: a sample's ops ordered before its hue go in the first passes, the others in
  the last ones, and a pass a sample does not use is an exact identity for it;
* hue goes through a branch-free HSV rotation (max and max - min are invariant);
* blur is a per-sample reflect-padded Gaussian matrix product, like the crop (kernel side
  ``blur_kernel_size(size)``: int(0.1 * size) made odd, at least 3);
* grayscale and Normalize fold into one final per-sample colour matrix.

Flip and blur commute with the per-pixel colour ops (and with each other: the Gaussian is
symmetric, the padding is reflect), so folding the flip into the crop changes nothing.
Images stay float32 in [0, 1] until the final normalisation; `Augment` makes no host syncs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# torchvision's rgb_to_grayscale weights (torchvision/transforms/v2/functional/_color.py).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_CROP_TRIES = 10  # torchvision's RandomResizedCrop rejection-sampling attempts
# Columns of the single uniform draw that sample_params makes per sample.
_COINS = slice(0, 4)  # jitter, gray, blur, flip
_JITTER_FACTORS = slice(4, 8)  # brightness, contrast, saturation, hue
_BLUR_SIGMA = 8
_ORDER_KEYS = slice(9, 13)
_TOP, _LEFT = 13, 14
_AREA = slice(15, 15 + _CROP_TRIES)
_LOG_RATIO = slice(15 + _CROP_TRIES, 15 + 2 * _CROP_TRIES)
_N_UNIFORMS = 15 + 2 * _CROP_TRIES


# --------------------------------------------------------------------------------------------
# Configuration and parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """The recipe's knobs; defaults are MoCo v2 aug+ at CIFAR-10 size without blur."""

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # ColorJitter strengths: brightness, contrast, saturation, hue.
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                # YAML gives lists; keep the frozen instance hashable and comparable.
                numbers = _float_tuple(f"AugmentConfig.{field.name}", value)
                object.__setattr__(self, field.name, numbers)
        _check_config(self)


def _float_tuple(label: str, value: Sequence) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a sequence of numbers, got {value!r}") from None


def _check_config(cfg: AugmentConfig) -> None:
    """Reject values torchvision would reject (or that make no sense) before any work is done."""
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or cfg.size <= 0:
        raise ValueError(f"AugmentConfig.size must be a positive int, got {cfg.size!r}")
    _check_pair("scale", cfg.scale, high=1.0)
    _check_pair("ratio", cfg.ratio)
    _check_pair("blur_sigma", cfg.blur_sigma)
    _check_length("jitter", cfg.jitter, 4)
    if any(not math.isfinite(v) or v < 0 for v in cfg.jitter) or cfg.jitter[3] > 0.5:
        raise ValueError(
            "AugmentConfig.jitter must be (brightness, contrast, saturation, hue) with all values"
            f" >= 0 and hue <= 0.5, got {cfg.jitter!r}"
        )
    for name in ("jitter_p", "gray_p", "blur_p", "flip_p"):
        p = getattr(cfg, name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p!r}")
    _check_length("mean", cfg.mean, 3)
    _check_length("std", cfg.std, 3)
    if any(not math.isfinite(v) for v in cfg.mean):
        raise ValueError(f"AugmentConfig.mean must be finite, got {cfg.mean!r}")
    if any(not math.isfinite(v) or v <= 0 for v in cfg.std):
        raise ValueError(f"AugmentConfig.std must be 3 positive numbers, got {cfg.std!r}")
    if cfg.blur_p > 0 and cfg.size < 2:
        raise ValueError(f"AugmentConfig.size must be >= 2 when blur_p > 0, got {cfg.size}")


def _check_length(name: str, value: object, length: int) -> None:
    if not isinstance(value, tuple) or len(value) != length:
        raise ValueError(f"AugmentConfig.{name} must have {length} values, got {value!r}")


def _check_pair(name: str, pair: object, high: float = math.inf) -> None:
    """A finite range (a, b) with 0 < a <= b <= high."""
    _check_length(name, pair, 2)
    a, b = pair  # type: ignore[misc]
    if not (0 < a <= b <= high and math.isfinite(b)):
        raise ValueError(
            f"AugmentConfig.{name} must be (a, b) with 0 < a <= b <= {high}, got {pair!r}"
        )


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (every tensor has length B)."""

    boxes: Tensor  # (B, 4) int64: top, left, height, width of the crop
    jitter_on: Tensor  # (B,) bool
    brightness: Tensor  # (B,) float factor
    contrast: Tensor  # (B,) float factor
    saturation: Tensor  # (B,) float factor
    hue: Tensor  # (B,) float shift in turns, within +-jitter[3]
    jitter_order: Tensor  # (B, 4) int64 permutation of 0..3 (brightness, contrast, saturation, hue)
    gray: Tensor  # (B,) bool
    blur_sigma: Tensor  # (B,) float, 0 = no blur
    flip: Tensor  # (B,) bool


# --------------------------------------------------------------------------------------------
# Cached constants (built once per device, never copied from the host in the hot path)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _gray_weights(device: torch.device) -> Tensor:
    return torch.tensor(GRAY_WEIGHTS, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def _eye3(device: torch.device) -> Tensor:
    return torch.eye(3, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def _hue_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """Channel differences (row c gives x[c+1] - x[c+2]) and the R, G, B phase offsets."""
    diff = torch.tensor([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], dtype=torch.float32, device=device)
    phase = torch.tensor([5.0, 3.0, 1.0], dtype=torch.float32, device=device).view(1, 3, 1)
    return diff, phase


@functools.lru_cache(maxsize=32)
def _normalise_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """mean and std as (1, 3, 1) columns, and -mean/std (Normalize's bias once scaled by 1/std)."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1)
    return mean_t, std_t, -mean_t / std_t


@functools.lru_cache(maxsize=32)
def _reflect_taps(n: int, kernel_size: int, device: torch.device) -> Tensor:
    """(k, n*n) flattened 0/1 matrices: tap t of output i reads input reflect(i + t - k // 2)."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=device)[:, None]
    index = torch.arange(n, device=device)[None, :] + offsets
    index = torch.where(index < 0, -index, index)
    index = torch.where(index > n - 1, 2 * (n - 1) - index, index)
    taps = index.unsqueeze(-1) == torch.arange(n, device=device)  # (k, out i, in j)
    return taps.to(torch.float32).reshape(kernel_size, n * n)


# --------------------------------------------------------------------------------------------
# Layout and argument helpers
# --------------------------------------------------------------------------------------------
# Internally images are channel-first float32 (B, 3, H, W); colour ops use the (B, 3, H*W)
# "planes" view so that a per-sample 3x3 colour matrix is one batched (3x3) @ (3xN) GEMM.


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """float32 GEMMs without TF32/bf16 shortcuts and outside autocast.

    Here the GEMMs *are* the resampling and colour arithmetic: TF32 (which the trainer enables
    for the network) would round every pixel to 10 mantissa bits, autocast would even return
    bf16. They are memory-bound, so full precision costs nothing.
    """
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        if device.type in ("cpu", "cuda"):
            with torch.autocast(device.type, enabled=False):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _exact(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `fn` under _full_float32 on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Tensor:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        with _full_float32(device):
            return fn(*args, **kwargs)

    return wrapper


def _planes(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w)


def _check_float_images(x: object, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.ndim != 4 or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float32 tensor (B, 3, H, W) in [0, 1], got {got}")


def _check_uint8_images(images: object) -> None:
    if (
        not isinstance(images, Tensor)
        or images.dtype != torch.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
        or 0 in images.shape
    ):
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(f"images must be a non-empty uint8 tensor (B, H, W, 3), got {got}")


def _uint8_to_planar(images: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) contiguous, in one conversion kernel."""
    return images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)


def _per_sample(value: Tensor | float, batch: int, device: torch.device, name: str) -> Tensor:
    """A scalar or a (B,) tensor as float32 (B,) on `device`."""
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(batch)
        if tuple(value.shape) != (batch,):
            raise ValueError(
                f"{name} must be a scalar or have shape ({batch},), got {tuple(value.shape)}"
            )
        return value.to(device=device, dtype=torch.float32)
    return torch.full((batch,), float(value), device=device, dtype=torch.float32)


def _check_range(values: Tensor, name: str, low: float, high: float) -> None:
    """Value check for the public functional ops (a host sync; Augment never calls these)."""
    bad = ~((values >= low) & (values <= high))
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {values[bad][:8].tolist()}")


def _check_size(size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")


# --------------------------------------------------------------------------------------------
# Resampling: crop + antialiased bilinear resize as two GEMMs
# --------------------------------------------------------------------------------------------


def _resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(B, out, in) weights of "crop [start, start+length) then resize to out_size".

    Same filter as ``interpolate(mode="bilinear", antialias=True, align_corners=False)``: a
    triangle of half-width max(scale, 1) around each output centre, restricted to the crop and
    renormalised; for upscaling this is plain bilinear with edge clamping.
    """
    device = start.device
    scale = (length.to(torch.float32) / out_size).view(-1, 1, 1)
    centre = torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5
    local = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1)
    local = local - start.view(-1, 1, 1)
    inside = (local >= 0) & (local < length.view(-1, 1, 1))
    distance = (local + 0.5 - scale * centre) / scale.clamp(min=1.0)
    weights = (1.0 - distance.abs()).clamp_(min=0.0) * inside
    return weights / weights.sum(dim=2, keepdim=True)


def _separable(x: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
    """out[b, c] = wy[b] @ x[b, c] @ wx[b]^T: x (B, C, H, W), wy (B, S, H), wx (B, T, W)."""
    b, c, h, w = x.shape
    rows = torch.bmm(x.reshape(b, c * h, w), wx.transpose(1, 2))  # (B, C*H, T)
    return torch.matmul(wy.unsqueeze(1), rows.view(b, c, h, -1))  # (B, C, S, T)


def _crop_matrices(
    boxes: Tensor, height: int, width: int, size: int, flip: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """wy (B, S, H) and wx (B, S, W) for the boxes; `flip` mirrors the output columns."""
    top, left, box_h, box_w = boxes.unbind(dim=1)
    if height == width:  # one call for both axes: half the (small) kernels
        both = _resize_weights(torch.cat([top, left]), torch.cat([box_h, box_w]), height, size)
        wy, wx = both.chunk(2)
    else:
        wy = _resize_weights(top, box_h, height, size)
        wx = _resize_weights(left, box_w, width, size)
    if flip is not None:
        wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)
    return wy, wx


def _check_boxes(boxes: object, batch: int, height: int, width: int) -> None:
    if (
        not isinstance(boxes, Tensor)
        or tuple(boxes.shape) != (batch, 4)
        or boxes.is_floating_point()
    ):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"boxes must be an integer tensor ({batch}, 4) of top, left, height, width; got {got}"
        )
    top, left, box_h, box_w = boxes.unbind(dim=1)
    inside = (top >= 0) & (left >= 0) & (box_h >= 1) & (box_w >= 1)
    inside &= (top + box_h <= height) & (left + box_w <= width)
    if not bool(inside.all()):
        raise ValueError(
            f"boxes must lie inside the {height}x{width} images, got {boxes[~inside][:8].tolist()}"
        )


@_exact
def resized_crop(images_float: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Per-sample crop (top, left, height, width) then bilinear antialiased resize to size x size.

    Batched ``TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)``; the boxes
    must lie inside the images. Returns contiguous (B, 3, size, size).
    """
    _check_float_images(images_float, "images_float")
    b, _, h, w = images_float.shape
    _check_boxes(boxes, b, h, w)
    _check_size(size)
    wy, wx = _crop_matrices(boxes.to(images_float.device), h, w, size)
    return _separable(images_float, wy, wx)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the samples whose `mask` entry is True (batched RandomHorizontalFlip)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {got}")
    if (
        not isinstance(mask, Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != (x.shape[0],)
    ):
        got = (
            f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        )
        raise ValueError(f"mask must be a bool tensor ({x.shape[0]},), got {got}")
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# --------------------------------------------------------------------------------------------
# Colour: blends as per-sample 3x3 matrices, hue through branch-free HSV
# --------------------------------------------------------------------------------------------


def _blend_matrices(
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


def _blend_pass(planes: Tensor, matrix: Tensor, contrast_matrix: Tensor) -> Tensor:
    """clamp(matrix @ x + contrast_matrix @ mean(x)), see _blend_matrices; planes (B, 3, N)."""
    offset = torch.bmm(contrast_matrix, planes.mean(dim=2, keepdim=True))  # (B, 3, 1)
    return torch.baddbmm(offset, matrix, planes).clamp_(0.0, 1.0)


def _shift_hue(planes: Tensor, delta: Tensor) -> Tensor:
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


@_exact
def _blend_op(x: Tensor, factor: Tensor | float, op: int) -> Tensor:
    _check_float_images(x)
    factor = _per_sample(factor, x.shape[0], x.device, "factor")
    _check_range(factor, "factor", 0.0, math.inf)
    is_saturation = torch.full_like(factor, float(op == SATURATION))
    is_contrast = torch.full_like(factor, float(op == CONTRAST))
    matrices = _blend_matrices(
        factor, is_saturation, is_contrast, _gray_weights(x.device), _eye3(x.device)
    )
    return _blend_pass(_planes(x), *matrices).view(x.shape)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_brightness: clamp(x * factor), factor per sample (B,) or scalar."""
    return _blend_op(x, factor, BRIGHTNESS)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_contrast: blend with the mean of each sample's grayscale image."""
    return _blend_op(x, factor, CONTRAST)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_saturation: blend each pixel with its own gray value."""
    return _blend_op(x, factor, SATURATION)


@_exact
def adjust_hue(x: Tensor, hue_factor: Tensor | float) -> Tensor:
    """Batched TF.adjust_hue: shift each sample's hue by hue_factor in [-0.5, 0.5] turns."""
    _check_float_images(x)
    delta = _per_sample(hue_factor, x.shape[0], x.device, "hue_factor")
    _check_range(delta, "hue_factor", -0.5, 0.5)
    return _shift_hue(_planes(x), delta).view(x.shape)


@_exact
def rgb_to_grayscale(x: Tensor) -> Tensor:
    """TF.rgb_to_grayscale(x, num_output_channels=3): the gray value in all 3 channels."""
    _check_float_images(x)
    gray = torch.matmul(_gray_weights(x.device), _planes(x))  # (B, N)
    return gray.unsqueeze(1).expand(-1, 3, -1).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Gaussian blur as per-sample reflect-padded matrices
# --------------------------------------------------------------------------------------------


def blur_kernel_size(size: int) -> int:
    """Odd kernel side about 10% of the image side, at least 3 (23 at 224 px, as in MoCo v2).

    int(0.1 * size), plus one when even; so 3 below 40 px (CIFAR), 9 at 96 px (STL-10).
    """
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


def _blur_matrices(sigma: Tensor, n: int, kernel_size: int) -> Tensor:
    """(B, n, n) matrices applying TF.gaussian_blur's 1-D kernel with reflect padding.

    sigma 0 gives the identity (no blur) so blurred and unblurred samples share one product.
    """
    radius = kernel_size // 2
    # TF's taps: softmax(-(x / sigma)^2) over x = linspace(-lim, lim), lim = (k - 1) / (2 sqrt 2).
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    x = x / math.sqrt(2.0)
    safe = torch.where(sigma > 0, sigma, 1.0).view(-1, 1)
    kernel = torch.softmax(-((x / safe) ** 2), dim=1)
    kernel = torch.where(sigma.view(-1, 1) > 0, kernel, (x == 0).to(torch.float32))
    taps = _reflect_taps(n, kernel_size, sigma.device)
    return (kernel @ taps).view(-1, n, n)


def _blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """x (B, 3, H, W) -> each sample blurred with its own sigma (0 = unchanged)."""
    _, _, h, w = x.shape
    by = _blur_matrices(sigma, h, kernel_size)
    bx = by if w == h else _blur_matrices(sigma, w, kernel_size)
    return _separable(x, by, bx)


@_exact
def gaussian_blur(x: Tensor, sigma: Tensor | float, kernel_size: int | None = None) -> Tensor:
    """Batched TF.gaussian_blur(img, [k, k], [sigma, sigma]) with a per-sample sigma (0 = none).

    kernel_size defaults to blur_kernel_size(min(H, W)): odd, about 10% of the side, >= 3.
    """
    _check_float_images(x)
    b, _, h, w = x.shape
    k = blur_kernel_size(min(h, w)) if kernel_size is None else kernel_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if k // 2 >= min(h, w):
        raise ValueError(f"kernel_size {k} is too large for reflect padding of {h}x{w} images")
    sigma = _per_sample(sigma, b, x.device, "sigma")
    _check_range(sigma, "sigma", 0.0, math.inf)
    return _blur(x, sigma, k)


# --------------------------------------------------------------------------------------------
# Parameter sampling
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _draw_ranges(cfg: AugmentConfig, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Low and span of every column of the uniform draw, and the four coin probabilities.

    One multiply-add then turns U[0, 1) into every parameter's own range (torchvision's:
    jitter factors U[max(0, 1 - j), 1 + j], hue U[-j, j], log aspect ratio, area fraction).
    """
    low, span = [0.0] * _N_UNIFORMS, [1.0] * _N_UNIFORMS
    ranges = [(max(0.0, 1.0 - j), 1.0 + j) for j in cfg.jitter[:3]]
    ranges.append((-cfg.jitter[HUE], cfg.jitter[HUE]))
    for column, (a, b) in zip(
        range(_JITTER_FACTORS.start, _JITTER_FACTORS.stop), ranges, strict=True
    ):
        low[column], span[column] = a, b - a
    low[_BLUR_SIGMA], span[_BLUR_SIGMA] = cfg.blur_sigma[0], cfg.blur_sigma[1] - cfg.blur_sigma[0]
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for column in range(_AREA.start, _AREA.stop):
        low[column], span[column] = cfg.scale[0], cfg.scale[1] - cfg.scale[0]
    for column in range(_LOG_RATIO.start, _LOG_RATIO.stop):
        low[column], span[column] = log_low, log_high - log_low
    coin_p = [cfg.jitter_p, cfg.gray_p, cfg.blur_p, cfg.flip_p]
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(low), as_tensor(span), as_tensor(coin_p)


def _centre_crop_fallback(
    height: int, width: int, ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop fallback after 10 rejected tries: a central crop."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _sample_boxes(draws: Tensor, height: int, width: int, ratio: tuple[float, float]) -> Tensor:
    """RandomResizedCrop.get_params for every sample: 10 candidates at once, first valid wins.

    draws: the scaled uniform draw (area fractions and log aspect ratios already in range).
    """
    area = (height * width) * draws[:, _AREA]
    aspect = torch.exp(draws[:, _LOG_RATIO])
    cand_w = torch.round(torch.sqrt(area * aspect))
    cand_h = torch.round(torch.sqrt(area / aspect))
    valid = (cand_w >= 1) & (cand_w <= width) & (cand_h >= 1) & (cand_h <= height)
    tries = torch.arange(_CROP_TRIES, device=draws.device)
    first = torch.where(valid, tries, _CROP_TRIES).amin(dim=1, keepdim=True)
    found = first.squeeze(1) < _CROP_TRIES
    pick = first.clamp(max=_CROP_TRIES - 1)
    f_top, f_left, f_h, f_w = _centre_crop_fallback(height, width, ratio)
    box_h = torch.where(found, cand_h.gather(1, pick).squeeze(1), float(f_h))
    box_w = torch.where(found, cand_w.gather(1, pick).squeeze(1), float(f_w))
    # randint(0, n - size + 1) as floor(u * (n - size + 1)), guarded against rounding up.
    top = torch.minimum(torch.floor(draws[:, _TOP] * (height - box_h + 1)), height - box_h)
    left = torch.minimum(torch.floor(draws[:, _LEFT] * (width - box_w + 1)), width - box_w)
    top = torch.where(found, top, float(f_top))
    left = torch.where(found, left, float(f_left))
    return torch.stack([top, left, box_h, box_w], dim=1).to(torch.int64)


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, but the images are on {device}")


# --------------------------------------------------------------------------------------------
# The augmentation
# --------------------------------------------------------------------------------------------


class Augment:
    """Callable: images uint8 (B, H, W, 3) -> float32 (B, 3, S, S), normalised, channels_last."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        if config is None:
            config = AugmentConfig()
        if not isinstance(config, AugmentConfig):
            raise ValueError(f"config must be an AugmentConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"Augment({self.config!r})"

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_uint8_images(images)
        b, h, w, _ = images.shape
        return self.apply(images, self.sample_params(b, h, w, images.device, generator))

    def sample_params(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw every sample's parameters with one uniform draw from `generator` (global RNG if None)."""
        for name, value in (("batch", batch), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        device = torch.device(device)
        _check_generator(generator, device)
        low, span, coin_p = _draw_ranges(self.config, device)
        u = torch.rand(batch, _N_UNIFORMS, device=device, generator=generator)
        draws = torch.addcmul(low, u, span)
        coins = u[:, _COINS] < coin_p
        brightness, contrast, saturation, hue = draws[:, _JITTER_FACTORS].unbind(dim=1)
        return AugmentParams(
            boxes=_sample_boxes(draws, height, width, self.config.ratio),
            jitter_on=coins[:, 0],
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            jitter_order=torch.argsort(u[:, _ORDER_KEYS], dim=1),
            gray=coins[:, 1],
            blur_sigma=torch.where(coins[:, 2], draws[:, _BLUR_SIGMA], 0.0),
            flip=coins[:, 3],
        )

    @_exact
    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """The recipe with fixed parameters: deterministic, equal to torchvision op by op."""
        _check_uint8_images(images)
        b, h, w, _ = images.shape
        _check_params(params, b)
        cfg = self.config
        size = cfg.size
        wy, wx = _crop_matrices(params.boxes, h, w, size, flip=params.flip)
        x = _separable(_uint8_to_planar(images), wy * (1.0 / 255.0), wx)  # (B, 3, S, S)
        planes = x.view(b, 3, size * size)
        if cfg.jitter_p > 0 and any(v > 0 for v in cfg.jitter):
            planes = self._color_jitter(planes, params)
        if cfg.blur_p > 0:
            blurred = _blur(
                planes.view(b, 3, size, size), params.blur_sigma, blur_kernel_size(size)
            )
            planes = blurred.view(b, 3, size * size)
        out = self._gray_and_normalise(planes, params.gray).view(b, 3, size, size)
        return out.contiguous(memory_format=torch.channels_last)

    def _color_jitter(self, planes: Tensor, params: AugmentParams) -> Tensor:
        """ColorJitter in each sample's own op order: blends before hue, hue, blends after hue.

        Pass k of each stage applies the sample's k-th blend op if that op falls in the stage,
        else the identity (factor 1, exact); so 3 + 3 blend passes and one hue pass replace
        4 slots x 4 ops.
        """
        device = planes.device
        gray_w, eye = _gray_weights(device), _eye3(device)
        use_hue = self.config.jitter[HUE] > 0
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
        matrices, contrast_matrices = _blend_matrices(factor, saturation, contrast, gray_w, eye)
        for k in range(3):
            planes = _blend_pass(planes, matrices[k], contrast_matrices[k])
        if not use_hue:
            return planes
        shifted = _shift_hue(planes, params.hue)
        planes = torch.where(params.jitter_on.view(-1, 1, 1), shifted, planes)
        for k in range(3, 6):
            planes = _blend_pass(planes, matrices[k], contrast_matrices[k])
        return planes

    def _gray_and_normalise(self, planes: Tensor, gray: Tensor) -> Tensor:
        """RandomGrayscale then Normalize as one per-sample colour matrix plus bias."""
        device = planes.device
        gray_w, eye = _gray_weights(device), _eye3(device)
        _, std, bias = _normalise_constants(self.config.mean, self.config.std, device)
        to_gray = gray_w.view(1, 3).expand(3, 3)
        matrix = torch.where(gray.view(-1, 1, 1), to_gray, eye) / std  # rows scaled by 1/std
        return torch.baddbmm(bias, matrix, planes)


def _check_params(params: object, batch: int) -> None:
    """Shape checks only (no values: that would sync the device)."""
    if not isinstance(params, AugmentParams):
        raise ValueError(f"params must be AugmentParams, got {type(params).__name__}")
    expected = {"boxes": (batch, 4), "jitter_order": (batch, 4)}
    for field in fields(params):
        tensor = getattr(params, field.name)
        shape = expected.get(field.name, (batch,))
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(
                f"params.{field.name} must have shape {shape} for a batch of {batch}, got {got}"
            )


# --------------------------------------------------------------------------------------------
# Multi-crop and evaluation-time conversion
# --------------------------------------------------------------------------------------------


def multi_crop(
    images: Tensor,
    global_config: AugmentConfig,
    n_global: int,
    local_config: AugmentConfig | None = None,
    n_local: int = 0,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """n_global views with global_config, then n_local views with local_config.

    Views of one kind are augmented as one big batch (fewer, larger kernels); each sample of
    each view still draws its own parameters.
    """
    _check_uint8_images(images)
    if not isinstance(global_config, AugmentConfig):
        raise ValueError(f"global_config must be an AugmentConfig, got {global_config!r}")
    for name, n in (("n_global", n_global), ("n_local", n_local)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if n_local > 0 and not isinstance(local_config, AugmentConfig):
        raise ValueError(
            f"local_config must be an AugmentConfig when n_local > 0 (n_local={n_local}),"
            f" got {local_config!r}"
        )
    views: list[Tensor] = []
    for config, n in ((global_config, n_global), (local_config, n_local)):
        if n > 0:
            batch = Augment(config)(images.repeat(n, 1, 1, 1), generator)
            views.extend(batch.chunk(n, dim=0))
    return views


@_exact
def to_float(
    images: Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    size: int | None = None,
) -> Tensor:
    """No augmentation: uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W), channels_last.

    With `size`, the whole image is resized to size x size (bilinear, antialiased) first.
    """
    _check_uint8_images(images)
    mean, std = _float_tuple("mean", mean), _float_tuple("std", std)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must have 3 values (std > 0), got mean={mean}, std={std}")
    b, h, w, _ = images.shape
    mean_t, std_t, _ = _normalise_constants(mean, std, images.device)
    mean_t, std_t = mean_t.view(1, 3, 1, 1), std_t.view(1, 3, 1, 1)
    if size is None or (size == h and size == w):
        # The permuted uint8 batch is channels_last; the float ops keep that memory format.
        return images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    _check_size(size)
    whole = torch.zeros(b, 4, dtype=torch.int64, device=images.device)
    whole[:, 2], whole[:, 3] = h, w
    wy, wx = _crop_matrices(whole, h, w, size)
    x = _separable(_uint8_to_planar(images), wy * (1.0 / 255.0), wx).sub_(mean_t).div_(std_t)
    return x.contiguous(memory_format=torch.channels_last)
