"""Which code produced a result: a hash of the package's sources, and the git commit.

A study compares arms only when they ran the same code. The git commit alone does not say
that (a run from a working tree with edits has the commit of the edits' parent, and a
commit that touches only documentation changes it), so the sources that decide what a run
computes are hashed, byte for byte: the core package (every module outside `interlab/lab/`
and `interlab/lessons/`), its named configs, and the lab's `experiment.py` (the evaluation
a study's runs end with). Report, plotting and explorer code is left out: editing a table's
layout must not make finished runs incomparable. A run records it when it starts.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


TRAINING_LAB_FILES = ("lab/experiment.py",)  # lab code a study's run executes


def training_sources() -> list[Path]:
    """The files whose bytes decide what a run computes (see the module docstring)."""
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.yaml")]):
        relative = path.relative_to(PACKAGE).as_posix()
        if "__pycache__" in path.parts:
            continue
        if relative.startswith(("lab/", "lessons/")) and relative not in TRAINING_LAB_FILES:
            continue
        found.append(path)
    return found


@functools.cache
def code_version() -> str:
    """12 hex digits of the SHA-256 over `training_sources` (path + bytes); computed once per
    process, so call it when a run starts."""
    digest = hashlib.sha256()
    for path in training_sources():
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str | None:
    """HEAD's commit of the repository the package sits in ("+edits" when the package's files
    differ from it); None outside a git checkout."""
    try:
        head = _git("rev-parse", "HEAD")
        edited = _git("status", "--porcelain", "--", str(PACKAGE))
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+edits" if edited else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=PACKAGE, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
