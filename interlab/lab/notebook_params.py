"""What a notebook's `parameters` cell declares, and whether a run's parameters fit it.

papermill's `inspect_notebook` reads the cell: each parameter's name, its annotation or
`# type:` comment, the default's source text and the trailing comment as help. This module
keeps its own reading only for what papermill does not give:

- `X | None` and `Optional[X]`: papermill drops `x: int | None = None` lines (its pattern
  stops at `|`) and hands `Optional[int]` back as text; we split the type from "optional".
- lines papermill skips (a second `=` inside the help comment) or cuts short (a `#` inside a
  string default): the cell's `ast` supplies those names and defaults.
- defaults as Python values (papermill gives source text) and, without an annotation, the
  type of the literal default: the exact types `check_parameters` compares against.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}
MISSING: Any = object()  # a default that is not a Python literal (or no default at all)


@dataclass(frozen=True)
class NotebookParameter:
    """One declared parameter; `type_name` None means "any value" (no check possible)."""

    name: str
    type_name: str | None
    optional: bool
    default: Any
    help: str = ""

    def shown_type(self) -> str:
        return f"{self.type_name}{' | None' if self.optional else ''}"


def declared_parameters(notebook: Path) -> dict[str, NotebookParameter]:
    """The notebook's parameters in cell order: papermill's reading completed by `ast`."""
    source = parameters_cell_source(notebook)
    assignments = cell_assignments(source)
    inferred = papermill_parameters(notebook)
    names = [*assignments, *(name for name in inferred if name not in assignments)]
    return {
        name: merged_parameter(name, inferred.get(name), assignments.get(name)) for name in names
    }


def parameters_cell_source(notebook: Path) -> str:
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    tagged = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")
    return tagged[0].source


def papermill_parameters(notebook: Path) -> dict[str, dict[str, str]]:
    """name -> {name, inferred_type_name, default, help}, all as text (papermill's format)."""
    import papermill

    with papermill_quiet():  # its "Unable to parse line" warnings: we read those lines ourselves
        return papermill.inspect_notebook(str(notebook))


@contextlib.contextmanager
def papermill_quiet() -> Iterator[None]:
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


Assignment = tuple[ast.expr | None, ast.expr | None]  # (annotation, value)


def cell_assignments(source: str) -> dict[str, Assignment]:
    """Top-level `name = value` and `name: type = value` of the cell; {} if it is not Python."""
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics, say: papermill's line reading still applies
        return {}
    found: dict[str, Assignment] = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = (node.annotation, node.value)
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            found[node.targets[0].id] = (None, node.value)
    return found


def merged_parameter(
    name: str, inferred: dict[str, str] | None, assignment: Assignment | None
) -> NotebookParameter:
    annotation, value = assignment or (None, None)
    default = MISSING
    if inferred is not None:
        default = literal_from_text(inferred["default"])
    if default is MISSING:
        default = literal_from_node(value)
    type_name, optional = annotation_type(annotation)
    if type_name is None and annotation is None and inferred is not None:
        type_name, optional = type_from_text(inferred["inferred_type_name"])
    if type_name is None and default is not MISSING and default is not None:
        type_name = type(default).__name__
    help_text = inferred["help"] if inferred is not None else ""
    return NotebookParameter(name, type_name, optional or default is None, default, help_text)


def literal_from_text(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return MISSING


def literal_from_node(node: ast.expr | None) -> Any:
    if node is None:
        return MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return MISSING


def type_from_text(text: str) -> tuple[str | None, bool]:
    """papermill's type text (`int`, `Optional[int]`; "None" when it found none) split up."""
    if text in ("", "None"):
        return None, False
    try:
        return annotation_type(ast.parse(text, mode="eval").body)
    except SyntaxError:
        return None, False


def annotation_type(node: ast.expr | None) -> tuple[str | None, bool]:
    """(`int`, True) for `int | None` or `Optional[int]`; (None, False) when unknown."""
    if node is None:
        return None, False
    if isinstance(node, ast.Name):
        return node.id, False
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [node.left, node.right]
        is_none = [isinstance(n, ast.Constant) and n.value is None for n in sides]
        if not any(is_none):
            return None, False
        other = sides[1] if is_none[0] else sides[0]
        return (other.id if isinstance(other, ast.Name) else None), True
    optional_of = (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Optional"
        and isinstance(node.slice, ast.Name)
    )
    if optional_of:
        return node.slice.id, True
    return None, False


def declared_defaults(declared: dict[str, NotebookParameter]) -> dict[str, Any]:
    """The parameters cell's default values (those written as Python literals)."""
    return {name: p.default for name, p in declared.items() if p.default is not MISSING}


def check_parameters(
    parameters: dict[str, Any], declared: dict[str, NotebookParameter], notebook: Path
) -> None:
    """Names the notebook declares, values of the declared type (None where optional)."""
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(
                f"{notebook.name} declares no parameter {key!r}; valid: {', '.join(declared)}"
            )
        if not fits_declared_type(value, declared[key]):
            raise ValueError(
                f"parameter {key!r} of {notebook.name} expects "
                f"{declared[key].shown_type()}; got {value!r}"
            )


def fits_declared_type(value: Any, parameter: NotebookParameter) -> bool:
    """isinstance with the notebook's rules: an int is a float, a bool is not a number."""
    expected = TYPE_NAMES.get(parameter.type_name or "")
    if expected is None:
        return True
    if value is None:
        return parameter.optional
    if expected in (int, float) and isinstance(value, bool):
        return False
    if expected is float and isinstance(value, int):
        return True
    return isinstance(value, expected)
