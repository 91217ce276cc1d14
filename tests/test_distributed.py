"""Two CPU ranks with the gloo backend: DDP keeps weights and the MoCo queue identical, and a
sliced two-rank run resumes to the uninterrupted run's state."""

import os
import socket

import torch
import torch.multiprocessing as mp

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


# ---- resume: a sliced two-rank run reaches the uninterrupted one's state ---------------------


def resume_rank(rank: int, world: int, port: int, out: str, data: str) -> None:
    set_rank_environment(rank, world, port)
    from interlab.train import Trainer

    def config(name):
        return cpu_config(
            os.path.join(out, name), data, epochs=2, batch_size=32, eval_every=0,
            checkpoint_every=1, queue_size=384, amp=False, channels_last=False,
        )  # fmt: skip

    whole = Trainer(config("whole"), progress=False).fit(resume=False)
    Trainer(config("sliced"), progress=False).fit(resume=False, stop_after_epochs=1)
    # One process per rank lives on here (torchrun would start new ones): wait for rank 0's
    # checkpoint before the resume reads it.
    torch.distributed.barrier()
    resumed = Trainer(config("sliced"), progress=False).fit(resume=True)
    states = {
        name: {k: v.detach().clone() for k, v in result.method.state_dict().items()}
        for name, result in (("whole", whole), ("resumed", resumed))
    }
    torch.save(states, os.path.join(out, f"resume{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_rank_run_sliced_and_resumed_reaches_the_uninterrupted_state(tmp_path, tiny_npz):
    """Both ranks' augmentation streams must continue where they stopped: rank 1's draws feed
    the averaged gradients as much as rank 0's."""
    rank0, rank1 = spawn_two_ranks(resume_rank, str(tmp_path / "ddp"), f"npz:{tiny_npz}", "resume")
    for rank in (rank0, rank1):
        assert_same_state(rank["whole"], rank["resumed"], exact=("queue_ptr",))
