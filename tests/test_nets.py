from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from interlab.nets import (
    BACKBONES,
    ConvNet,
    MLPHead,
    SplitBatchNorm2d,
    build_backbone,
    convert_split_batchnorm,
    make_momentum_copy,
    momentum_update,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "cifar_stem", "dim"),
    [
        ("resnet18", False, 512),
        ("resnet18", True, 512),
        ("resnet50", True, 2048),
        ("convnet", False, 256),
    ],
)
def test_backbone_maps_32px_images_to_pooled_features(name: str, cifar_stem: bool, dim: int):
    backbone = build_backbone(name, cifar_stem=cifar_stem).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 32, 32))
    assert backbone.feature_dim == dim
    assert features.shape == (2, dim)
    assert torch.isfinite(features).all()


def test_backbone_names_are_exported():
    assert set(BACKBONES) == {"resnet18", "resnet50", "convnet"}


def test_resnet_classifier_is_removed():
    backbone = build_backbone("resnet50")
    assert isinstance(backbone.fc, nn.Identity)
    assert sum(isinstance(m, nn.Linear) for m in backbone.modules()) == 0


def _layer4_output_shape(backbone: nn.Module) -> tuple[int, ...]:
    shapes = []
    handle = backbone.layer4.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    with torch.no_grad():
        backbone.eval()(torch.randn(1, 3, 32, 32))
    handle.remove()
    return tuple(shapes[0])


def test_cifar_stem_replaces_conv1_and_maxpool_keeping_4x4_at_the_last_stage():
    backbone = build_backbone("resnet18", cifar_stem=True)
    conv1 = backbone.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv1.bias is None
    assert (conv1.in_channels, conv1.out_channels) == (3, 64)
    assert isinstance(backbone.maxpool, nn.Identity)
    assert _layer4_output_shape(backbone) == (1, 512, 4, 4)


def test_imagenet_stem_shrinks_32px_to_1x1():
    backbone = build_backbone("resnet18", cifar_stem=False)
    assert backbone.conv1.kernel_size == (7, 7)
    assert isinstance(backbone.maxpool, nn.MaxPool2d)
    assert _layer4_output_shape(backbone) == (1, 512, 1, 1)


def test_convnet_ends_at_4x4_for_32px_inputs():
    convnet = ConvNet().eval()
    with torch.no_grad():
        maps = convnet.features(torch.randn(1, 3, 32, 32))
    assert maps.shape == (1, 256, 4, 4)
    assert ConvNet(widths=(8, 16), strides=(2, 2)).feature_dim == 16


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"'vgg16'.*resnet18.*resnet50.*convnet"):
        build_backbone("vgg16")


def test_convnet_rejects_strides_not_matching_widths():
    with pytest.raises(ValueError, match="strides"):
        ConvNet(widths=(8, 16), strides=(2,))


def _linear_shapes(head: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)]


def _count(head: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in head.modules())


def test_mlp_head_single_layer_is_one_linear():
    head = MLPHead(512, 2048, 128, num_layers=1)
    assert _linear_shapes(head) == [(512, 128)]
    assert _count(head, nn.ReLU) == 0
    assert head(torch.randn(3, 512)).shape == (3, 128)


def test_mlp_head_two_layers_is_linear_relu_linear():
    head = MLPHead(512, 2048, 128)
    assert [type(m) for m in head.layers] == [nn.Linear, nn.ReLU, nn.Linear]
    assert _linear_shapes(head) == [(512, 2048), (2048, 128)]
    assert head(torch.randn(3, 512)).shape == (3, 128)


def test_mlp_head_batch_norm_options():
    head = MLPHead(64, 32, 16, num_layers=3, batch_norm=True, last_bn=True)
    assert _linear_shapes(head) == [(64, 32), (32, 32), (32, 16)]
    assert _count(head, nn.BatchNorm1d) == 3
    assert _count(head, nn.ReLU) == 2
    assert head(torch.randn(4, 64)).shape == (4, 16)
    assert _count(MLPHead(64, 32, 16, batch_norm=True), nn.BatchNorm1d) == 1


def test_mlp_head_rejects_zero_layers():
    with pytest.raises(ValueError, match="num_layers"):
        MLPHead(8, 8, 8, num_layers=0)


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_momentum_update_matches_hand_formula_and_leaves_buffers_alone():
    online = _small_net()
    target = make_momentum_copy(_small_net())
    target[1].running_mean.fill_(-1.0)
    online[1].running_mean.fill_(3.0)
    online[1].num_batches_tracked.fill_(7)
    before = [p.clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for old, new, source in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * source, rtol=0, atol=1e-6)
    # The target keeps the statistics of its own passes (facebookresearch/moco, DINO).
    assert torch.equal(target[1].running_mean, torch.full((4,), -1.0))
    assert int(target[1].num_batches_tracked) == 0


def test_momentum_update_known_values():
    target, online = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    target.weight.data.fill_(1.0)
    online.weight.data.fill_(3.0)
    momentum_update(target, online, 0.75)
    assert target.weight.item() == pytest.approx(1.5)
    momentum_update(target, online, 0.0)
    assert target.weight.item() == pytest.approx(3.0)


def test_momentum_update_builds_no_graph_and_touches_no_grads():
    online = _small_net()
    target = make_momentum_copy(online)
    momentum_update(target, online, 0.5)
    assert all(p.grad is None and p.grad_fn is None for p in target.parameters())
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.grad is None and p.requires_grad for p in online.parameters())


def test_momentum_update_rejects_mismatched_modules_and_bad_momentum():
    with pytest.raises(ValueError, match="parameters"):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), 0.9)
    with pytest.raises(ValueError, match="shape"):
        momentum_update(nn.Linear(2, 2), nn.Linear(3, 2), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)


def test_make_momentum_copy_is_independent_and_frozen():
    online = _small_net()
    copy = make_momentum_copy(online)
    assert all(not p.requires_grad for p in copy.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(copy.parameters(), online.parameters(), strict=True)
    )
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(copy[0].weight, online[0].weight)


def _randomised_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Non-trivial affine parameters and running statistics, so copies are really checked."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def _chunks(batch: int, splits: int) -> list[slice]:
    size = batch // splits
    return [slice(g * size, (g + 1) * size) for g in range(splits)]


def _per_group_reference(
    initial: dict[str, torch.Tensor], inputs: torch.Tensor, splits: int, momentum: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain BatchNorm2d applied to each contiguous chunk of B/splits samples separately
    (loop in the test only).

    Returns the stitched output and the mean over groups of the updated running mean / var.
    """
    output = torch.empty_like(inputs)
    means, variances = [], []
    for group in _chunks(len(inputs), splits):
        reference = nn.BatchNorm2d(inputs.shape[1], momentum=momentum)
        reference.load_state_dict(initial)
        output[group] = reference.train()(inputs[group])
        means.append(reference.running_mean)
        variances.append(reference.running_var)
    return output, torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_split_batchnorm_matches_per_group_batchnorm(momentum: float | None):
    splits, channels = 3, 5
    split = _randomised_bn(SplitBatchNorm2d(channels, splits, momentum=momentum))
    initial = {key: value.clone() for key, value in split.state_dict().items()}
    inputs = torch.randn(12, channels, 4, 3) * 2 + 1

    with torch.no_grad():
        output = split.train()(inputs)
        expected, mean, var = _per_group_reference(initial, inputs, splits, momentum)

    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.running_var, var, rtol=1e-5, atol=1e-6)
    # The groups really differ: one BN over the whole batch would give other values.
    whole = nn.BatchNorm2d(channels)
    whole.load_state_dict(initial)
    assert not torch.allclose(whole.train()(inputs), expected, atol=1e-3)


def test_split_batchnorm_running_stats_after_two_steps():
    splits, channels = 4, 3
    split = _randomised_bn(SplitBatchNorm2d(channels, splits, momentum=0.3))
    state = {key: value.clone() for key, value in split.state_dict().items()}
    for _ in range(2):
        inputs = torch.randn(8, channels, 5, 5) * 3 - 2
        with torch.no_grad():
            split.train()(inputs)
            _, mean, var = _per_group_reference(state, inputs, splits, 0.3)
        state.update(running_mean=mean, running_var=var)
    torch.testing.assert_close(split.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(split.num_batches_tracked) == 2


def test_split_batchnorm_gradients_match_per_group_batchnorm():
    splits, channels = 2, 4
    split = _randomised_bn(SplitBatchNorm2d(channels, splits))
    reference = nn.BatchNorm2d(channels)
    reference.load_state_dict(split.state_dict())
    inputs = torch.randn(6, channels, 3, 3)
    upstream = torch.randn(6, channels, 3, 3)

    split_inputs = inputs.clone().requires_grad_(True)
    (split.train()(split_inputs) * upstream).sum().backward()

    reference_inputs = inputs.clone().requires_grad_(True)
    for group in _chunks(6, splits):  # reference only
        out = reference.train()(reference_inputs[group])
        (out * upstream[group]).sum().backward()

    torch.testing.assert_close(split_inputs.grad, reference_inputs.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_split_batchnorm_on_channels_last_matches_per_group_batchnorm_without_copies(momentum):
    """channels_last in, channels_last out: the groups are a view, so the forward makes no
    copy of the activations (the old strided grouping copied every BN input to NCHW)."""
    from torch.profiler import ProfilerActivity, profile

    splits, channels = 4, 6
    split = _randomised_bn(SplitBatchNorm2d(channels, splits, momentum=momentum))
    initial = {key: value.clone() for key, value in split.state_dict().items()}
    inputs = (torch.randn(8, channels, 5, 3) * 2 + 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        output = split.train()(inputs)
    expected, mean, var = _per_group_reference(initial, inputs.contiguous(), splits, momentum)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.running_var, var, rtol=1e-5, atol=1e-6)
    assert output.is_contiguous(memory_format=torch.channels_last)
    copies = [
        (event.name, event.input_shapes)
        for event in prof.events()
        if event.name in ("aten::copy_", "aten::clone", "aten::repeat")
        and any(math.prod(shape) >= inputs.numel() for shape in event.input_shapes if shape)
    ]
    assert copies == []


def test_split_batchnorm_in_bf16_computes_in_float32_even_far_from_zero():
    """bf16 activations with a mean of 20 and unit spread: statistics taken in bf16, or the
    output formed from bf16 factors, lost 4% of the weight gradient and 0.15 of the output
    (a float64 reference on the same bf16 inputs). Computed in float32 and rounded once,
    the output and input gradient are within bf16's rounding (2^-8 of their largest value)
    and the parameter gradients within 1e-5."""
    from interlab.nets import _GroupBatchNorm

    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(8, 6, 5, 5, generator=generator) + 20).to(torch.bfloat16)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(6, generator=generator) + 0.5, torch.randn(6, generator=generator)
    upstream = torch.randn(8, 6, 5, 5, generator=generator).to(torch.bfloat16)

    def run(x, w, b, dy):
        x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))
        output = _GroupBatchNorm.apply(x, w, b, 4, 1e-5)[0]
        (output * dy).sum().backward()
        return output, x.grad, w.grad, b.grad

    low = run(inputs, weight, bias, upstream)
    reference = run(*(t.double() for t in (inputs, weight, bias, upstream)))
    assert low[0].dtype == low[1].dtype == torch.bfloat16
    assert low[0].is_contiguous(memory_format=torch.channels_last)
    for name, mine, exact in zip(("output", "input grad"), low[:2], reference[:2], strict=True):
        error = (mine.double() - exact).abs().max().item()
        assert error <= exact.abs().max().item() / 2**8, (name, error)
    for mine, exact in zip(low[2:], reference[2:], strict=True):
        torch.testing.assert_close(mine.double(), exact, rtol=1e-5, atol=1e-5)


def test_split_batchnorm_eval_equals_plain_batchnorm_eval():
    split = _randomised_bn(SplitBatchNorm2d(6, 4))
    plain = nn.BatchNorm2d(6)
    plain.load_state_dict(split.state_dict())
    inputs = torch.randn(5, 6, 2, 2)  # eval needs no divisibility
    torch.testing.assert_close(split.eval()(inputs), plain.eval()(inputs), rtol=0, atol=1e-6)


def test_split_batchnorm_rejects_indivisible_batch_and_single_value_groups():
    with pytest.raises(ValueError, match=r"batch size 10.*num_splits=4"):
        SplitBatchNorm2d(3, 4).train()(torch.randn(10, 3, 2, 2))
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        SplitBatchNorm2d(3, 4).train()(torch.randn(4, 3, 1, 1))


def test_convert_split_batchnorm_keeps_weights_and_outputs():
    model = build_backbone("resnet18", cifar_stem=True)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _randomised_bn(module)
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(inputs)

    converted = convert_split_batchnorm(model, num_splits=2)

    splits = [m for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(splits) == bn_count == 20
    assert all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 2 for m in splits)
    assert converted.state_dict().keys() == state.keys()
    assert all(torch.equal(converted.state_dict()[key], value) for key, value in state.items())
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(inputs), before, rtol=0, atol=0)


def test_convert_split_batchnorm_on_a_bare_batchnorm_returns_a_split_copy():
    bn = _randomised_bn(nn.BatchNorm2d(3, momentum=0.2, eps=1e-3)).eval()
    split = convert_split_batchnorm(bn, 2)
    assert isinstance(split, SplitBatchNorm2d)
    assert (split.momentum, split.eps, split.training) == (0.2, 1e-3, False)
    assert torch.equal(split.weight, bn.weight)
    assert torch.equal(split.running_var, bn.running_var)


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_batchnorm_backward_passes_gradcheck(channels_last: bool):
    """The hand-written backward against finite differences, in float64, both layouts."""
    split = _randomised_bn(SplitBatchNorm2d(3, 2)).double().train()
    split.track_running_stats = False  # gradcheck calls forward many times
    inputs = torch.randn(4, 3, 3, 2, dtype=torch.float64)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    inputs.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.nn.functional.relu(split(x)) * 0 + split(x) * x,
        (inputs, split.weight, split.bias),
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_batchnorm_hand_written_backward_equals_autograd_of_the_plain_arithmetic(
    channels_last: bool,
):
    """What torch.compile traces (`_group_batch_norm`) and what eager runs give the same
    outputs and gradients."""
    from interlab.nets import _group_batch_norm, _GroupBatchNorm

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 5, 4, 3, generator=generator) * 2 + 1
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    weight = torch.rand(5, generator=generator) + 0.5
    bias = torch.randn(5, generator=generator)
    upstream = torch.randn(8, 5, 4, 3, generator=generator)
    results = []
    for function in (_GroupBatchNorm.apply, _group_batch_norm):
        x, w, b = (t.clone().requires_grad_(True) for t in (inputs, weight, bias))
        output, mean, var = function(x, w, b, 4, 1e-5)
        (output * upstream).sum().backward()
        results.append((output, mean, var, x.grad, w.grad, b.grad))
    for mine, reference in zip(*results, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
