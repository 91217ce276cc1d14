"""Tests for interlab.data: the embedded mini set, the compact format, loaders and ImageSet."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interlab.data import (
    DATASET_NAMES,
    ImageSet,
    compact_jpeg,
    default_root,
    load_dataset,
    read_npz,
    write_npz,
)

MINI = Path(__file__).resolve().parents[1] / "data" / "cifar10_mini.npz"
FULL = Path("/work/shared/data/cifar10.npz")
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def pillow_decode(npz_path: Path, split: str, count: int | None = None) -> np.ndarray:
    """The data README's reference decoding loop."""
    archive = np.load(npz_path)
    head, scans, offs = (
        archive["jpeg_header"].tobytes(),
        archive[f"{split}_scans"],
        archive[f"{split}_offsets"],
    )
    count = len(offs) - 1 if count is None else count
    return np.stack(
        [
            np.asarray(
                Image.open(io.BytesIO(head + scans[offs[i] : offs[i + 1]].tobytes())).convert("RGB")
            )
            for i in range(count)
        ]
    )


def mini_arrays() -> dict[str, np.ndarray]:
    with np.load(MINI) as archive:
        return {key: archive[key] for key in archive.files}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def gradient_images(count: int, size: int) -> torch.Tensor:
    """Smooth, distinct images (JPEG-friendly, so round-trip error stays small)."""
    ramp = torch.linspace(0, 1, size)
    base = torch.stack(
        [ramp[:, None].expand(size, size), ramp[None, :].expand(size, size), ramp.outer(ramp)], -1
    )
    shift = torch.arange(count, dtype=torch.float32)[:, None, None, None] / max(count, 1)
    return ((base[None] * 0.6 + shift * 0.4) * 255).round().to(torch.uint8)


def small_set(count: int = 6, size: int = 16, num_classes: int = 3) -> ImageSet:
    labels = torch.arange(count) % num_classes
    return ImageSet(gradient_images(count, size), labels, [f"c{i}" for i in range(num_classes)])


# --- the embedded mini subset -------------------------------------------------------


def test_mini_train_shapes_dtypes_and_class_balance() -> None:
    train = load_dataset("cifar10-mini", "train")
    assert train.images.shape == (5000, 32, 32, 3)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == CIFAR10_CLASSES
    assert torch.equal(train.labels.bincount(minlength=10), torch.full((10,), 500))
    assert train.image_size == 32 and train.num_classes == 10 and train.has_labels
    assert train.name == "cifar10-mini/train"


def test_mini_test_split_counts_and_pixels_match_pillow_byte_for_byte() -> None:
    test = load_dataset("cifar10-mini", "test")
    assert len(test) == 1000
    assert torch.equal(test.labels.bincount(minlength=10), torch.full((10,), 100))
    assert np.array_equal(test.images.numpy(), pillow_decode(MINI, "test"))


def test_mini10k_is_the_mini_training_set_with_the_whole_test_split() -> None:
    """The studies' evaluation set: the same 5,000 training images, 1,000 test images per
    class, and its test images include the mini set's own (a subset of CIFAR-10's)."""
    train, mini = load_dataset("cifar10-mini10k", "train"), load_dataset("cifar10-mini", "train")
    assert torch.equal(train.images, mini.images) and torch.equal(train.labels, mini.labels)
    test = load_dataset("cifar10-mini10k", "test")
    assert len(test) == 10_000 and test.name == "cifar10-mini10k/test"
    assert torch.equal(test.labels.bincount(minlength=10), torch.full((10,), 1000))
    small = load_dataset("cifar10-mini", "test").images.reshape(1000, -1)
    whole = test.images.reshape(10_000, -1)
    found = (whole[:, None, :64] == small[None, :50, :64]).all(-1).any(0)  # first 64 bytes
    assert bool(found.all())


def test_mini_first_train_image_equals_readme_pillow_decode() -> None:
    train = load_dataset("cifar10-mini", "train")
    reference = pillow_decode(MINI, "train", count=1)[0]
    assert np.array_equal(train.images[0].numpy(), reference)
    # Channel means of a real photo set, not an all-zero or constant decode.
    means = train.images.float().mean(dim=(0, 1, 2))
    assert torch.allclose(means, torch.tensor([125.3, 122.9, 113.9]), atol=3.0)


def test_pillow_fallback_decoder_matches_torchvision_decoder() -> None:
    arrays = mini_arrays()
    files = compact_jpeg._join_header_and_scans(
        arrays["jpeg_header"], arrays["test_scans"], arrays["test_offsets"]
    )[:50]
    torchvision_decode = compact_jpeg.torchvision_decoder()
    assert torchvision_decode is not None
    cpu = torch.device("cpu")
    fast = torch.stack(torchvision_decode(files, cpu))
    fallback = torch.stack(compact_jpeg._decode_with_pillow(files, cpu))
    assert fast.shape == (50, 3, 32, 32) and torch.equal(fast, fallback)


def test_joined_files_are_header_plus_scan() -> None:
    arrays = mini_arrays()
    header, scans, offsets = arrays["jpeg_header"], arrays["test_scans"], arrays["test_offsets"]
    files = compact_jpeg._join_header_and_scans(header, scans, offsets)
    assert len(files) == 1000
    for i in (0, 1, 500, 999):
        expected = header.tobytes() + scans[offsets[i] : offsets[i + 1]].tobytes()
        assert files[i].numpy().tobytes() == expected


def test_interlab_mini_environment_variable_overrides_location(tmp_path, monkeypatch) -> None:
    path = tmp_path / "other_mini.npz"
    write_npz(path, {"train": small_set(4), "test": small_set(2)})
    monkeypatch.setenv("INTERLAB_MINI", str(path))
    assert len(load_dataset("cifar10-mini", "train")) == 4
    monkeypatch.setenv("INTERLAB_MINI", str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_dataset("cifar10-mini")


@pytest.mark.slow
@pytest.mark.skipif(not FULL.is_file(), reason="full CIFAR-10 copy not present")
def test_full_cifar10_copy_loads_from_root() -> None:
    train = load_dataset("cifar10", "train", root=FULL.parent)
    assert train.images.shape == (50000, 32, 32, 3)
    assert torch.equal(train.labels.bincount(minlength=10), torch.full((10,), 5000))
    assert np.array_equal(train.images[:3].numpy(), pillow_decode(FULL, "train", count=3))


# --- write_npz / read_npz ---------------------------------------------------------


def test_write_then_read_round_trip(tmp_path) -> None:
    train, test = small_set(6), small_set(3)
    test.labels = torch.tensor([2, -1, 0])
    path = tmp_path / "sets.npz"
    write_npz(path, {"train": train, "test": test}, quality=95)

    loaded = read_npz(path, "train")
    assert loaded.classes == train.classes
    assert torch.equal(loaded.labels, train.labels)
    error = (loaded.images.float() - train.images.float()).abs()
    assert error.mean() < 1.5 and error.max() <= 12
    assert torch.equal(read_npz(path, "test").labels, torch.tensor([2, -1, 0]))

    # The file follows the shared format: header + scan is Pillow's own JPEG file.
    buffer = io.BytesIO()
    Image.fromarray(train.images[1].numpy()).save(buffer, format="JPEG", quality=95)
    with np.load(path) as archive:
        offsets = archive["train_offsets"]
        rebuilt = (
            archive["jpeg_header"].tobytes()
            + archive["train_scans"][offsets[1] : offsets[2]].tobytes()
        )
        assert sorted(archive.files) == sorted(
            ["jpeg_header", "classes"]
            + [f"{s}_{k}" for s in ("train", "test") for k in ("scans", "offsets", "labels")]
        )
    assert rebuilt == buffer.getvalue()
    assert np.array_equal(
        loaded.images[1].numpy(), np.asarray(Image.open(io.BytesIO(rebuilt)).convert("RGB"))
    )


def test_write_npz_keeps_the_given_filename(tmp_path) -> None:
    path = tmp_path / "no_suffix"
    write_npz(path, {"train": small_set(2)})
    assert path.is_file() and not (tmp_path / "no_suffix.npz").exists()


def test_write_npz_rejects_mismatched_splits_and_bad_quality(tmp_path) -> None:
    path = tmp_path / "x.npz"
    with pytest.raises(ValueError, match="classes"):
        write_npz(path, {"train": small_set(2, num_classes=3), "test": small_set(2, num_classes=2)})
    with pytest.raises(ValueError, match="px"):
        write_npz(path, {"train": small_set(2, size=16), "test": small_set(2, size=8)})
    with pytest.raises(ValueError, match="quality"):
        write_npz(path, {"train": small_set(2)}, quality=0)
    with pytest.raises(ValueError, match="non-empty dict"):
        write_npz(path, {})


def test_read_npz_missing_file_and_unknown_split(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        read_npz(tmp_path / "nowhere.npz", "train")
    with pytest.raises(ValueError, match=r"'val'.*\['test', 'train'\]"):
        read_npz(MINI, "val")


def test_truncated_file_is_reported(tmp_path) -> None:
    path = tmp_path / "truncated.npz"
    path.write_bytes(MINI.read_bytes()[: MINI.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz"):
        read_npz(path, "train")


def test_garbage_bytes_are_reported(tmp_path) -> None:
    path = tmp_path / "garbage.npz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"garbage.npz is not a readable \.npz"):
        read_npz(path, "train")


def test_single_npy_array_is_not_an_archive(tmp_path) -> None:
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        read_npz(path, "train")


def test_undecodable_scan_is_reported_with_its_index(tmp_path) -> None:
    arrays = mini_arrays()
    scans, offsets = arrays["test_scans"], arrays["test_offsets"]
    # Image 3 keeps only the first 40 bytes of its scan (no end-of-image marker).
    lengths = np.diff(offsets)
    lengths[3] = 40
    pieces = [scans[offsets[i] : offsets[i] + lengths[i]] for i in range(len(lengths))]
    arrays["test_scans"] = np.concatenate(pieces)
    arrays["test_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
    path = save_arrays(tmp_path / "bad_scan.npz", arrays)
    with pytest.raises(ValueError, match=r"bad_scan.npz split 'test': image 3 fails to decode"):
        read_npz(path, "test")
    assert len(read_npz(path, "train")) == 5000  # the other split is intact


def test_garbage_scan_is_reported(tmp_path) -> None:
    arrays = mini_arrays()
    scans = arrays["test_scans"].copy()
    scans[: arrays["test_offsets"][1]] = 0
    arrays["test_scans"] = scans
    path = save_arrays(tmp_path / "zero_scan.npz", arrays)
    with pytest.raises(ValueError, match=r"zero_scan\.npz split 'test': image 0 fails"):
        read_npz(path, "test")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o[[0, 2, 1, *range(3, len(o))]], r"strictly increasing, but offsets\[1\]"),
        (lambda o: o[:-1], "must run from 0 to len"),
        (lambda o: o + 1, "must run from 0 to len"),
        (lambda o: o.astype(np.float64), "offsets must be 1-D integers"),
        (lambda o: o[:1], "no images"),
    ],
)
def test_wrong_offsets_are_reported(tmp_path, change, message) -> None:
    arrays = mini_arrays()
    arrays["test_offsets"] = change(arrays["test_offsets"])
    path = save_arrays(tmp_path / "offsets.npz", arrays)
    with pytest.raises(ValueError, match=message) as caught:
        read_npz(path, "test")
    assert "offsets.npz" in str(caught.value)


def test_missing_arrays_and_bad_labels_are_reported(tmp_path) -> None:
    arrays = mini_arrays()
    del arrays["jpeg_header"]
    with pytest.raises(ValueError, match=r"no_header.npz lacks the arrays \['jpeg_header'\]"):
        read_npz(save_arrays(tmp_path / "no_header.npz", arrays), "test")

    arrays = mini_arrays()
    arrays["test_labels"] = arrays["test_labels"] + 5
    with pytest.raises(ValueError, match=r"labels.npz split 'test'.*\[-1, 9\].*14"):
        read_npz(save_arrays(tmp_path / "labels.npz", arrays), "test")

    arrays = mini_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    with pytest.raises(ValueError, match="999 labels for 1000 images"):
        read_npz(save_arrays(tmp_path / "short.npz", arrays), "test")


# --- ImageSet ---------------------------------------------------------------------


def test_image_set_rejects_bad_images() -> None:
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"uint8, got torch\.float32"):
        ImageSet(torch.zeros(2, 8, 8, 3), labels, ["a"])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\), got \(2, 3, 8, 8\)"):
        ImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), labels, ["a"])
    with pytest.raises(ValueError, match="square"):
        ImageSet(torch.zeros(2, 8, 6, 3, dtype=torch.uint8), labels, ["a"])
    with pytest.raises(ValueError, match=r"torch\.Tensor, got ndarray"):
        ImageSet(np.zeros((2, 8, 8, 3), np.uint8), labels, ["a"])


def test_image_set_rejects_bad_labels_and_classes() -> None:
    images = torch.zeros(3, 4, 4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"int64, got torch\.int32"):
        ImageSet(images, torch.zeros(3, dtype=torch.int32), ["a"])
    with pytest.raises(ValueError, match=r"shape \(3,\).*got \(2,\)"):
        ImageSet(images, torch.zeros(2, dtype=torch.int64), ["a"])
    with pytest.raises(ValueError, match=r"\[-1, 1\] for 2 classes, got values from 0 to 2"):
        ImageSet(images, torch.tensor([0, 1, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="from -2 to 0"):
        ImageSet(images, torch.tensor([0, -2, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="list of str"):
        ImageSet(images, torch.zeros(3, dtype=torch.int64), "ab")
    with pytest.raises(ValueError, match="unique"):
        ImageSet(images, torch.zeros(3, dtype=torch.int64), ["a", "a"])
    unlabeled = ImageSet(images, torch.full((3,), -1), [])
    assert not unlabeled.has_labels and unlabeled.num_classes == 0


def test_to_cpu_keeps_content_and_type() -> None:
    image_set = small_set(4)
    moved = image_set.to("cpu")
    assert isinstance(moved, ImageSet) and moved.device == torch.device("cpu")
    assert torch.equal(moved.images, image_set.images)
    assert torch.equal(moved.labels, image_set.labels)
    assert moved.classes == image_set.classes and moved.name == image_set.name


def test_subset_with_each_index_form() -> None:
    image_set = small_set(6)
    by_tensor = image_set.subset(torch.tensor([4, 0, -1]))
    assert torch.equal(by_tensor.labels, torch.tensor([1, 0, 2]))
    assert torch.equal(by_tensor.images[0], image_set.images[4])
    assert torch.equal(by_tensor.images[2], image_set.images[5])
    assert torch.equal(image_set.subset(np.array([1, 2])).labels, torch.tensor([1, 2]))
    assert torch.equal(image_set.subset([3]).labels, torch.tensor([0]))
    assert torch.equal(image_set.subset(slice(1, 6, 2)).labels, torch.tensor([1, 0, 2]))
    mask = image_set.labels == 2
    assert torch.equal(image_set.subset(mask).images, image_set.images[[2, 5]])
    assert len(image_set.subset([])) == 0
    assert image_set.subset([0]).classes == image_set.classes


def test_subset_rejects_bad_indices() -> None:
    image_set = small_set(6)
    with pytest.raises(ValueError, match="from 0 to 6"):
        image_set.subset(torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="length 5, expected 6"):
        image_set.subset(torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="integers or booleans"):
        image_set.subset(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        image_set.subset(3)


def test_batches_cover_the_set_in_order() -> None:
    image_set = small_set(7)
    batches = list(image_set.batches(3))
    assert [len(images) for images, _ in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([images for images, _ in batches]), image_set.images)
    assert torch.equal(torch.cat([labels for _, labels in batches]), image_set.labels)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        image_set.batches(0)  # raised at the call, before iterating


# --- load_dataset: names, splits, resizing ----------------------------------------


def test_unknown_dataset_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'imagenet'") as caught:
        load_dataset("imagenet")
    for name in (*DATASET_NAMES, "npz:", "folder:"):
        assert name in str(caught.value)


def test_unknown_split_lists_valid_splits(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'valid'.*train, test"):
        load_dataset("cifar10-mini", "valid")
    with pytest.raises(ValueError, match=r"train, test, unlabeled, train\+unlabeled"):
        load_dataset("stl10", "extra", root=tmp_path)
    with pytest.raises(ValueError, match=r"'dev'.*train, test"):
        load_dataset("cifar100", "dev", root=tmp_path)
    with pytest.raises(ValueError, match="image_size must be a positive int, got -4"):
        load_dataset("cifar10-mini", image_size=-4)


def test_image_size_resizes_like_pillow_bilinear() -> None:
    full = load_dataset("cifar10-mini", "test")
    small = load_dataset("cifar10-mini", "test", image_size=16)
    assert small.images.shape == (1000, 16, 16, 3) and small.images.dtype == torch.uint8
    assert torch.equal(small.labels, full.labels)
    reference = np.stack(
        [
            np.asarray(Image.fromarray(full.images[i].numpy()).resize((16, 16), Image.BILINEAR))
            for i in range(20)
        ]
    )
    difference = np.abs(small.images[:20].numpy().astype(int) - reference)
    assert difference.max() <= 2 and difference.mean() < 0.5


def test_default_root_follows_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("INTERLAB_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("INTERLAB_DATA")
    assert default_root() == Path.home() / ".cache" / "interlab" / "data"


def test_npz_prefix_and_compact_cifar_copy_in_root(tmp_path) -> None:
    write_npz(tmp_path / "cifar10.npz", {"train": small_set(5), "test": small_set(2)})
    by_path = load_dataset(f"npz:{tmp_path / 'cifar10.npz'}", "test")
    assert len(by_path) == 2 and by_path.name.endswith("/test")
    from_root = load_dataset("cifar10", "train", root=tmp_path)
    assert len(from_root) == 5 and from_root.name == "cifar10/train"


# --- torchvision code paths, on fake local copies ---------------------------------


def offline_torchvision(monkeypatch, module_name: str) -> None:
    """Accept files by presence instead of md5, and fail loudly on any download attempt."""
    import importlib

    module = importlib.import_module(f"torchvision.datasets.{module_name}")

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    monkeypatch.setattr(module, "download_and_extract_archive", no_download)


def write_fake_cifar10(root: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + len(rows)) % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rows[name], "labels": labels}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR10_CLASSES}, handle)
    return rows


def test_torchvision_cifar10_path_on_fake_local_copy(tmp_path, monkeypatch) -> None:
    offline_torchvision(monkeypatch, "cifar")
    rows = write_fake_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (10, 32, 32, 3) and train.images.is_contiguous()
    assert train.classes == CIFAR10_CLASSES
    assert train.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    # CIFAR rows are planar (1024 red, 1024 green, 1024 blue): pixel (row 1, col 2) of image 0.
    row = rows["data_batch_1"][0]
    assert train.images[0, 1, 2].tolist() == [row[34], row[1024 + 34], row[2048 + 34]]
    test = load_dataset("cifar10", "test", root=tmp_path, image_size=8)
    assert test.images.shape == (2, 8, 8, 3) and test.labels.tolist() == [6, 7]


def test_torchvision_cifar10_path_attempts_download_when_missing(tmp_path, monkeypatch) -> None:
    offline_torchvision(monkeypatch, "cifar")
    with pytest.raises(AssertionError, match="tried to download"):
        load_dataset("cifar10", "train", root=tmp_path / "empty")


def test_torchvision_stl10_path_on_fake_local_copy(tmp_path, monkeypatch) -> None:
    offline_torchvision(monkeypatch, "stl10")
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    pixels = 3 * 96 * 96
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, 2 * pixels, dtype=np.uint8)
    train_x.tofile(folder / "train_X.bin")
    np.array([3, 10], np.uint8).tofile(folder / "train_y.bin")  # STL-10 labels are 1-based
    rng.integers(0, 256, 3 * pixels, dtype=np.uint8).tofile(folder / "unlabeled_X.bin")
    rng.integers(0, 256, pixels, dtype=np.uint8).tofile(folder / "test_X.bin")
    np.array([1], np.uint8).tofile(folder / "test_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")

    train = load_dataset("stl10", "train", root=tmp_path)
    assert train.images.shape == (2, 96, 96, 3) and train.labels.tolist() == [2, 9]
    assert train.classes == names
    # STL-10 stores each channel column-major: byte k*9216 + col*96 + row of the image.
    image, row, col = 1, 5, 7
    expected = [train_x[image * pixels + k * 9216 + col * 96 + row] for k in range(3)]
    assert train.images[image, row, col].tolist() == expected

    both = load_dataset("stl10", "train+unlabeled", root=tmp_path, image_size=32)
    assert both.images.shape == (5, 32, 32, 3) and both.labels.tolist() == [2, 9, -1, -1, -1]
    unlabeled = load_dataset("stl10", "unlabeled", root=tmp_path)
    assert len(unlabeled) == 3 and not unlabeled.has_labels


# --- folder: ----------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def wide_image_green_centre() -> np.ndarray:
    """40x20: green over columns 5..35, red at both ends; an 8px centre crop sees only green."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:] = RED
    pixels[:, 5:35] = GREEN
    return pixels


def tall_blue_image() -> np.ndarray:
    return np.broadcast_to(np.array(BLUE, np.uint8), (30, 10, 3)).copy()


def make_class_tree(root: Path) -> None:
    save_png(root / "cat" / "a.png", wide_image_green_centre())
    save_png(root / "cat" / "b.png", wide_image_green_centre())
    save_png(root / "dog" / "c.png", tall_blue_image())
    (root / "dog" / "notes.txt").write_text("not an image")


def test_folder_without_splits_resizes_crops_and_labels(tmp_path) -> None:
    make_class_tree(tmp_path / "tree")
    image_set = load_dataset(f"folder:{tmp_path / 'tree'}", "train", image_size=8)
    assert image_set.images.shape == (3, 8, 8, 3)
    assert image_set.classes == ["cat", "dog"]
    assert image_set.labels.tolist() == [0, 0, 1]
    # Shorter side to 8 gives 16x8; the centre crop keeps source columns 10..30 (all green).
    # Squeezing the whole 40x20 image instead would bring red into the outer columns.
    assert np.abs(image_set.images[0].numpy().astype(int) - GREEN).max() <= 2
    assert np.abs(image_set.images[2].numpy().astype(int) - BLUE).max() <= 2
    assert load_dataset(f"folder:{tmp_path / 'tree'}").image_size == 32
    with pytest.raises(ValueError, match="whole tree is the 'train' split; got split 'test'"):
        load_dataset(f"folder:{tmp_path / 'tree'}", "test")


def test_folder_with_train_and_val_subfolders(tmp_path) -> None:
    root = tmp_path / "split_tree"
    make_class_tree(root / "train")
    save_png(root / "val" / "dog" / "d.png", tall_blue_image())
    train = load_dataset(f"folder:{root}", "train", image_size=8)
    test = load_dataset(f"folder:{root}", "test", image_size=8)
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 1]
    # The test split lacks "cat" but keeps the same class indices as train.
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1]
    assert np.abs(test.images[0].numpy().astype(int) - BLUE).max() <= 2
    with pytest.raises(ValueError, match=r"'unlabeled'.*train, test, val"):
        load_dataset(f"folder:{root}", "unlabeled")


def test_folder_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "broken" / "cat").mkdir(parents=True)
    (tmp_path / "broken" / "cat" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"x\.png"):
        load_dataset(f"folder:{tmp_path / 'broken'}")


# --- GPU --------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_and_transfer_match_cpu() -> None:
    """Decoded on the GPU the dataset lands there, labels included; pixel agreement with
    Pillow is test_gpu's nvJPEG test (1.20 grey levels mean difference measured on an H200)."""
    cpu = load_dataset("cifar10-mini", "test")
    gpu = load_dataset("cifar10-mini", "test", decode_device="cuda")
    assert gpu.device.type == "cuda" and gpu.labels.device.type == "cuda"
    assert gpu.images.shape == cpu.images.shape
    difference = (gpu.images.cpu().float() - cpu.images.float()).abs()
    assert difference.mean() < 1.5
    moved = cpu.to("cuda")
    torch.cuda.synchronize()
    assert torch.equal(moved.images.cpu(), cpu.images)
