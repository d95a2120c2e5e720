"""This mount's staging directory, and the staging files other mounts left behind."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
from pathlib import Path
from typing import IO

from modelfs import locks
from modelfs.fs.staged import Staged, staging_mode
from modelfs.lineage import FileEntry
from modelfs.repo import STAGING_LOCK

LOCK_NAME = STAGING_LOCK
MOUNT_PREFIX = "mount-"  # staging directories of mounts; others (ops' temporary ones) are not ours


class StagingArea:
    """This mount's staging files: ``<store>/staging/<tag>/``, flock'd while the daemon lives.

    The lock tells a later mount whose staging files are orphans (their daemon died) and
    whose belong to a mount that is still running.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.dir = root / f"{MOUNT_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.dir.mkdir()
        os.chmod(self.dir, root.stat().st_mode & 0o7777)  # as private (or shared) as the store
        self._lock: IO[str] | None = open(self.dir / LOCK_NAME, "w")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._n = 0

    def new(self, model: str, path: str, mode: int, *, base: FileEntry | Staged | None = None,
            size: int = 0) -> Staged:
        """A fresh staging file (created on the loop: one metadata operation)."""
        self._n += 1
        file = self.dir / f"{self._n:08d}"
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fio = io.FileIO(fd, "r+", closefd=True)
        try:
            os.fchmod(fd, staging_mode(mode))
        except OSError:
            fio.close()
            file.unlink(missing_ok=True)
            raise
        return Staged(file, fio, model, path, mode, base=base, size=size)

    @staticmethod
    def adopt(model: str, path: str, file: Path) -> Staged | None:
        """A staging file recorded by a daemon that died (or another mount): frozen, read-only."""
        try:
            fio = io.FileIO(file, "r")
        except OSError:
            return None
        st_ = os.fstat(fio.fileno())
        st = Staged(file, fio, model, path, st_.st_mode, size=st_.st_size,
                    mtime_ns=st_.st_mtime_ns)
        st.freeze()
        st.recovered = True
        return st

    def close(self) -> None:
        """Remove this mount's directory (if it holds nothing but the lock) and unlock it."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            leftovers = [p for p in self.dir.iterdir() if p.name != LOCK_NAME]
            if not leftovers:
                (self.dir / LOCK_NAME).unlink()
                self.dir.rmdir()
        self._lock.close()
        self._lock = None

    # -- other mounts' directories -------------------------------------------------------
    @staticmethod
    def _alive(d: Path) -> bool:
        return locks.held(d / LOCK_NAME)

    def owned_by_live_mount(self, file: Path) -> bool:
        """Whether a staging file belongs to a mount that is running now (this one included)."""
        d = file.parent
        if d == self.dir:
            return True
        return d.parent == self.root and self._alive(d)

    def sweep(self, keep: set[Path]) -> list[Path]:
        """Delete staging files of dead mounts that no pending change points at.

        They were being written when their daemon died: never closed, so never part of a
        version. Directories of live mounts are left alone; emptied ones are removed; other
        directories (a merge's temporary one, still running) are not a mount's to sweep.
        """
        removed: list[Path] = []
        for d in sorted(self.root.iterdir()):
            if d == self.dir:
                continue
            if not d.is_dir():
                if d not in keep:  # a stray file directly under staging/
                    d.unlink(missing_ok=True)
                    removed.append(d)
                continue
            if not d.name.startswith(MOUNT_PREFIX) or self._alive(d):
                continue
            left = False
            for f in sorted(d.iterdir()):
                if f.name == LOCK_NAME:
                    continue
                if f in keep:
                    left = True
                    continue
                f.unlink(missing_ok=True)
                removed.append(f)
            if not left:
                with contextlib.suppress(OSError):
                    (d / LOCK_NAME).unlink(missing_ok=True)
                    d.rmdir()
        return removed
