"""Which code produced a result: a hash of the package's sources, and the git commit.

A study compares arms only when they ran the same code. The git commit alone does not say
that (a run from a working tree with edits has the commit of the edits' parent, and a
commit that touches only documentation changes it), so the sources are hashed: the
package's Python files and its named configs, byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """12 hex digits of the SHA-256 over the package's .py and .yaml files (path + bytes)."""
    digest = hashlib.sha256()
    for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.yaml")]):
        if "__pycache__" in path.parts:
            continue
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
