"""Children that never outlive their parent (Linux's parent-death signal).

A sweep's notebook, or a notebook's torchrun workers, must not train on as orphans when the
process that started them dies, even by `kill -9`: an orphan keeps writing to a run folder
that a rerun is about to reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
DIE_WITH_PARENT_ENV = "INTERLAB_DIE_WITH_PARENT"  # set for workers a launcher cannot hook


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl


def die_with_parent() -> Callable[[], None] | None:
    """A child's pre-exec hook asking Linux to SIGKILL it when its parent dies; None off Linux."""
    prctl = _prctl()  # resolved here: between fork and exec the child only makes the call
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def die_with_parent_if_asked() -> None:
    """In a worker started by a launcher we cannot hook (torchrun's workers): when the
    environment asks for it, die with that launcher."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1":
        return
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
