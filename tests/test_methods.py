import json
import math
from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F

import interlab.methods.moco as moco_module
from interlab import nets
from interlab.augment import AugmentConfig
from interlab.config import build_config
from interlab.lab.quickstart import quickstart_config, untrained_knn
from interlab.losses import info_nce
from interlab.methods import build_method
from interlab.train import train
from tests.conftest import cpu_config


def make(method: str, **keys):
    config = build_config({"method": method, "backbone": "convnet", "batch_size": 8, **keys})
    torch.manual_seed(0)
    return build_method(config, AugmentConfig())


def views(batch: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(2)]


def test_queue_wraps_around_and_keeps_fifo_order():
    moco = make("moco", queue_size=10, split_bn=1)
    batches = [F.normalize(torch.randn(4, 128), dim=1) for _ in range(3)]
    for keys in batches:
        moco.enqueue(keys)
    assert int(moco.queue_ptr) == 2  # 12 keys into 10 slots
    assert torch.equal(moco.queue[0:2], batches[2][2:4])  # the oldest two were overwritten
    assert torch.equal(moco.queue[4:8], batches[1])
    assert torch.equal(moco.queue[8:10], batches[2][0:2])


def test_shuffled_keys_come_back_in_batch_order():
    moco = make("moco", split_bn=1)
    moco.key_encoder.eval()  # batch-independent, so shuffling must not change any key
    images = views()[0]
    moco.generator = torch.Generator().manual_seed(5)
    shuffled = moco.keys(images)
    moco.options.shuffle_keys = False
    assert torch.allclose(shuffled, moco.keys(images), atol=1e-6)


def per_view_copy(moco):
    """A copy of `moco` whose encoders run one view per call, each with `split_bn` groups:
    the reference for the batched passes (one query pass and one key pass over both views)."""
    copy = deepcopy(moco)
    for module in (*copy.encoder.modules(), *copy.key_encoder.modules()):
        if isinstance(module, nets.SplitBatchNorm2d):
            module.num_splits = moco.options.split_bn
    return copy


def test_symmetric_loss_is_the_sum_of_both_directions():
    moco = make("moco", symmetric=True, shuffle_keys=False, split_bn=1, queue_size=64)
    moco.train()
    reference = per_view_copy(moco)
    v1, v2 = views()
    queue = moco.queue.clone()
    torch.manual_seed(3)
    loss = moco(views(), torch.arange(8))["loss"]
    with torch.no_grad():
        q1, q2 = reference.encoder(v1), reference.encoder(v2)
        k1, k2 = reference.key_encoder(v1), reference.key_encoder(v2)
    expected = info_nce(q1, k2, queue, 0.2) + info_nce(q2, k1, queue, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(moco.queue[:16], torch.cat([k2, k1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "proj_bn"), [("moco", False), ("interclr", False), ("moco", True)]
)
def test_batched_views_give_the_losses_and_gradients_of_a_pass_per_view(method, proj_bn):
    """One query pass and one key pass over both views (2 x split_bn BN groups) against the
    former four passes of one view each (split_bn groups each): same loss, same gradients.
    With BN in the head (not split) the views keep a pass each, so it holds there too."""
    keys = {"symmetric": True, "shuffle_keys": False, "split_bn": 4, "queue_size": 64}
    keys["proj_bn"] = proj_bn
    if method == "interclr":
        keys = {**keys, "inter_warmup_epochs": 1, "epochs": 2}  # the intra branch alone
        model = build_method(
            build_config({"method": method, "backbone": "convnet", "batch_size": 8, **keys}),
            AugmentConfig(),
            num_samples=400,
        )
    else:
        model = make(method, **keys)
    model.train()
    reference = per_view_copy(model)
    v1, v2 = views()
    loss = model([v1, v2], torch.arange(8))["loss"]
    loss.backward()
    queue = reference.queue.clone()
    q1, q2 = reference.encoder(v1), reference.encoder(v2)
    with torch.no_grad():
        k1, k2 = reference.key_encoder(v1), reference.key_encoder(v2)
    expected = info_nce(q1, k2, queue, 0.2) + info_nce(q2, k1, queue, 0.2)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for (name, mine), theirs in zip(
        model.encoder.named_parameters(), reference.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert model.batched_views is not proj_bn
    # the groups really are per view: one BN over both views would give another loss
    pooled = per_view_copy(model)
    for module in pooled.encoder.modules():
        if isinstance(module, nets.SplitBatchNorm2d):
            module.num_splits = 4
    with torch.no_grad():
        q = pooled.encoder(torch.cat([v1, v2]))
    mixed = info_nce(q[:8], k2, queue, 0.2) + info_nce(q[8:], k1, queue, 0.2)
    assert abs(mixed.item() - expected.item()) > 1e-3


def test_momentum_step_moves_keys_towards_queries():
    moco = make("moco", encoder_momentum=0.9, split_bn=1)
    with torch.no_grad():
        for p in moco.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.after_step(0.5)
    for old, new, online in zip(
        before, moco.key_encoder.parameters(), moco.encoder.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.9 * old + 0.1 * online)
        assert not new.requires_grad


def test_queue_smaller_than_a_step_is_rejected():
    with pytest.raises(
        ValueError, match="queue_size=8 is smaller than the keys enqueued per step \\(16\\)"
    ):
        make("moco", queue_size=8, symmetric=True)


# Two images, two views each, as unit vectors with simple cosines between them.
VIEW1 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # image a, image b
VIEW2 = [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]


def nt_xent_by_hand(view1, view2, temperature):
    """Each of the 4 views must pick its partner among the 3 others: mean of -log softmax."""
    views = view1 + view2
    partner = {0: 2, 1: 3, 2: 0, 3: 1}
    losses = []
    for i, anchor in enumerate(views):
        scores = {
            j: math.exp(sum(x * y for x, y in zip(anchor, other, strict=True)) / temperature)
            for j, other in enumerate(views)
            if j != i
        }
        losses.append(-math.log(scores[partner[i]] / sum(scores.values())))
    return sum(losses) / len(losses)


def test_simclr_loss_is_nt_xent_by_hand_on_fixed_embeddings():
    """The encoder is swapped for the identity, so the views are the embeddings."""
    simclr = make("simclr")
    simclr.encoder = torch.nn.Identity()
    loss = simclr([torch.tensor(VIEW1), torch.tensor(VIEW2)], torch.arange(2))["loss"]
    expected = nt_xent_by_hand(VIEW1, VIEW2, 0.5)  # SimCLR's default temperature
    # Per anchor (a1, b1, a2, b2): 0.4715, 1.0271, 1.1874, 0.7361, worked out on paper.
    assert expected == pytest.approx(0.8555, abs=1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert simclr.options.temperature == 0.5


def test_key_encoder_keeps_its_own_bn_statistics_and_training_is_unchanged(
    tmp_path, tiny_npz, monkeypatch
):
    """facebookresearch/moco's builder EMAs the key encoder's parameters only. Its BN runs in
    train mode (batch statistics), so its running statistics never enter a loss: the query
    encoder, the queue and every loss stay the same to the bit as with copied statistics."""
    data = f"npz:{tiny_npz}"
    params_only = train(cpu_config(tmp_path / "a", data, epochs=1), progress=False)

    class CopyBuffersToo(nets.MomentumUpdate):  # the previous helper, for comparison
        def __init__(self, target, online):
            super().__init__(target, online)
            self.pairs = list(zip(target.buffers(), online.buffers(), strict=True))

        def __call__(self, momentum):
            super().__call__(momentum)
            with torch.no_grad():
                for mine, theirs in self.pairs:
                    mine.copy_(theirs)

    monkeypatch.setattr(moco_module, "MomentumUpdate", CopyBuffersToo)
    copied = train(cpu_config(tmp_path / "b", data, epochs=1), progress=False)
    a, b = params_only.method, copied.method
    expected = b.encoder.state_dict()
    for name, value in a.encoder.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(a.queue, b.queue)
    assert params_only.final["loss"] == copied.final["loss"]
    key_bn, query_bn = (
        next(m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
        for encoder in (a.key_encoder, a.encoder)
    )
    assert not torch.allclose(key_bn.running_mean, query_bn.running_mean)  # its own passes
    copied_key_bn = next(m for m in b.key_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(copied_key_bn.running_mean, query_bn.running_mean)  # the old copy


@pytest.mark.slow
def test_short_simclr_run_beats_the_untrained_network(tmp_path):
    """The quickstart's CPU set-up with SimCLR's own defaults (2048-wide BN head, t 0.5)."""
    config = quickstart_config("simclr", device="cpu", epochs=2, out_dir=str(tmp_path))
    before = untrained_knn(config)
    after = train(config, progress=False).final["knn_top1"]
    print(json.dumps({"untrained": before, "trained": after}))
    # Measured: 0.297 -> 0.370 (+7.3 points) in 2 epochs, 12 s on 2 idle cores (56 s when
    # shared); assert a safe part of it.
    assert after > before + 0.04
