"""What every lesson check shares: a verdict that says whether the answer is right and why not.

A check never raises on a wrong answer (the student reads the verdict and tries again); it
raises only when the lesson itself is broken. Executed headless with `solutions=True`, every
verdict must be a pass: the `tests/test_lessons_*.py` files read the executed notebooks for `FAIL_MARK`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PASS_MARK = "✅ right"
FAIL_MARK = "❌ not yet"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one exercise check; shows itself in a notebook as one line."""

    exercise: str
    passed: bool
    message: str

    def __str__(self) -> str:
        mark = PASS_MARK if self.passed else FAIL_MARK
        return f"{mark} ({self.exercise}): {self.message}"

    def __repr__(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return self.passed

    def _repr_markdown_(self) -> str:
        return f"**{PASS_MARK if self.passed else FAIL_MARK}** ({self.exercise}): {self.message}"


def passed(exercise: str, message: str) -> Verdict:
    return Verdict(exercise, True, message)


def failed(exercise: str, message: str) -> Verdict:
    return Verdict(exercise, False, message)


def as_tensor(value: Any) -> torch.Tensor | None:
    """The student's answer as a float64 tensor, or None when it is not a number array."""
    if isinstance(value, torch.Tensor):
        return value.detach().double().cpu()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return torch.from_numpy(array)


def compare(
    exercise: str,
    answer: Any,
    expected: torch.Tensor | float,
    what: str,
    atol: float = 1e-4,
    hints: tuple[tuple[Callable[[torch.Tensor], bool], str], ...] = (),
) -> Verdict:
    """Right when `answer` equals `expected` (shape and values within `atol`).

    `hints` are (test, message) pairs tried on a wrong answer, in order: the first test that
    holds gives the reason (e.g. "you divided by the temperature twice").
    """
    if answer is None:
        return failed(exercise, f"no answer yet: compute {what} and pass it in")
    got = as_tensor(answer)
    if got is None:
        return failed(exercise, f"{what} should be numbers; got a {type(answer).__name__}")
    want = torch.as_tensor(expected, dtype=torch.float64)
    if got.shape != want.shape:
        return failed(
            exercise, f"{what} should have shape {tuple(want.shape)}; got {tuple(got.shape)}"
        )
    if not torch.isfinite(got).all():
        return failed(exercise, f"{what} holds NaN or inf values")
    if torch.allclose(got, want, atol=atol, rtol=0):
        return passed(exercise, f"{what} matches")
    for test, message in hints:
        if test(got):
            return failed(exercise, message)
    error = (got - want).abs().max().item()
    return failed(exercise, f"{what} is off by up to {error:.3g}")


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
