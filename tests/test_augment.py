"""interlab.augment against torchvision.transforms.v2.functional, image by image.

References run on float32 images in [0, 1]. Our batched kernels compute the same formulas in
a different arithmetic order (GEMMs instead of elementwise chains), so agreement is at float32
rounding level: observed <= 1e-6 in [0, 1] units and <= 1e-5 after Normalize (which divides by
std ~ 0.25). Tolerances below are 1e-5 per op and 5e-5 for the whole recipe.
"""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from interlab.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Augment,
    AugmentConfig,
    AugmentParams,
    blur_kernel_size,
    multi_crop,
    resized_crop,
    to_float,
)
from interlab.devices import matmul_precision
from tests.augment_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    hflip,
    rgb_to_grayscale,
)

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10_mini.npz"
OP_TOL = 1e-5
PIPELINE_TOL = 5e-5


def load_cifar_images(count: int) -> torch.Tensor:
    """The first `count` training images of the embedded mini CIFAR-10 set, uint8 (N, 32, 32, 3)."""
    data = np.load(MINI)
    head, scans, offsets = data["jpeg_header"].tobytes(), data["train_scans"], data["train_offsets"]
    images = []
    for i in range(count):
        jpeg = head + scans[offsets[i] : offsets[i + 1]].tobytes()
        images.append(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    return torch.from_numpy(np.stack(images))


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    return load_cifar_images(24)


def random_uint8(batch: int, size: int, seed: int, width: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, size, size if width is None else width, 3)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def tied_uint8(batch: int, size: int, seed: int) -> torch.Tensor:
    """Pixels from {0, 128, 255}: many gray pixels and tied channel maxima (hue's edge cases)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    return levels[torch.randint(0, 3, (batch, size, size, 3), generator=generator)]


def unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], contiguous."""
    return images.permute(0, 3, 1, 2).float().div(255).contiguous()


def mixed_images(cifar: torch.Tensor) -> torch.Tensor:
    """Real, random and tie-heavy images as float (B, 3, 32, 32) in [0, 1]."""
    mixed = torch.cat([cifar[:8], random_uint8(4, 32, seed=1), tied_uint8(4, 32, seed=2)])
    return unit(mixed)


def max_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return (ours - reference).abs().max().item()


# --------------------------------------------------------------------------------------------
# Per-op kernels vs torchvision, image by image
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "size"),
    [(32, 32), (32, 48), (96, 64), (96, 32), (96, 160)],
    ids=["same", "up", "down", "down3x", "up-from-96"],
)
def test_resized_crop_matches_torchvision(cifar: torch.Tensor, side: int, size: int) -> None:
    images = cifar[:6] if side == 32 else random_uint8(6, side, seed=3)
    x = unit(images)
    boxes = (
        Augment(AugmentConfig(size=size, scale=(0.05, 1.0)))
        .sample_params(6, side, side, "cpu", torch.Generator().manual_seed(side + size))
        .boxes
    )
    boxes[0] = torch.tensor([0, 0, side, side])  # whole image
    boxes[1] = torch.tensor([side - 7, 0, 7, side])  # thin strip on the bottom edge
    ours = resized_crop(x, boxes, size)
    reference = torch.stack(
        [TF.resized_crop(x[i], *boxes[i].tolist(), [size, size], antialias=True) for i in range(6)]
    )
    assert max_error(ours, reference) < OP_TOL


def test_resized_crop_of_full_box_at_same_size_is_identity(cifar: torch.Tensor) -> None:
    x = unit(cifar[:4])
    boxes = torch.tensor([[0, 0, 32, 32]] * 4)
    assert torch.equal(resized_crop(x, boxes, 32), x)


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_color_op_matches_torchvision(cifar, ours, theirs, low, high) -> None:
    x = mixed_images(cifar)
    generator = torch.Generator().manual_seed(4)
    factors = low + (high - low) * torch.rand(x.shape[0], generator=generator)
    factors[:2] = torch.tensor([low, high])  # the range's ends
    result = ours(x, factors)
    reference = torch.stack([theirs(x[i], float(factors[i])) for i in range(x.shape[0])])
    assert max_error(result, reference) < OP_TOL
    assert result.min() >= 0 and result.max() <= 1


def test_color_op_accepts_a_scalar_factor(cifar: torch.Tensor) -> None:
    x = unit(cifar[:3])
    assert torch.allclose(adjust_brightness(x, 1.25), torch.clamp(x * 1.25, 0, 1), atol=1e-7)


def test_rgb_to_grayscale_matches_torchvision(cifar: torch.Tensor) -> None:
    x = mixed_images(cifar)
    result = rgb_to_grayscale(x)
    assert max_error(result, TF.rgb_to_grayscale(x, num_output_channels=3)) < OP_TOL
    assert torch.equal(result[:, 0], result[:, 2])


@pytest.mark.parametrize("side", [32, 96])
def test_gaussian_blur_matches_torchvision(cifar: torch.Tensor, side: int) -> None:
    x = unit(cifar[:6]) if side == 32 else unit(random_uint8(6, side, seed=5))
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.7, 0.0])  # 0 = leave the sample alone
    kernel_size = blur_kernel_size(side)
    result = gaussian_blur(x, sigma)
    for i in range(5):
        reference = TF.gaussian_blur(x[i], [kernel_size, kernel_size], [float(sigma[i])] * 2)
        assert max_error(result[i], reference) < OP_TOL
    assert torch.equal(result[5], x[5])


def test_gaussian_blur_with_explicit_kernel_size(cifar: torch.Tensor) -> None:
    x = unit(cifar[:2])
    result = gaussian_blur(x, 1.5, kernel_size=7)
    reference = TF.gaussian_blur(x, [7, 7], [1.5, 1.5])
    assert max_error(result, reference) < OP_TOL
    wide = unit(random_uint8(2, 12, seed=24, width=40))  # non-square: one matrix per axis
    reference = TF.gaussian_blur(wide, [11, 11], [2.5, 2.5])
    assert max_error(gaussian_blur(wide, 2.5, kernel_size=11), reference) < OP_TOL


def test_blur_kernel_size_is_odd_ten_percent() -> None:
    assert [blur_kernel_size(s) for s in (16, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


def test_hflip_flips_only_masked_samples(cifar: torch.Tensor) -> None:
    x = unit(cifar[:3])
    result = hflip(x, torch.tensor([True, False, True]))
    assert torch.equal(result[0], TF.horizontal_flip(x[0]))
    assert torch.equal(result[1], x[1])
    assert torch.equal(result[2], x[2].flip(-1))


# --------------------------------------------------------------------------------------------
# The whole recipe vs torchvision with the same parameters
# --------------------------------------------------------------------------------------------


def torchvision_recipe(images: torch.Tensor, params: AugmentParams, cfg: AugmentConfig):
    """The aug+ recipe by torchvision ops, one image at a time, with our sampled parameters."""
    k = blur_kernel_size(cfg.size)
    ops = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}
    factors = [params.brightness, params.contrast, params.saturation]
    outputs = []
    for i in range(images.shape[0]):
        x = unit(images[i : i + 1])[0]
        x = TF.resized_crop(x, *params.boxes[i].tolist(), [cfg.size, cfg.size], antialias=True)
        if params.jitter_on[i]:
            for op in params.jitter_order[i].tolist():
                if op == 3:
                    if cfg.jitter[3] > 0:  # torchvision skips an op whose jitter is 0
                        x = TF.adjust_hue(x, float(params.hue[i]))
                else:
                    x = ops[op](x, float(factors[op][i]))
        if params.gray[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if params.blur_sigma[i] > 0:
            x = TF.gaussian_blur(x, [k, k], [float(params.blur_sigma[i])] * 2)
        if params.flip[i]:
            x = TF.horizontal_flip(x)
        outputs.append(TF.normalize(x, list(cfg.mean), list(cfg.std)))
    return torch.stack(outputs)


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (AugmentConfig(), (32, 32)),
        (AugmentConfig(jitter_p=1.0, gray_p=0.3, blur_p=0.5), (32, 32)),
        (AugmentConfig(size=64, blur_p=0.5, mean=(0.5,) * 3, std=(0.5,) * 3), (96, 96)),
        (AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.0)), (32, 32)),
        (AugmentConfig(size=16, scale=(0.05, 0.4)), (32, 32)),
        (AugmentConfig(size=24, blur_p=0.5), (20, 44)),
    ],
    ids=["default", "blur-gray", "stl-96-to-64", "no-hue", "local-16", "non-square"],
)
def test_apply_matches_torchvision_recipe(cifar: torch.Tensor, cfg: AugmentConfig, shape):
    height, width = shape
    images = cifar[:24] if shape == (32, 32) else random_uint8(16, height, seed=6, width=width)
    augment = Augment(cfg)
    generator = torch.Generator().manual_seed(7)
    params = augment.sample_params(images.shape[0], height, width, "cpu", generator)
    result = augment.apply(images, params)
    assert max_error(result, torchvision_recipe(images, params, cfg)) < PIPELINE_TOL


def test_apply_ignores_autocast_and_keeps_matmul_precision(cifar: torch.Tensor) -> None:
    """The trainer's bf16 autocast / TF32 settings must not leak into the augmentation maths."""
    augment = Augment(AugmentConfig(blur_p=0.5))
    params = augment.sample_params(8, 32, 32, "cpu", torch.Generator().manual_seed(25))
    expected = augment.apply(cifar[:8], params)
    with matmul_precision("medium"), torch.autocast("cpu", dtype=torch.bfloat16):
        result = augment.apply(cifar[:8], params)
        assert torch.get_float32_matmul_precision() == "medium"  # restored after the call
    assert result.dtype == torch.float32
    assert torch.equal(result, expected)


def color_jitter_only(**overrides) -> AugmentConfig:
    """Crop = whole image, no gray/blur/flip: apply() is ColorJitter then Normalize."""
    keys = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "jitter_p": 1.0, "gray_p": 0.0, "flip_p": 0.0}
    keys.update(overrides)
    return AugmentConfig(**keys)


def test_color_jitter_follows_each_samples_order(cifar: torch.Tensor) -> None:
    images = torch.cat([cifar[:24], tied_uint8(8, 32, seed=8)]).repeat(4, 1, 1, 1)  # 128
    cfg = color_jitter_only(jitter=(0.6, 0.6, 0.6, 0.25))
    augment = Augment(cfg)
    params = augment.sample_params(128, 32, 32, "cpu", torch.Generator().manual_seed(9))
    assert len({tuple(o) for o in params.jitter_order.tolist()}) == 24  # every order occurs
    ours = augment.apply(images, params)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    jitter = {
        0: lambda x, i: TF.adjust_brightness(x, float(params.brightness[i])),
        1: lambda x, i: TF.adjust_contrast(x, float(params.contrast[i])),
        2: lambda x, i: TF.adjust_saturation(x, float(params.saturation[i])),
        3: lambda x, i: TF.adjust_hue(x, float(params.hue[i])),
    }
    for i in range(128):
        x = unit(images[i : i + 1])[0]
        for op in params.jitter_order[i].tolist():
            x = jitter[op](x, i)
        assert max_error(ours[i], (x - mean) / std) < PIPELINE_TOL


def test_color_jitter_order_changes_the_result(cifar: torch.Tensor) -> None:
    augment = Augment(color_jitter_only())
    params = augment.sample_params(8, 32, 32, "cpu", torch.Generator().manual_seed(10))
    forward = augment.apply(cifar[:8], params)
    params.jitter_order = params.jitter_order.flip(1)
    backward = augment.apply(cifar[:8], params)
    per_sample = (forward - backward).flatten(1).abs().amax(dim=1)
    assert (per_sample > 1e-3).all()


def test_jitter_off_samples_are_only_normalised(cifar: torch.Tensor) -> None:
    augment = Augment(color_jitter_only(jitter_p=0.0))
    params = augment.sample_params(4, 32, 32, "cpu", torch.Generator().manual_seed(11))
    expected = (unit(cifar[:4]) - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(3, 1, 1)
    assert max_error(augment.apply(cifar[:4], params), expected) < 1e-5


# --------------------------------------------------------------------------------------------
# Randomness: per sample, reproducible, torchvision's distributions
# --------------------------------------------------------------------------------------------


def test_samples_of_one_batch_get_different_parameters(cifar: torch.Tensor) -> None:
    same = cifar[:1].repeat(8, 1, 1, 1)
    augment = Augment()
    params = augment.sample_params(8, 32, 32, "cpu", torch.Generator().manual_seed(12))
    assert len({tuple(b) for b in params.boxes.tolist()}) == 8
    out = augment.apply(same, params).flatten(1)
    distances = torch.cdist(out, out)
    assert (distances + torch.eye(8) * 1e9 > 1.0).all()  # all pairs differ clearly


def test_seeded_calls_reproduce_and_seeds_differ(cifar: torch.Tensor) -> None:
    augment = Augment(AugmentConfig(blur_p=0.5))
    first = augment(cifar[:16], torch.Generator().manual_seed(13))
    again = augment(cifar[:16], torch.Generator().manual_seed(13))
    other = augment(cifar[:16], torch.Generator().manual_seed(14))
    assert torch.equal(first, again)
    assert (first - other).abs().amax().item() > 0.5


def test_global_rng_is_used_without_generator(cifar: torch.Tensor) -> None:
    augment = Augment()
    torch.manual_seed(15)
    first = augment(cifar[:4])
    torch.manual_seed(15)
    assert torch.equal(first, augment(cifar[:4]))


def within_sigmas(values: torch.Tensor, p: float, sigmas: float = 4.0) -> bool:
    n = values.numel()
    return abs(values.float().mean().item() - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_parameter_statistics() -> None:
    cfg = AugmentConfig(blur_p=0.3)
    n = 20000
    params = Augment(cfg).sample_params(n, 32, 32, "cpu", torch.Generator().manual_seed(16))
    for coin, p in [
        (params.jitter_on, cfg.jitter_p),
        (params.gray, cfg.gray_p),
        (params.flip, cfg.flip_p),
        (params.blur_sigma > 0, cfg.blur_p),
    ]:
        assert within_sigmas(coin, p)
    top, left, height, width = params.boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all()
    assert (left + width <= 32).all() and (height >= 1).all() and (width >= 1).all()
    area = (height * width).float() / 1024
    # Rounding w and h to integers moves the area fraction by at most ~2 * sqrt(area) / 1024.
    assert area.min() >= 0.2 - 2 * math.sqrt(0.2 * 1024) / 1024 and area.max() <= 1.0
    assert params.hue.abs().max() <= 0.1 and params.hue.abs().max() > 0.099
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor.min() >= 0.6 and factor.max() <= 1.4
    sigma = params.blur_sigma[params.blur_sigma > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert torch.equal(params.jitter_order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    # Each op is equally likely in each slot (16 checks at once: 5 sigma keeps false alarms rare).
    for slot in range(4):
        for op in range(4):
            assert within_sigmas(params.jitter_order[:, slot] == op, 0.25, sigmas=5.0)


def test_crop_distribution_matches_torchvision() -> None:
    """Area fraction and aspect ratio agree in mean with RandomResizedCrop.get_params."""
    n, height, width = 4000, 24, 40
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    augment = Augment(AugmentConfig(scale=scale, ratio=ratio))
    boxes = augment.sample_params(n, height, width, "cpu", torch.Generator().manual_seed(17)).boxes
    torch.manual_seed(18)
    image = torch.zeros(3, height, width)
    reference = torch.tensor([RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)])
    for stat in (
        lambda b: (b[:, 2] * b[:, 3]).float() / (height * width),
        lambda b: b[:, 3].float() / b[:, 2],
        lambda b: b[:, 0].float(),
    ):
        ours, theirs = stat(boxes), stat(reference)
        spread = math.sqrt((ours.var() + theirs.var()).item() / n)
        assert abs(ours.mean().item() - theirs.mean().item()) < 4 * spread


def test_crop_falls_back_to_torchvisions_centre_crop() -> None:
    """A 4x64 image cannot hold a 3/4..4/3 box of >= 99% area: every sample uses the fallback."""
    cfg = AugmentConfig(scale=(0.99, 1.0))
    boxes = Augment(cfg).sample_params(64, 4, 64, "cpu", torch.Generator().manual_seed(19)).boxes
    expected = RandomResizedCrop.get_params(torch.zeros(3, 4, 64), list(cfg.scale), list(cfg.ratio))
    assert expected == (0, 29, 4, 5)
    assert (boxes == torch.tensor(expected)).all()


# --------------------------------------------------------------------------------------------
# Shapes, identity, multi-crop, to_float
# --------------------------------------------------------------------------------------------


def test_output_shape_dtype_and_layout() -> None:
    out = Augment(AugmentConfig(size=64))(
        random_uint8(5, 96, seed=20), torch.Generator().manual_seed(0)
    )
    assert out.shape == (5, 3, 64, 64) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()


def identity_config() -> AugmentConfig:
    return AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, flip_p=0.0)


def test_identity_transform_is_normalisation(cifar: torch.Tensor) -> None:
    x = cifar[:8]
    expected = (unit(x) - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(3, 1, 1)
    out = Augment(identity_config())(x, torch.Generator().manual_seed(0))
    assert max_error(out, expected) < 1e-6
    assert max_error(to_float(x), expected) < 1e-6
    assert to_float(x).is_contiguous(memory_format=torch.channels_last)


def test_to_float_resizes_like_torchvision() -> None:
    images = random_uint8(3, 96, seed=21)
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    out = to_float(images, mean, std, size=64)
    reference = TF.normalize(
        TF.resize(unit(images), [64, 64], antialias=True), list(mean), list(std)
    )
    assert out.shape == (3, 3, 64, 64)
    assert max_error(out, reference) < PIPELINE_TOL


def test_multi_crop_returns_global_then_local_views(cifar: torch.Tensor) -> None:
    local = AugmentConfig(size=16, scale=(0.05, 0.4))
    views = multi_crop(cifar[:5], AugmentConfig(), 2, local, 3, torch.Generator().manual_seed(22))
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[2], views[3])
    assert multi_crop(cifar[:5], AugmentConfig(), 0) == []


def test_multi_crop_needs_local_config(cifar: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="local_config"):
        multi_crop(cifar[:2], AugmentConfig(), 2, None, 1)
    with pytest.raises(ValueError, match="n_global"):
        multi_crop(cifar[:2], AugmentConfig(), -1)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 0),
        ("size", 32.0),
        ("scale", (0.0, 1.0)),
        ("scale", (0.5, 0.2)),
        ("scale", (0.2, 1.5)),
        ("ratio", (4 / 3, 3 / 4)),
        ("ratio", (0.0, 1.0)),
        ("jitter", (-0.1, 0.4, 0.4, 0.1)),
        ("jitter", (0.4, 0.4, 0.4, 0.6)),
        ("jitter", (0.4, 0.4, 0.4)),
        ("jitter_p", 1.5),
        ("gray_p", -0.1),
        ("blur_p", 2.0),
        ("flip_p", "half"),
        ("blur_sigma", (0.0, 2.0)),
        ("mean", (0.5, 0.5)),
        ("std", (0.2, 0.0, 0.2)),
    ],
)
def test_bad_config_raises_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_config_accepts_lists_from_yaml() -> None:
    cfg = AugmentConfig(scale=[0.08, 1], mean=[0.5, 0.5, 0.5])
    assert cfg.scale == (0.08, 1.0) and cfg.mean == (0.5, 0.5, 0.5)
    assert cfg == AugmentConfig(scale=(0.08, 1.0), mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(2, 32, 32, 3),  # float
        torch.zeros(2, 3, 32, 32, dtype=torch.uint8),  # channels first
        torch.zeros(32, 32, 3, dtype=torch.uint8),  # no batch
        torch.zeros(0, 32, 32, 3, dtype=torch.uint8),  # empty
    ],
)
def test_bad_images_raise(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8 tensor"):
        Augment()(images)


def test_params_of_another_batch_size_raise(cifar: torch.Tensor) -> None:
    augment = Augment()
    params = augment.sample_params(3, 32, 32)
    with pytest.raises(ValueError, match=r"params\.boxes"):
        augment.apply(cifar[:4], params)


def test_functional_ops_reject_bad_arguments(cifar: torch.Tensor) -> None:
    x = unit(cifar[:2])
    with pytest.raises(ValueError, match="factor"):
        adjust_contrast(x, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="hue_factor"):
        adjust_hue(x, 0.7)
    with pytest.raises(ValueError, match="shape"):
        adjust_saturation(x, torch.ones(3))
    with pytest.raises(ValueError, match="boxes"):
        resized_crop(x, torch.tensor([[0, 0, 33, 32], [0, 0, 8, 8]]), 16)
    with pytest.raises(ValueError, match="float32"):
        adjust_brightness(cifar[:2], 1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_blur(x, 1.0, kernel_size=4)
    with pytest.raises(ValueError, match="mask"):
        hflip(x, torch.tensor([1, 0]))


# --------------------------------------------------------------------------------------------
# Benchmark script and GPU
# --------------------------------------------------------------------------------------------


def test_benchmark_script_reports_throughput(capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "augment_speed", ROOT / "benchmarks" / "augment_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--device", "cpu", "--batch", "16", "--iters", "2", "--warmup", "1"])
    assert result["images_per_s"] > 0 and result["device"] == "cpu"
    assert '"images_per_s"' in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs(cifar: torch.Tensor) -> None:
    cfg = AugmentConfig(blur_p=0.5)
    augment = Augment(cfg)
    params = augment.sample_params(24, 32, 32, "cpu", torch.Generator().manual_seed(23))
    on_cpu = augment.apply(cifar, params)
    images = cifar.cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    augment(images, generator)  # fill the per-device constant caches
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment(images, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cuda_params = AugmentParams(**{k: v.cuda() for k, v in vars(params).items()})
    with matmul_precision("high"):  # TF32, as the trainer sets it (interlab.devices.set_tf32)
        on_cuda = augment.apply(images, cuda_params).cpu()
    assert max_error(on_cuda, on_cpu) < PIPELINE_TOL
