"""The store's writer lock: imports and drafts share it, gc takes it alone.

One object, handed to every writer (the facade, drafts, maintenance), so none of them
reaches into another for it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from modelfs.errors import StoreReadOnly
from modelfs.store import Store


class WriterLock:
    """A flock on ``<store>/lock``; a memory store (no path) needs none."""

    def __init__(self, store: Store, path: Path | None) -> None:
        self._store = store
        self._path = path

    @contextlib.contextmanager
    def hold(self, exclusive: bool = False) -> Iterator[None]:
        """Shared for writers that only add; exclusive so gc never frees a chunk being written."""
        if self._store.readonly:  # before the lock file, which a read-only disk cannot create
            raise StoreReadOnly(f"store {self._path} is read-only: nothing was changed")
        if self._path is None:
            yield
            return
        with open(self._path / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
