"""Versions as read-only directories for tests and recipes: a mount, never a copy.

A running mount of the store is used as it is (``<mnt>/<model>@<n>/``); without one, a
private read-only mount is started in a temporary directory for as long as it is needed
(read-only mounts work beside the store's writable one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from modelfs.fs import control
from modelfs.fs.config import MountConfig
from modelfs.fs.handle import MountHandle
from modelfs.repo import Version


class MountedVersions:
    """``VersionDirs`` over a mount of ``store`` (found, or started privately)."""

    def __init__(self, store: Path) -> None:
        self.store = Path(os.path.abspath(store))
        self._own: MountHandle | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.root: Path | None = None

    def __enter__(self) -> MountedVersions:
        self.root = self._existing()
        if self.root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="modelfs-versions-")
            tmp = Path(self._tmp.name)
            self._own = MountHandle.start(self.store, tmp / "mnt", tmp / "mount.log",
                                          MountConfig(read_only=True, cache_mb=256))
            self.root = self._own.path
        return self

    def _existing(self) -> Path | None:
        for m in control.mounts():
            if m.fstype != control.FSTYPE:
                continue
            try:
                store = os.fsdecode(os.getxattr(m.mountpoint, control.STORE_XATTR))
            except OSError:
                continue
            if os.path.abspath(store) == str(self.store):
                return Path(m.mountpoint)
        return None

    def path(self, version: Version) -> Path:
        assert self.root is not None, "use MountedVersions as a context manager"
        return self.root / version.ref

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._own is not None:
            self._own.stop()
            self._own = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
