"""One writer per run folder: an exclusive `fcntl.flock` on `RUN/.lock` for as long as a run
writes there.

Two trainers (or a rerun sweep and the orphan of a killed one) writing one folder interleave
their epochs in `metrics.jsonl`. The kernel releases a flock when its holder dies, however it
dies, so a lock left by a dead process is simply taken over; the file only records who holds
it (pid, host, start time) for the error a second writer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderLocked(RuntimeError):
    """Another live process writes this run folder."""


def lock_holder(run_dir: str | Path, name: str = LOCK_NAME) -> dict | None:
    """Who holds the folder's lock now, or None when it is free (a stale file counts as free)."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class RunLock:
    """Context manager holding the folder's lock; raises RunFolderLocked naming the holder."""

    def __init__(self, run_dir: str | Path, name: str = LOCK_NAME) -> None:
        self.path = Path(run_dir) / name
        self._handle = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the lock's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            holder = _read_holder(self.path) or {}
            raise RunFolderLocked(
                f"{self.path.parent} is being written by another process (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('since', '?')}); stop it or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def _read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
