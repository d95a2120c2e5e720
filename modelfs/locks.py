"""Advisory locks the kernel releases when their holder dies: who owns a store or a staging dir.

``flock`` locks belong to an open file description, so a lock taken by a daemon is dropped by
the kernel the moment that process exits, however it exits (SIGKILL included). That makes
them the one reliable "is its owner still alive?" test: no pid files that outlive a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any


def held(path: Path) -> bool:
    """Whether some live process (this one included, by another open) holds ``path``'s lock."""
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except (FileNotFoundError, NotADirectoryError):
        return False


def holder(path: Path) -> dict[str, Any]:
    """What the holder wrote into the lock file when it took it ({} if unreadable)."""
    try:
        d = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


class ExclusiveLock:
    """A lock held for the life of an object (a mount); its file says who holds it."""

    def __init__(self, path: Path, info: dict[str, Any], mode: int = 0o600) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        self._f: IO[str] | None = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            self._f = None
            raise
        self.path = path
        self._f.truncate(0)
        self._f.write(json.dumps(info))
        self._f.flush()

    def release(self) -> None:
        if self._f is None:
            return
        with contextlib.suppress(OSError):
            self._f.truncate(0)
        self._f.close()
        self._f = None
