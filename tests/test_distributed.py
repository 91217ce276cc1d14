"""Two CPU ranks with the gloo backend: DDP keeps weights and the MoCo queue identical,
SimCLR's gathered negatives pass gradient back, DINO / SCFS centres average over ranks, and a
sliced two-rank run resumes to the uninterrupted run's state."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from interlab.augment import AugmentConfig
from interlab.config import build_config
from interlab.data import load_dataset
from interlab.losses import nt_xent
from interlab.methods import build_method
from tests.conftest import assert_same_state, cpu_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_environment(rank: int, world: int, port: int) -> None:
    """What torchrun would set for this rank (the trainer joins the gloo group from it)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def train_rank(rank: int, world: int, port: int, out: str, data: str) -> None:
    set_rank_environment(rank, world, port)
    from interlab.train import Trainer

    config = cpu_config(
        out, data, epochs=1, batch_size=32, eval_every=0, checkpoint_every=1, queue_size=384
    )
    trainer = Trainer(config, progress=False)
    initial_queue = trainer.method.queue.clone()
    trainer.order_generator.manual_seed(123)
    order = trainer.epoch_order()
    trainer.order_generator.manual_seed(config.seed)
    trainer.fit(resume=False)
    state = {k: v.detach().cpu() for k, v in trainer.method.state_dict().items()}
    torch.save(
        {"state": state, "initial_queue": initial_queue, "order": order.cpu()},
        os.path.join(out, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


def spawn_two_ranks(worker, out: str, data: str, prefix: str) -> tuple[dict, dict]:
    """Run `worker(rank, 2, port, out, data)` on two gloo ranks; load what each saved."""
    os.makedirs(out)
    mp.spawn(worker, args=(2, free_port(), out, data), nprocs=2, join=True)
    return tuple(torch.load(os.path.join(out, f"{prefix}{rank}.pt")) for rank in (0, 1))


def test_two_ranks_keep_weights_and_queue_identical(tmp_path, tiny_npz):
    out = str(tmp_path / "ddp")
    rank0, rank1 = spawn_two_ranks(train_rank, out, f"npz:{tiny_npz}", "rank")
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    assert not torch.equal(rank0["state"]["queue"], rank0["initial_queue"])  # keys were enqueued
    # 256 images / 2 ranks / batch 32 = 4 steps, each enqueueing 2 ranks x 32 gathered keys.
    assert int(rank0["state"]["queue_ptr"]) == 4 * 64
    # Each rank draws a disjoint half of every epoch.
    orders = torch.cat([rank0["order"], rank1["order"]])
    assert len(rank0["order"]) == len(rank1["order"]) == 128
    assert torch.equal(orders.sort().values, torch.arange(256))


# ---- one spawn, three checks: SimCLR's gradient, distillation centres, a sliced resume ------
# Starting two ranks costs more than all three checks together, so one worker does them in
# turn and saves what each test needs; a module-scoped fixture runs it once.

SIMCLR_BATCH = 4  # images per rank
DISTILL_BATCH = 16
# DINO / SCFS sized for a CPU test: the ConvNet, small heads, two 16 px local crops.
DISTILL_SMALL = {
    "backbone": "convnet", "cifar_stem": False, "batch_size": DISTILL_BATCH, "out_dim": 64,
    "head_hidden": 64, "head_bottleneck": 32, "n_local": 2,
}  # fmt: skip
SCFS_SMALL = {"shallow_hidden": 32, "shallow_dim": 32}
LAYER_CENTRES = ("center_layer2", "center_layer3", "center_layer4")


def small_simclr():
    """The same SimCLR on every rank (same seed), small enough to step in a fraction of a second."""
    config = build_config(
        {"method": "simclr", "backbone": "convnet", "proj_hidden": 64, "batch_size": SIMCLR_BATCH}
    )
    torch.manual_seed(0)
    return build_method(config, AugmentConfig())


def rank_views(rank: int) -> list[torch.Tensor]:
    """Two fixed float views of this rank's images (each rank its own)."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(SIMCLR_BATCH, 3, 32, 32, generator=generator) for _ in range(2)]


def small_distiller(name: str):
    extra = SCFS_SMALL if name == "scfs" else {}
    config = build_config({"method": name, **DISTILL_SMALL, **extra})
    torch.manual_seed(0)
    method = build_method(config, AugmentConfig(size=32), 256)
    method.generator = torch.Generator().manual_seed(0)
    return method


def simclr_gradients(rank: int) -> dict[str, torch.Tensor]:
    """The gradients one SimCLR step under DDP leaves on this rank's parameters."""
    simclr = small_simclr()
    model = torch.nn.parallel.DistributedDataParallel(simclr, broadcast_buffers=False)
    model(rank_views(rank), torch.arange(SIMCLR_BATCH))["loss"].backward()
    return {name: p.grad.clone() for name, p in simclr.named_parameters()}


def distillation_centres(rank: int, data: str) -> dict[str, dict]:
    """One forward of DINO and of SCFS on this rank's own 16 images: the initial state, the
    global crops and the centres after the step."""
    images = load_dataset(data, "train").images[DISTILL_BATCH * rank : DISTILL_BATCH * (rank + 1)]
    saved = {}
    for name in ("dino", "scfs"):
        method = small_distiller(name)
        initial = {k: v.clone() for k, v in method.state_dict().items()}
        views = method.make_views(images)
        with torch.no_grad():
            method(views, torch.arange(DISTILL_BATCH))
        centres = {k: v.clone() for k, v in method.state_dict().items() if k.startswith("center")}
        saved[name] = {"initial": initial, "globals": views[:2], "centres": centres}
    return saved


def whole_and_resumed_states(out: str, data: str) -> dict[str, dict]:
    """A 2-epoch MoCo run straight through, and the same run stopped after epoch 1 and resumed."""
    from interlab.train import Trainer

    def config(name):
        return cpu_config(
            os.path.join(out, name), data, epochs=2, batch_size=32, eval_every=0,
            checkpoint_every=1, queue_size=384, amp=False, channels_last=False,
        )  # fmt: skip

    whole = Trainer(config("whole"), progress=False).fit(resume=False)
    Trainer(config("sliced"), progress=False).fit(resume=False, stop_after_epochs=1)
    # These processes live on (torchrun would start new ones): wait for rank 0's checkpoint.
    torch.distributed.barrier()
    resumed = Trainer(config("sliced"), progress=False).fit(resume=True)
    return {
        name: {k: v.detach().clone() for k, v in result.method.state_dict().items()}
        for name, result in (("whole", whole), ("resumed", resumed))
    }


def three_checks_rank(rank: int, world: int, port: int, out: str, data: str) -> None:
    set_rank_environment(rank, world, port)
    torch.distributed.init_process_group("gloo")  # the trainer then joins this group
    saved = {
        "simclr": simclr_gradients(rank),
        **distillation_centres(rank, data),
        "resume": whole_and_resumed_states(out, data),
    }
    torch.save(saved, os.path.join(out, f"checks{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_checks(tmp_path_factory, tiny_npz):
    """What each of the two ranks saved, rank 0 first."""
    out = str(tmp_path_factory.mktemp("checks") / "ddp")
    return spawn_two_ranks(three_checks_rank, out, f"npz:{tiny_npz}", "checks")


def test_simclr_gradient_reaches_each_rank_through_the_other_rank_s_embeddings(two_rank_checks):
    """Both ranks compute the same loss L over the 2 x 4 gathered embeddings. The gather's
    backward sums every rank's dL/dz onto the rank that produced z, so rank k's local gradient
    is 2 (dL/dz_k)(dz_k/dθ); DDP then averages the two ranks, which leaves exactly dL/dθ of
    one process computing L over the global batch (each rank's half, both views in one call
    as SimCLR runs them, through the encoder on its own, as its BatchNorm sees it): scale 1.
    A gather without gradient would give half."""
    grad0, grad1 = (rank["simclr"] for rank in two_rank_checks)
    method = small_simclr()
    halves = [rank_views(0), rank_views(1)]
    per_rank = [method.encoder(torch.cat(views)).chunk(2) for views in halves]
    z1 = torch.cat([z[0] for z in per_rank])
    z2 = torch.cat([z[1] for z in per_rank])
    nt_xent(z1, z2, 0.5).backward()
    for name, parameter in method.named_parameters():
        assert torch.equal(grad0[name], grad1[name]), name
        torch.testing.assert_close(grad0[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)

    last = "encoder.head.layers.3.weight"
    method.zero_grad()  # rank 0's images alone: the other rank's negatives do change it
    nt_xent(method.encoder(halves[0][0]), method.encoder(halves[0][1]), 0.5).backward()
    assert not torch.allclose(grad0[last], method.get_parameter(last).grad, rtol=0.05)


def teacher_means(name: str, saved: dict) -> dict[str, torch.Tensor]:
    """Per centre, the mean teacher output over one rank's global crops, with its weights."""
    method = small_distiller(name)
    method.load_state_dict(saved["initial"])
    with torch.no_grad():
        teacher = method.run(method.teacher, saved["globals"])
        means = {"center": teacher.logits.reshape(-1, teacher.logits.shape[-1]).mean(0)}
        for layer, maps in teacher.global_maps.items():
            means[f"center_layer{layer}"] = method.teacher["shallow"][str(layer)](maps).mean(0)
    return means


@pytest.mark.parametrize(
    ("name", "centres"),
    [("dino", {"center"}), ("scfs", {"center", *LAYER_CENTRES})],
    ids=["dino", "scfs"],
)
def test_distillation_centres_average_the_teacher_outputs_of_both_ranks(
    two_rank_checks, name, centres
):
    rank0, rank1 = (rank[name] for rank in two_rank_checks)
    assert set(rank0["centres"]) == centres
    means0, means1 = teacher_means(name, rank0), teacher_means(name, rank1)
    for key in centres:
        assert torch.equal(rank0["centres"][key], rank1["centres"][key]), key
        # From zero: 0.9 * 0 + 0.1 * the mean over both ranks' batches (of equal sizes).
        expected = 0.1 * (means0[key] + means1[key]) / 2
        torch.testing.assert_close(rank0["centres"][key][0], expected, msg=key)
        alone = 0.1 * means0[key]  # what rank 0 would hold from its own batch
        assert not torch.allclose(rank0["centres"][key][0], alone, atol=1e-4), key


def test_two_rank_run_sliced_and_resumed_reaches_the_uninterrupted_state(two_rank_checks):
    """Each rank's augmentation stream must continue where it stopped: rank 1's draws feed
    the averaged gradients as much as rank 0's."""
    for rank in two_rank_checks:
        states = rank["resume"]
        assert_same_state(states["whole"], states["resumed"], exact=("queue_ptr",))
