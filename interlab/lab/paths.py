"""Where the lab finds the project's files: the notebooks, the sweep grids, the runs folder.

In a source checkout everything hangs off the checkout's root, so JupyterLab (which starts
kernels in `notebooks/`) and papermill runs see the same folders. An installed package has no
checkout next to it: then relative paths start at the working directory and the notebooks are
found through `INTERLAB_NOTEBOOKS`, with a clear error when they are nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]
NOTEBOOKS_ENV = "INTERLAB_NOTEBOOKS"


def project_root() -> Path:
    """The source checkout holding this package, or the working directory when installed."""
    if (_CHECKOUT / "notebooks").is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT
    return Path.cwd()


def in_project(path: str | Path) -> Path:
    """An absolute path as given; a relative one taken from the project root."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def notebooks_dir() -> Path:
    """The folder of interlab's notebooks: `$INTERLAB_NOTEBOOKS`, else the checkout's."""
    candidates = [Path(os.environ[NOTEBOOKS_ENV])] if os.environ.get(NOTEBOOKS_ENV) else []
    candidates.append(_CHECKOUT / "notebooks")
    for candidate in candidates:
        if (candidate / "00_quickstart.ipynb").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "interlab's notebooks were not found (looked in "
        f"{', '.join(str(c) for c in candidates)}). This interlab is installed without its "
        f"source checkout: clone the repository, or set {NOTEBOOKS_ENV}=/path/to/interlab/notebooks."
    )


def notebook_path(name: str) -> Path:
    """One of interlab's notebooks by file name, e.g. `00_quickstart.ipynb`."""
    path = notebooks_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {name!r} in {path.parent}")
    return path


def grid_path(grid: str) -> Path:
    """A shipped sweep grid by name (`negative_sampling`) or file name."""
    name = grid if grid.endswith((".yaml", ".yml")) else f"{grid}.yaml"
    path = notebooks_dir() / "sweeps" / name
    if not path.is_file():
        shipped = sorted(p.stem for p in (notebooks_dir() / "sweeps").glob("*.yaml"))
        raise FileNotFoundError(f"no sweep grid {grid!r}; shipped grids: {', '.join(shipped)}")
    return path
