"""`interlab prepare`: an ImageFolder tree of mixed files into JPEG shards, resumably and safely.

The generated tree has JPEG and PNG images from 40 to 500 px, a grayscale JPEG, a CMYK JPEG,
a truncated JPEG and a text file named like an image: the two broken ones are skipped and
listed, everything else converted with its shorter side capped and its aspect ratio kept.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interlab.data import prepare as prep
from interlab.data.shard_format import INDEX_NAME, load_entries

CLASSES = ("cat", "dog", "ship")
MAX_SIDE = 64


def _image(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # smooth enough that JPEG keeps it recognisable: a gradient plus noise per image
    pixels = (pixels // 4 + np.linspace(0, 190, width, dtype=np.uint8)[None, :, None]).astype(
        np.uint8
    )
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


def make_tree(root: Path, per_class: int = 40, seed: int = 0) -> dict[str, Path]:
    """train/ and val/ class folders of mixed files; returns the special files by name."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", per_class // 4)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(40, 501, size=2))
                image = _image(rng, height, width)
                if i % 3 == 0:
                    image.save(folder / f"{i}.png")
                else:
                    image.save(folder / f"{i}.jpg", quality=85)
    special = root / "train" / "cat"
    _image(rng, 50, 60, "L").save(special / "gray.jpg", quality=85)
    _image(rng, 300, 120, "CMYK").save(special / "cmyk.jpg", quality=85)
    full = io.BytesIO()
    _image(rng, 200, 200).save(full, format="JPEG", quality=85)
    (special / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (special / "not_an_image.jpg").write_text("these are not the pixels you are looking for\n")
    return {
        "gray": special / "gray.jpg",
        "cmyk": special / "cmyk.jpg",
        "truncated": special / "truncated.jpg",
        "text": special / "not_an_image.jpg",
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("tree")
    return root, make_tree(root)


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory) -> tuple[Path, prep.PrepareSummary]:
    out = tmp_path_factory.mktemp("shards") / "out"
    summary = prep.prepare(
        tree[0], out, max_side=MAX_SIDE, workers=2, shard_images=25, progress=False
    )
    return out, summary


def stored_images(out: Path, split: str) -> tuple[list[Image.Image], object]:
    entries, _, _ = load_entries(out / split / INDEX_NAME)
    images = []
    for shard, start, length in zip(entries.shard, entries.start, entries.length, strict=True):
        data = (out / split / f"shard-{shard:05d}.bin").read_bytes()[start : start + length]
        image = Image.open(io.BytesIO(data))
        image.load()
        images.append(image)
    return images, entries


def test_counts_and_skipped_files_are_reported(tree, prepared):
    root, special = tree
    out, summary = prepared
    listed = sum(1 for _ in root.rglob("*.*"))
    assert (summary.converted, summary.skipped) == (listed - 2, 2)
    assert summary.splits == {"train": 3 * 40 + 2, "val": 3 * 10}
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == sorted(
        [str(special["text"]), str(special["truncated"])]
    )
    assert all(line.split("\t")[1] for line in skipped)  # each with its error
    line = summary.line(out)
    assert "converted 152" in line and "skipped 2" in line and "MiB" in line
    settings = json.loads((out / "prepare.json").read_text())
    assert (settings["converted"], settings["skipped"], settings["max_side"]) == (152, 2, MAX_SIDE)


def test_every_stored_image_is_a_capped_rgb_jpeg_with_its_aspect_ratio(prepared):
    out, _ = prepared
    for split in ("train", "val"):
        images, entries = stored_images(out, split)
        assert all(image.format == "JPEG" for image in images)
        sizes = np.array([(image.height, image.width) for image in images])
        assert np.array_equal(sizes, entries.sizes)
        assert sizes.min(axis=1).max() <= MAX_SIDE
        original = entries.original_sizes.astype(float)
        ratio_error = np.abs(sizes[:, 1] / sizes[:, 0] - original[:, 1] / original[:, 0])
        assert ratio_error.max() < 0.05  # rounding of one side to whole pixels
        assert np.array_equal(np.unique(entries.labels), np.arange(len(CLASSES)))


def test_small_jpegs_are_kept_byte_for_byte_and_cmyk_becomes_rgb(tree):
    _, special = tree
    gray = special["gray"].read_bytes()
    kept, size, original = prep.convert_image(gray, MAX_SIDE, 90)
    assert kept == gray and size == original == (50, 60)
    converted, size, original = prep.convert_image(special["cmyk"].read_bytes(), MAX_SIDE, 90)
    image = Image.open(io.BytesIO(converted))
    assert image.mode == "RGB" and original == (300, 120) and size == (160, 64)
    with pytest.raises(OSError):
        prep.convert_image(special["truncated"].read_bytes(), MAX_SIDE, 90)


def test_an_interrupted_run_resumes_at_the_unfinished_chunks(tree, tmp_path, monkeypatch):
    root, _ = tree
    out = tmp_path / "out"
    first = prep.prepare(root, out, max_side=MAX_SIDE, workers=1, shard_images=25, progress=False)
    index_before = (out / "train" / INDEX_NAME).read_bytes()
    # an interruption: the last chunk of train never wrote its entries, nothing was merged
    (out / "train" / "shard-00004.npz").unlink()
    (out / "train" / INDEX_NAME).unlink()
    converted = []
    original = prep.convert_chunk
    monkeypatch.setattr(prep, "convert_chunk", lambda *a: converted.append(a[1]) or original(*a))
    again = prep.prepare(root, out, max_side=MAX_SIDE, workers=1, shard_images=25, progress=False)
    assert converted == [4]
    assert (again.converted, again.skipped, again.bytes) == (
        first.converted,
        first.skipped,
        first.bytes,
    )
    assert (out / "train" / INDEX_NAME).read_bytes() == index_before


def test_resuming_with_other_settings_is_refused(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out"
    prep.prepare(root / "val", out, max_side=MAX_SIDE, workers=1, progress=False)
    with pytest.raises(ValueError, match="quality"):
        prep.prepare(root / "val", out, max_side=MAX_SIDE, quality=50, workers=1, progress=False)


@pytest.mark.parametrize(
    ("keys", "named"),
    [({"max_side": 0}, "max_side"), ({"quality": 101}, "quality"), ({"workers": "4"}, "workers")],
)
def test_bad_settings_are_named(tree, tmp_path, keys, named):
    with pytest.raises(ValueError, match=named):
        prep.prepare(tree[0], tmp_path / "out", progress=False, **keys)


def test_a_tree_without_class_folders_is_named(tmp_path):
    (tmp_path / "flat").mkdir()
    _image(np.random.default_rng(0), 40, 40).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(ValueError, match="class folders"):
        prep.prepare(tmp_path / "flat", tmp_path / "out", progress=False)


def test_frames_tree_numbers_videos_and_has_no_labels(tmp_path):
    rng = np.random.default_rng(1)
    for video, frames in (("clip_b", 3), ("clip_a", 2)):
        (tmp_path / "frames" / video).mkdir(parents=True)
        for i in range(frames):
            _image(rng, 48, 64).save(tmp_path / "frames" / video / f"{i:03d}.jpg")
    out = tmp_path / "out"
    summary = prep.prepare(tmp_path / "frames", out, frames=True, max_side=32, progress=False)
    entries, classes, _ = load_entries(out / "train" / INDEX_NAME)
    assert summary.converted == 5 and classes == []
    assert entries.videos.tolist() == [0, 0, 1, 1, 1]  # clip_a, then clip_b
    assert (entries.labels == -1).all() and entries.sizes.tolist()[0] == [32, 43]
