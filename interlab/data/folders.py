"""Image-folder trees, read whole into an ImageSet of one square side.

Class folders and image files follow torchvision's ImageFolder conventions (``find_classes``,
``make_dataset`` with ``IMG_EXTENSIONS``), so a tree gets the same classes and labels here as
there. ``interlab.videos`` reads its one-folder-per-video trees with the same helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from interlab.data.imageset import ImageSet, check_split

# A folder split name -> the subfolders that may hold it, first match wins.
FOLDER_SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "test": ("test", "val"),
    "val": ("val", "test"),
}
DEFAULT_FOLDER_IMAGE_SIZE = 32
IMAGE_EXTENSIONS_TEXT = ", ".join(IMG_EXTENSIONS)  # for messages about finding no images
_PROGRESS_MIN_FILES = 2000  # folders smaller than this load without a progress bar


def load_folder(root: Path, split: str, size: int) -> ImageSet:
    """Class subfolders of ``root`` (or of ``root/train``, ``root/test``/``val``)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    directory, classes = _split_folder_and_classes(root, split)
    files, labels = class_image_files(directory, classes)
    if not files:
        raise ValueError(f"no images ({IMAGE_EXTENSIONS_TEXT}) in class folders of {directory}")
    images = torch.from_numpy(read_square_images(files, size))
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes)


def _split_folder_and_classes(root: Path, split: str) -> tuple[Path, list[str]]:
    """The folder holding ``split``; in a split tree the classes are those of all splits, so
    a class missing from one split keeps its index."""
    split_dirs = folder_split_dirs(root)
    if not split_dirs:
        if split != "train":
            raise ValueError(
                f"{root} has no train/ and test/ (or val/) subfolders, so the whole tree is "
                f"the 'train' split; got split {split!r}"
            )
        return root, class_folders(root)
    check_split(f"folder {root}", split, tuple(FOLDER_SPLIT_DIRS))
    directory = next((split_dirs[d] for d in FOLDER_SPLIT_DIRS[split] if d in split_dirs), None)
    if directory is None:
        raise ValueError(f"{root} has no {' or '.join(FOLDER_SPLIT_DIRS[split])}/ subfolder")
    classes = sorted({name for folder in split_dirs.values() for name in class_folders(folder)})
    return directory, classes


def folder_split_dirs(root: Path) -> dict[str, Path]:
    """Split subfolders when the tree is split (train/ plus test/ or val/), else empty."""
    present = {d: root / d for d in ("train", "test", "val") if (root / d).is_dir()}
    is_split_tree = "train" in present and ("test" in present or "val" in present)
    return present if is_split_tree else {}


def class_folders(directory: Path) -> list[str]:
    """Sorted subfolder names, as torchvision's ``find_classes`` gives them, empty when there
    are none; hidden folders (``.ipynb_checkpoints``) are not classes."""
    try:
        names, _ = find_classes(directory)
    except FileNotFoundError:  # torchvision's signal for "no subfolders": callers name the path
        return []
    return [name for name in names if not name.startswith(".")]


def class_image_files(directory: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files under each class folder (at any depth) and the class's index in ``classes``.

    Class folders absent from ``directory`` or holding no image are skipped, not errors.
    """
    if not classes:
        return [], []
    class_to_index = {name: index for index, name in enumerate(classes)}
    samples = make_dataset(directory, class_to_index, IMG_EXTENSIONS, allow_empty=True)
    return [Path(path) for path, _ in samples], [label for _, label in samples]


def read_square_images(files: list[Path], size: int) -> np.ndarray:
    """Reads every file once with Pillow (a loop is fine: it runs once per folder)."""
    from tqdm.auto import tqdm

    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    progress = tqdm(files, desc="reading images", disable=len(files) < _PROGRESS_MIN_FILES)
    for position, file in enumerate(progress):
        try:
            with Image.open(file) as image:
                images[position] = np.asarray(_shorter_side_then_centre_crop(image, size))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {file}: {error}") from error
    return images


def _shorter_side_then_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """Scales the shorter side to ``size`` (antialiased bicubic), then crops the centre square."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))
