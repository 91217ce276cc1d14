"""The layer rule: core modules never import the lab layer (nor the CLI that sits on both)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import interlab

PACKAGE = Path(interlab.__file__).parent
# Above the core: the lab subpackage, the lessons, the `interlab.explore` alias and the CLI.
UPPER = (
    "interlab.lab",
    "interlab.lessons",
    "interlab.explore",
    "interlab.cli",
    "interlab.__main__",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_upper(name: str) -> bool:
    return any(name == upper or name.startswith(upper + ".") for upper in UPPER)


def imported_names(path: Path, name: str | None = None) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth (lazy imports too)."""
    names: set[str] = set()
    package = (name or module_name(path)).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def core_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not is_upper(module_name(p))]


def test_core_never_imports_lab():
    core = core_modules()
    assert len(core) > 20, "the walk found too few core modules"
    offenders = {
        module_name(path): sorted(n for n in imported_names(path) if is_upper(n)) for path in core
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"core modules import the lab layer: {offenders}"


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """Guards the checker itself: an import inside a function, or a relative one, is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..lab import sweep\n    import interlab.explore\n")
    names = imported_names(probe, "interlab.methods.probe")
    assert "interlab.lab.sweep" in names and "interlab.explore" in names
    assert is_upper("interlab.lab.sweep") and not is_upper("interlab.labels")


def test_notebooks_are_found_from_the_checkout_or_the_environment(tmp_path, monkeypatch):
    """An installed interlab has no checkout next to it: INTERLAB_NOTEBOOKS points at the
    notebooks, and a wrong location fails with a message saying what to do."""
    from interlab.lab import paths

    assert paths.notebook_path("00_quickstart.ipynb").is_file()  # the source checkout
    assert paths.grid_path("negative_sampling").name == "negative_sampling.yaml"
    monkeypatch.setattr(paths, "_CHECKOUT", tmp_path / "site-packages")
    monkeypatch.delenv(paths.NOTEBOOKS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="INTERLAB_NOTEBOOKS"):
        paths.notebooks_dir()
    assert paths.project_root() == Path.cwd()  # relative paths start where the user is
    copy = tmp_path / "my_notebooks"
    (copy / "sweeps").mkdir(parents=True)
    (copy / "00_quickstart.ipynb").write_text("{}")
    (copy / "sweeps" / "scfs.yaml").write_text("notebook: ../train.ipynb\n")
    monkeypatch.setenv(paths.NOTEBOOKS_ENV, str(copy))
    assert paths.notebooks_dir() == copy.resolve()
    assert paths.grid_path("scfs") == copy.resolve() / "sweeps" / "scfs.yaml"
    with pytest.raises(FileNotFoundError, match="shipped grids: scfs"):
        paths.grid_path("sizing")
