"""Image sets held in memory as uint8 tensors, and the loaders that build them.

Every loader returns an :class:`ImageSet`: the whole split as one uint8 (N, H, W, 3) tensor
plus int64 labels. The GPU trainer moves it to the device once and augments there, so the
loaders favour one big array over per-sample datasets.

Modules: ``imageset`` (the set itself), ``compact_jpeg`` (the ``.npz`` format of
``data/README.md``), ``folders`` (ImageFolder trees) and ``loaders`` (:func:`load_dataset`
and the names it understands).
"""

from interlab.data.compact_jpeg import DEFAULT_JPEG_QUALITY, read_npz, write_npz
from interlab.data.folders import DEFAULT_FOLDER_IMAGE_SIZE, FOLDER_SPLIT_DIRS
from interlab.data.imageset import ImageSet
from interlab.data.loaders import (
    CIFAR_SPLITS,
    DATASET_NAMES,
    DATASET_PREFIXES,
    STL10_SPLITS,
    default_root,
    load_dataset,
)

__all__ = [
    "CIFAR_SPLITS",
    "DATASET_NAMES",
    "DATASET_PREFIXES",
    "DEFAULT_FOLDER_IMAGE_SIZE",
    "DEFAULT_JPEG_QUALITY",
    "FOLDER_SPLIT_DIRS",
    "STL10_SPLITS",
    "ImageSet",
    "default_root",
    "load_dataset",
    "read_npz",
    "write_npz",
]
