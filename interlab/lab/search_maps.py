"""What `notebooks/06_scfs.ipynb` shows: where SCFS's local crops find themselves in the image.

`scfs_run` gives a trained scfs method (a given run folder, or a small run trained here);
`plot_search_maps` draws, for a few images, each local crop's box on the whole image, the crop
itself and its search weights at every layer over the image; `sweep_table` is the ladder
sweep's summary when one has run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from interlab.data import ImageSet, load_dataset
from interlab.lab.paths import in_project

CROP_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500")


def scfs_run(
    run_dir: str = "",
    dataset: str = "cifar10-mini",
    epochs: int = 4,
    device: str = "auto",
    out_dir: str = "runs/scfs",
) -> tuple[Path, Any, ImageSet]:
    """(run folder, trained scfs method in eval mode on the CPU, its training images).

    An empty `run_dir` trains a small run into `out_dir/run` first (resumed if it is there),
    with the quickstart's settings for the device (on a CPU a ConvNet and narrow heads).
    """
    from interlab.lab.quickstart import quickstart_config
    from interlab.train import load_trained, train

    if run_dir:
        path = in_project(run_dir)
        if not (path / "checkpoint.pt").exists():
            raise ValueError(f"{path} has no checkpoint.pt; give a run folder of `interlab train`")
    else:
        config = quickstart_config("scfs", dataset, epochs, device, str(in_project(out_dir)))
        path = train(config, progress=False).out
    config, method = load_trained(path / "checkpoint.pt", device="cpu")
    if config.method != "scfs":
        raise ValueError(f"{path} is a {config.method} run; the search maps need an scfs run")
    return path, method, load_dataset(config.data, "train", root=config.data_root)


def pick_images(images: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """`count` images drawn without replacement, reproducibly."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:count]]


def unnormalise(view: torch.Tensor, mean: Any, std: Any) -> np.ndarray:
    """A normalised (3, s, s) view back to an (s, s, 3) array in [0, 1] for imshow."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (view.float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_search_maps(maps: Any, mean: Any, std: Any, max_crops: int = 3) -> Figure:
    """One row per (image, crop): image with the crop's box, the crop, its weights per layer.

    The dashed box on each weight map is where the crop really came from.

    Colours are stretched per map (the title gives the weights' actual range): what matters
    is where the crop found itself, and the cosines of one map often span a narrow band.
    """
    layers = sorted(maps.attention)
    n_crops = min(max_crops, maps.boxes.shape[0])
    n_images = maps.images.shape[0]
    rows, columns = n_images * n_crops, 2 + len(layers)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 1.9 * rows), squeeze=False)
    for i in range(n_images):
        image = maps.images[i].cpu().numpy()
        for k in range(n_crops):
            row = axes[i * n_crops + k]
            draw_box(row[0], image, maps.boxes[k, i].tolist(), CROP_COLOURS[k % len(CROP_COLOURS)])
            row[1].imshow(unnormalise(maps.local_views[k, i], mean, std))
            row[1].set_title(f"local crop {k + 1}", fontsize=8)
            for ax, layer in zip(row[2:], layers, strict=True):
                draw_heat(ax, image, maps.attention[layer][k, i].float().cpu().numpy(), layer)
                outline(ax, maps.boxes[k, i].tolist(), "white", style="--")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def outline(ax: Any, box: list[int], colour: str, style: str = "-") -> None:
    """The crop's box (top, left, height, width in pixels) over an image drawn at pixel size."""
    top, left, height, width = box
    ax.add_patch(
        Rectangle(
            (left - 0.5, top - 0.5), width, height, fill=False, edgecolor=colour, lw=1.5, ls=style
        )
    )


def draw_box(ax: Any, image: np.ndarray, box: list[int], colour: str) -> None:
    ax.imshow(image)
    outline(ax, box, colour)
    ax.set_title("global view + crop", fontsize=8)


def draw_heat(ax: Any, image: np.ndarray, weights: np.ndarray, layer: int) -> None:
    height, width = image.shape[:2]
    ax.imshow(image)
    ax.imshow(
        weights, cmap="inferno", alpha=0.6, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        vmin=float(weights.min()), vmax=float(weights.max()) + 1e-6, interpolation="nearest",
    )  # fmt: skip
    ax.set_title(f"layer {layer}: {weights.min():.2f}-{weights.max():.2f}", fontsize=8)


def sweep_table(sweep_dir: str | Path) -> str | None:
    """The ladder sweep's summary table (markdown), or None when the folder holds no runs."""
    from interlab.lab.report import collect_runs, write_report

    folder = in_project(sweep_dir)
    try:
        collect_runs(folder)
    except ValueError:
        return None
    return write_report(folder, plots=False)["markdown"].read_text()
