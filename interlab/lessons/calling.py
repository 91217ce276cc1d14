"""Calling a student's answer function inside a check: an unfinished or crashing answer is a
"not yet" verdict with the reason, never a traceback (shared by lessons 5-7)."""

from __future__ import annotations

from typing import Any

from interlab.lessons.checking import Verdict, failed


def unfinished(answer: Any) -> bool:
    """True for an answer the student has not written yet: None or `...`."""
    return answer is None or answer is Ellipsis


def call_answer(exercise: str, function: Any, *args: Any) -> tuple[Any, Verdict | None]:
    """(what `function(*args)` returned, None), or (None, a failed verdict saying why not)."""
    if unfinished(function):
        return None, failed(exercise, "no answer yet: write the function and run the cell")
    if not callable(function):
        return None, failed(
            exercise, f"pass your function itself, not its result (got a {type(function).__name__})"
        )
    try:
        result = function(*args)
    except Exception as error:  # the student's code: report it, do not crash the lesson
        return None, failed(exercise, f"your function raised {type(error).__name__}: {error}")
    if unfinished(result):
        return None, failed(
            exercise, "your function returns nothing yet: replace the `...` and return the result"
        )
    return result, None
