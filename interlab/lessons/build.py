"""Execute every lesson headless into a folder, with outputs and an HTML copy (the handout).

`make lessons` (or `python -m interlab.lessons.build`) runs each notebook of
`notebooks/lessons/` with papermill, solutions filled in by default, into `runs/lessons/`, and
writes `NAME.html` beside each executed copy with nbconvert.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

from interlab.lab.paths import in_project, notebooks_dir


def lesson_notebooks() -> list[Path]:
    """The lesson notebooks in teaching order."""
    lessons = sorted((notebooks_dir() / "lessons").glob("[0-9][0-9]_*.ipynb"))
    if not lessons:
        raise FileNotFoundError(f"no lessons in {notebooks_dir() / 'lessons'}")
    return lessons


def execute_lesson(notebook: Path, out_dir: Path, solutions: bool = True) -> dict[str, object]:
    """Run one lesson; returns its executed copy, HTML copy and wall time."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters={"solutions": solutions},
        cwd=str(notebook.parent),
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return {"notebook": executed, "html": html, "seconds": seconds}


def build_lessons(out_dir: str | Path = "runs/lessons", solutions: bool = True) -> list[dict]:
    """Every lesson, one after the other; a failing lesson is reported and the others go on."""
    out = in_project(out_dir)
    results = []
    for notebook in tqdm(lesson_notebooks(), desc="lessons", unit="lesson"):
        try:
            results.append(execute_lesson(notebook, out, solutions))
        except Exception as error:  # recorded; the other lessons still build
            results.append({"notebook": notebook, "error": f"{type(error).__name__}: {error}"})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lessons")
    parser.add_argument("--no-solutions", action="store_true", help="leave the exercises open")
    args = parser.parse_args(argv)
    results = build_lessons(args.out, solutions=not args.no_solutions)
    for result in results:
        name = Path(result["notebook"]).name
        if "error" in result:
            print(f"FAILED {name}: {result['error']}")
        else:
            print(f"{name}: {result['seconds']:.0f} s -> {result['html']}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
