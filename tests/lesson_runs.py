"""Running a lesson headless as a teacher's `make lessons` does, and what a passing run shows.

Shared by the seven tests/test_lessons_*.py: each lesson runs with its solutions filled in
(`solutions=True`), and a passing run has no error output, no failed verdict, exactly one
passing verdict per exercise and static figures for the handout.
"""

from __future__ import annotations

from pathlib import Path

from interlab.lessons.checking import FAIL_MARK, PASS_MARK

LESSONS = Path(__file__).parents[1] / "notebooks" / "lessons"
EXERCISES = 3  # every lesson has three checked exercises


def unfinished(*_args): ...  # a student's function before they write it


def execute(notebook: Path, out: Path, **parameters):
    """The executed copy of `notebook` (under `out`), solutions filled in, as nbformat nodes."""
    import nbformat
    import papermill

    executed = out / notebook.name
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters={"solutions": True, **parameters},
        cwd=str(notebook.parent),
        progress_bar=False,
    )
    return nbformat.read(executed, as_version=4)


def output_text(output: dict) -> str:
    """What a reader sees of one output: its stream text and every text/* representation."""
    data = output.get("data", {})
    shown = [str(value) for kind, value in data.items() if kind.startswith("text/")]
    return "".join(output.get("text", "")) + "".join(shown)


def assert_lesson_passed(notebook, min_figures: int = 1) -> None:
    """No error, no failed verdict, one passing verdict per exercise, `min_figures` PNGs."""
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    errors = [o.get("evalue") for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    texts = [output_text(o) for o in outputs]
    failed = [text for text in texts if FAIL_MARK in text]
    assert not failed, failed
    assert sum(PASS_MARK in text for text in texts) == EXERCISES
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= min_figures
