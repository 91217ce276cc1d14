"""Streaming from shards (`--data shards:DIR`): reading, per-image crops, training and resume.

Built on the generated tree of test_prepare (mixed JPEG/PNG, 40-500 px, grayscale, CMYK,
broken files), prepared once at max side 96.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from interlab.augment import AugmentConfig
from interlab.augment.params import _sample_boxes, sample_params
from interlab.augment.pipeline import Augment
from interlab.cli import main as cli_main
from interlab.config import build_config
from interlab.data import load_dataset
from interlab.data.prepare import prepare
from interlab.data.shards import ShardSet, centre_boxes, paste_on_host, paste_padded
from interlab.train import CHECKPOINT_NAME, Trainer, train
from tests.conftest import tensors_of
from tests.test_prepare import make_tree

SIZE = 32  # training crops: small enough for a CPU test


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    make_tree(root, per_class=48)
    out = tmp_path_factory.mktemp("shards") / "out"
    prepare(root, out, max_side=96, workers=1, shard_images=40, progress=False)
    return out


def test_reader_gives_labels_sizes_and_pillow_identical_pixels(shards):
    data = ShardSet(shards, "train")
    assert len(data) == 3 * 48 + 2 and data.classes == ["cat", "dog", "ship"]
    assert data.has_labels and data.videos is None
    rows = [0, 5, len(data) - 1]
    for row, image in zip(rows, data.decode(rows), strict=True):
        (jpeg,) = data.jpeg_files([row])
        pillow = np.asarray(Image.open(io.BytesIO(jpeg.numpy().tobytes())).convert("RGB"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(pillow.copy()))
        assert list(image.shape[1:]) == data.sizes[row].tolist()


def test_padded_batch_pastes_each_image_at_its_own_size(shards):
    data = ShardSet(shards, "train")
    rows = torch.tensor([3, 10, 20, 30])
    batch, sizes = data.padded_batch(rows)
    assert batch.shape[1:3] == tuple(sizes.max(dim=0).values.tolist())
    for slot, image in enumerate(data.decode(rows)):
        h, w = sizes[slot].tolist()
        assert torch.equal(batch[slot, :h, :w], image.permute(1, 2, 0))
        assert not batch[slot, h:].any() and not batch[slot, :, w:].any()


def test_a_prefetched_batch_is_the_batch_decoded_now(shards):
    data = ShardSet(shards, "train")
    rows = torch.tensor([7, 1, 40])
    data.prefetch(rows)
    assert len(data._pending) == 1
    images, sizes = data.padded_batch(rows)
    assert not data._pending  # taken, not decoded twice
    again, again_sizes = data.padded_batch(rows)
    assert torch.equal(images, again) and torch.equal(sizes, again_sizes)


def test_per_image_boxes_equal_each_image_drawn_alone():
    """One draw, a batch of sizes: each box is what RandomResizedCrop.get_params draws for that
    image's own size (the scalar path, tested against torchvision in test_augment)."""
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[40, 500], [500, 40], [96, 96], [64, 200], [1, 1], [77, 13]])
    draws = torch.rand(len(sizes), 40, generator=generator)
    cfg = AugmentConfig(size=SIZE)
    params = sample_params(
        cfg, len(sizes), 500, 500, generator=torch.Generator().manual_seed(1), sizes=sizes
    )
    assert (params.boxes[:, 0] + params.boxes[:, 2] <= sizes[:, 0]).all()
    assert (params.boxes[:, 1] + params.boxes[:, 3] <= sizes[:, 1]).all()
    from interlab.augment.params import _draw_ranges

    low, span, _ = _draw_ranges(cfg, torch.device("cpu"))
    scaled = torch.addcmul(low, draws[:, : low.shape[0]], span)
    together = _sample_boxes(scaled, sizes[:, 0], sizes[:, 1], cfg.ratio)
    for row, (h, w) in enumerate(sizes.tolist()):
        alone = _sample_boxes(scaled[row : row + 1], h, w, cfg.ratio)
        assert torch.equal(together[row], alone[0]), (h, w)


def test_crops_match_torchvision_resized_crop_on_the_decoded_images(shards):
    data = ShardSet(shards, "train")
    rows = torch.arange(0, 24, 3)
    batch, sizes = data.padded_batch(rows)
    plain = AugmentConfig(
        size=SIZE, scale=(0.08, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    augment = Augment(plain)
    params = augment.sample_params(len(rows), batch.shape[1], batch.shape[2], sizes=sizes,
                                   generator=torch.Generator().manual_seed(3))  # fmt: skip
    ours = augment.apply(batch, params)
    for slot, image in enumerate(data.decode(rows)):
        top, left, h, w = params.boxes[slot].tolist()
        reference = TF.resized_crop(
            image.float() / 255, top, left, h, w, [SIZE, SIZE], antialias=True
        )
        torch.testing.assert_close(ours[slot], reference, atol=2e-5, rtol=0)


def test_centre_boxes_follow_the_256_224_protocol():
    boxes = centre_boxes(torch.tensor([[256, 341], [96, 64]]), 224)
    assert boxes.tolist() == [[16, 58, 224, 224], [20, 4, 56, 56]]  # 64 / (256/224) = 56


def test_the_lazy_images_index_like_a_tensor_and_decode_only_what_is_picked(shards):
    images = ShardSet(shards, "val").images
    assert images.shape == (36, 224, 224, 3) and len(images) == 36  # 3 classes x 12
    picked = images[torch.tensor([4, 0])]
    assert picked.shape == (2, 224, 224, 3) and picked.dtype == torch.uint8
    assert torch.equal(images[4], picked[0]) and torch.equal(images[-36], picked[1])
    assert torch.equal(images[[4, 0]], picked) and images[1:3].shape[0] == 2
    mask = torch.zeros(36, dtype=torch.bool)
    mask[[0, 4]] = True
    assert torch.equal(images[mask], picked.flip(0))
    with pytest.raises(IndexError):
        images[36]


def test_the_set_holds_only_its_index_in_memory(shards):
    """Host memory of a ShardSet is its index (a few numbers per image), not pixels: the
    decoded images exist one batch at a time."""
    data = ShardSet(shards, "train")
    held = sum(v.nbytes for v in data.entries.arrays().values())
    held += sum(t.numel() * t.element_size() for t in (data.labels, data.sizes))
    assert held / len(data) < 128
    assert data.compressed_bytes > 20 * held  # the bytes stay in the memory-mapped files


def test_a_truncated_shard_file_is_named(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    shard = copy / "train" / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"shard-00001\.bin"):
        ShardSet(copy, "train")
    with pytest.raises(FileNotFoundError, match="splits there: train, val"):
        ShardSet(copy, "test")


def shard_config(shards, out, **keys):
    base = {
        "method": "moco", "data": f"shards:{shards}", "device": "cpu", "backbone": "convnet",
        "epochs": 2, "batch_size": 32, "knn_k": 20, "out": str(out), "aug.size": SIZE,
        "checkpoint_every": 1, "amp": False,
    }  # fmt: skip
    return build_config({**base, **keys})


@pytest.mark.parametrize("method", ["moco", pytest.param("interclr", marks=pytest.mark.slow)])
def test_training_from_shards_evaluates_and_resumes_exactly(shards, tmp_path, method):
    keys = {"method": method, "max_steps_per_epoch": 2}
    if method == "interclr":
        keys.update(num_clusters=6, num_negatives=16, pool=40, min_cluster=4, probe_queries=16)
    straight = train(shard_config(shards, tmp_path / "a", **keys), progress=False)
    assert 0.0 <= straight.final["knn_top1"] <= 1.0  # kNN over the val/ split, decoded
    train(shard_config(shards, tmp_path / "b", **keys), stop_after_epochs=1, progress=False)
    assert torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)["epoch"] == 1
    resumed = train(shard_config(shards, tmp_path / "b", **keys), progress=False)
    for name, value in straight.method.state_dict().items():
        assert torch.equal(resumed.method.state_dict()[name], value), name
    if method == "interclr":  # the negatives explorer decodes the images it shows
        from interlab.lab.explore import NegativeExplorer

        data = ShardSet(shards, "train")
        data.eval_size = SIZE
        explorer = NegativeExplorer(resumed.method, data.images, data.labels, classes=data.classes)
        found = explorer.negatives_for(5)
        assert found["query"] == 5 and len(found["strategies"]) == 4
        assert explorer.figure() is not None


@pytest.mark.slow
def test_knn_and_linear_probe_run_on_decoded_centre_crops(shards, tmp_path):
    from interlab.evaluate import evaluate_method

    trainer = Trainer(shard_config(shards, tmp_path, max_steps_per_epoch=1), progress=False)
    scores = evaluate_method(
        trainer.method, trainer.memory_set, trainer.test_set, linear=True, k=10
    )
    assert set(scores) == {"knn_top1", "knn_top1_head", "linear_top1"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_streamed_sets_keep_float16_evaluation_features_on_a_gpu_only(shards):
    from interlab.features import evaluation_dtype

    data = ShardSet(shards, "val")
    assert evaluation_dtype(data.images) == torch.float32  # CPUs multiply halves slowly
    assert evaluation_dtype(torch.zeros(1, 8, 8, 3, dtype=torch.uint8)) == torch.float32
    data.device = torch.device("cuda")  # no CUDA needed: only the policy is read
    assert evaluation_dtype(data.images) == torch.float16


def test_pseudo_videos_need_frames_shards(shards, tmp_path):
    with pytest.raises(ValueError, match=r"'cyclecontrast' cannot train from shards:.*--frames"):
        Trainer(shard_config(shards, tmp_path, method="cyclecontrast"), progress=False)


@pytest.mark.slow
def test_dino_and_scfs_multi_crop_from_shards(shards, tmp_path):
    """Global and local crops are all drawn from each image's full size."""
    for method in ("dino", "scfs"):
        keys = {"method": method, "epochs": 1, "max_steps_per_epoch": 2, "out_dim": 64,
                "head_hidden": 64, "head_bottleneck": 32, "n_local": 2, "local_size": 16}  # fmt: skip
        result = train(shard_config(shards, tmp_path / method, **keys), progress=False)
        assert torch.isfinite(torch.tensor(result.final["loss"]))


def test_frames_shards_train_cyclecontrast(frames_shards, tmp_path):
    """`prepare --frames`, then CycleContrast with real video ids: positives from other frames
    of the same video, the query's own video masked out of the negatives."""
    data = ShardSet(frames_shards)
    assert data.videos is not None and not data.has_labels
    keys = {"method": "cyclecontrast", "epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2,
            "queue_size": 32, "cycle_queue_size": 32, "support_size": 16}  # fmt: skip
    result = train(shard_config(frames_shards, tmp_path / "run", **keys), progress=False)
    assert result.final["step"] == 2 and torch.isfinite(torch.tensor(result.final["loss"]))
    assert "knn_top1" not in result.final  # frames carry no class
    index = result.method.video_index  # built on the run's device from the set's videos
    assert torch.equal(index.videos, torch.from_numpy(data.entries.videos))


def test_load_dataset_maps_test_to_val(shards):
    assert load_dataset(f"shards:{shards}", "test").split == "val"


def test_cli_prepare_prints_its_summary(tmp_path, capsys):
    make_tree(tmp_path / "tree", per_class=4)
    assert (
        cli_main(
            ["prepare", str(tmp_path / "tree"), "--out", str(tmp_path / "s"), "--workers", "1"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "converted 17 (train 14, val 3), skipped 2" in printed
    assert (
        cli_main(
            ["prepare", str(tmp_path / "tree"), "--out", str(tmp_path / "t"), "--quality", "0"]
        )
        == 2
    )
    assert "quality" in capsys.readouterr().err


def shard_rank(rank: int, world: int, port: int, out: str, data: str) -> None:
    """One gloo rank of a MoCo run from shards (spawned by the DDP test)."""
    import os

    from tests.test_distributed import set_rank_environment

    set_rank_environment(rank, world, port)
    config = shard_config(data, out, epochs=1, batch_size=16, eval_every=0, max_steps_per_epoch=2)
    trainer = Trainer(config, progress=False)
    order = trainer.epoch_order()
    trainer.order_generator.manual_seed(config.seed)
    trainer.fit(resume=False)
    state = {k: v.detach().cpu() for k, v in trainer.method.state_dict().items()}
    torch.save({"state": state, "order": order.cpu()}, os.path.join(out, f"shards{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_stream_their_own_halves_and_stay_identical(shards, tmp_path):
    """DDP from shards: each rank decodes only its share of the epoch's order; the weights
    and the queue stay identical across ranks."""
    from tests.test_distributed import spawn_two_ranks

    rank0, rank1 = spawn_two_ranks(shard_rank, str(tmp_path / "ddp"), str(shards), "shards")
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    both = torch.cat([rank0["order"], rank1["order"]])
    assert torch.equal(both.sort().values, torch.arange(len(ShardSet(shards))))


PEAK_RSS = """
import resource, sys, torch
from interlab.data.shards import ShardSet
data = ShardSet(sys.argv[1])
for start in range(0, len(data), 16):
    data.padded_batch(torch.arange(start, min(start + 16, len(data))))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, data.compressed_bytes)
"""


@pytest.mark.slow
def test_peak_memory_of_a_pass_grows_with_the_compressed_bytes_not_the_pixels(tmp_path):
    """One pass over 40 and over 200 large images (256 x ~400 px after prepare, ~300 KB each
    decoded): the peak RSS difference stays near the compressed difference (the memory-mapped
    pages), far below the 48 MB the extra decoded pixels would take if they were kept."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    peaks = {}
    for count in (40, 200):
        root = tmp_path / f"tree{count}"
        (root / "a").mkdir(parents=True)
        for i in range(count):
            ramp = np.linspace(0, 200, 600, dtype=np.float32)[None, :, None]
            pixels = (rng.integers(0, 56, (384, 600, 3)) + ramp).astype(np.uint8)
            Image.fromarray(pixels).save(root / "a" / f"{i}.jpg", quality=90)
        prepare(root, tmp_path / f"s{count}", max_side=256, workers=2, progress=False)
        run = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(tmp_path / f"s{count}")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks[count] = [int(v) for v in run.stdout.split()]
    grown = peaks[200][0] - peaks[40][0]
    compressed = peaks[200][1] - peaks[40][1]
    decoded = (200 - 40) * 256 * 400 * 3
    assert grown < compressed + 16 * 2**20 and grown < decoded / 2, (grown, compressed, decoded)


def test_only_rows_a_method_decodes_are_prefetched():
    """CycleContrast draws each item's other frame at step time: a prefetch of the items alone
    would be decoded and never used, every step."""
    from interlab.methods.base import Method
    from interlab.methods.cyclecontrast import CycleContrast

    rows = torch.tensor([3, 1, 2])
    assert Method.rows_to_decode(None, rows) is rows
    assert CycleContrast.rows_to_decode(None, rows) is None


# ---- every table on the run's device, and a step that never waits for it ---------------------


def test_to_moves_every_table_with_the_set(shards, frames_shards):
    """Labels, sizes and video ids follow the set (meta stands for a GPU: no CUDA needed), in
    place; what stays on the host is the index that decoding reads."""
    for directory, names in ((shards, {"labels", "sizes"}), (frames_shards, {"labels", "sizes", "videos"})):  # fmt: skip
        data = ShardSet(directory)
        sizes = data.sizes.clone()
        assert data.to("meta") is data and data.device == torch.device("meta")
        tables = tensors_of(data)
        assert set(tables) == names and all(t.device.type == "meta" for t in tables.values())
        assert data.sizes.shape == sizes.shape and data.sizes.dtype == torch.int64
        assert data.has_labels == (directory == shards)  # read on the host: no device sync


def test_the_one_gather_paste_equals_the_per_image_paste(shards):
    """What a GPU runs (one gather from the concatenated bytes), run on the CPU, gives the
    CPU path's padded batch byte for byte, with the sizes; a decoded size that disagrees with
    the index is named."""
    data = ShardSet(shards)
    rows = np.array([3, 10, 20, 30, 0, len(data) - 1, 77])
    decoded = data.decode(rows)
    sizes = data.entries.sizes[rows].astype(np.int64)
    assert len({tuple(s) for s in sizes.tolist()}) > 3  # images of several sizes
    planar, pasted_sizes = paste_padded(decoded, sizes, torch.device("cpu"))
    expected = paste_on_host(decoded, sizes)
    assert planar.shape == (7, 3, *sizes.max(axis=0)) and torch.equal(planar, expected)
    assert pasted_sizes.dtype == torch.int64 and pasted_sizes.tolist() == sizes.tolist()
    with pytest.raises(ValueError, match=r"image 0 was decoded as \(3, \d+, \d+\); its index says"):
        paste_padded(decoded, sizes[::-1].copy(), torch.device("cpu"))


def test_positions_are_the_same_in_int32_and_int64(shards):
    """Batches too large for int32 positions take int64 ones: the same positions."""
    from interlab.data.shards import _source_positions

    sizes = torch.tensor([[2, 3], [3, 1]])
    offsets = torch.tensor([0, 18])
    small = _source_positions(sizes, offsets, 3, 3, total=27)
    large = _source_positions(sizes, offsets, 3, 3, total=2**31)
    assert small.dtype == torch.int32 and large.dtype == torch.int64
    inside = small != 27
    assert inside.sum() == 27 and torch.equal(small[inside].long(), large[inside])
    assert small[0, 1, 1].tolist() == [9, 10, 11]  # green row 1 of the 2 x 3 image
    assert small[1, 2, :, 0].tolist() == [24, 25, 26]  # blue column of the 3 x 1 image


def test_steps_of_a_followed_order_map_to_the_rows_of_its_host_copy(shards):
    """A whole epoch of a rank's share (a strided view), the last step partial: each step's
    slice maps to the rows `.cpu()` of it gives, read from the host copy taken once (a changed
    tensor still maps to the epoch's rows); a tensor that is no slice of it is read itself."""
    data = ShardSet(shards)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[1::2]
    data.follow_order(order)
    batch = 10
    steps = [order[start : start + batch] for start in range(0, len(order), batch)]
    assert len(steps) == 8 and len(steps[-1]) == 3  # 73 rows
    epoch = [step.numpy().copy() for step in steps]
    for step, rows in zip(steps, epoch, strict=True):
        assert np.array_equal(data.host_rows(step), rows)
    order.fill_(0)
    for step, rows in zip(steps, epoch, strict=True):
        assert np.array_equal(data.host_rows(step), rows)
    assert not data.host_rows(steps[0].clone()).any()  # a copy: its (changed) values
    assert not data.host_rows(order[::2]).any()  # another step between elements
    assert np.array_equal(data.host_rows([4, 2]), [4, 2])


def test_a_prefetched_epoch_decodes_each_step_s_rows(shards):
    """The trainer's loop: prefetch the next step's slice, then take this one's batch; every
    batch is the padded batch of the slice's rows and no prefetch is left over."""
    data = ShardSet(shards)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    data.follow_order(order)
    batch = 40
    steps = [order[start : start + batch] for start in range(0, len(order), batch)]
    assert len(steps[-1]) == len(order) % batch > 0
    for i, step in enumerate(steps):
        if i + 1 < len(steps):
            data.prefetch(steps[i + 1])
        images, sizes = data.padded_batch(step)
        expected, expected_sizes = data._decode_padded(step.numpy().copy(), data.device)
        assert torch.equal(images, expected) and torch.equal(sizes, expected_sizes)
    assert not data._pending


def test_a_streamed_epoch_maps_every_step_from_the_order_s_host_copy(shards, tmp_path, monkeypatch):
    """The trainer hands the set its epoch order: each step's batch and each prefetch are
    found in the order's host copy (on a GPU: no wait for the device per step)."""
    found = []
    window_in_order = ShardSet._window_in_order

    def spy(self, indices):
        found.append(window_in_order(self, indices))
        return found[-1]

    monkeypatch.setattr(ShardSet, "_window_in_order", spy)
    config = shard_config(shards, tmp_path, epochs=1, max_steps_per_epoch=3, eval_every=0)
    trainer = Trainer(config, progress=False)
    trainer.train_epoch(None)
    assert len(found) == 3 + 2  # three batches, two prefetches
    assert all(window is not None for window in found)
    assert [window.start for window in found] == [32, 0, 64, 32, 64]


def test_interclr_trains_a_few_steps_from_shards(shards, tmp_path):
    """The step's false-negative rate and the epoch's sampler probe index the set's labels
    with the step's indices and the bank's draws."""
    from interlab.sampling import NEGATIVE_STRATEGIES

    keys = {"method": "interclr", "epochs": 1, "max_steps_per_epoch": 2, "eval_every": 0,
            "num_clusters": 6, "num_negatives": 16, "pool": 40, "min_cluster": 4,
            "probe_queries": 16}  # fmt: skip
    result = train(shard_config(shards, tmp_path, **keys), progress=False)
    final = result.final
    assert final["step"] == 2 and torch.isfinite(torch.tensor(final["loss"]))
    assert 0.0 <= final["false_negative_rate"] <= 1.0
    assert all(0.0 <= final[f"fnr_{name}"] <= 1.0 for name in NEGATIVE_STRATEGIES)
