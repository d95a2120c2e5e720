"""Helpers for the mount tests: spawning daemons, waiting for mounts, reader processes.

The mount handle itself is `modelfs.fs.handle.MountHandle` (the benchmarks use it too);
`Mounted`, `start_mount` and `force_unmount` are its names here.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelfs.fs import control
from modelfs.fs.config import MountConfig
from modelfs.fs.handle import MountHandle, force_unmount
from modelfs.lineage import Version
from modelfs.repo import Repo

FUSE_MISSING = (
    "FUSE is not usable here"
    if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3"))
    else ""
)


def sweep_stale_mounts() -> None:
    """Unmount dead modelfs mounts (daemon gone) left under a pytest tmp by killed runs.

    Live mounts are left alone: they may belong to a test session running beside this one.
    """
    try:
        entries = control.mounts()
    except OSError:
        return
    for m in entries:
        if m.fstype != control.FSTYPE or "/pytest-of-" not in m.mountpoint:
            continue
        try:
            os.stat(m.mountpoint)
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                force_unmount(m.mountpoint)


@dataclass(frozen=True)
class FsLineage:
    """The store the mount tests share and what was imported into it."""

    store: Path
    sources: dict[str, Path]  # ref -> directory it was imported from
    versions: dict[str, Version]  # ref -> version

    def source_of(self, ref: str) -> Path:
        return self.sources[ref]


Mounted = MountHandle  # a running mount: .path .proc .log .stop() .counters() .log_text()


def start_mount(store: Path, mnt: Path, log: Path, cache_mb: int = 256,
                extra: tuple[str, ...] = ()) -> Mounted:
    """Spawn a mount daemon of `store` at `mnt` (output into `log`); return once it answers."""
    return MountHandle.start(store, mnt, log, MountConfig(cache_mb=cache_mb), extra)


def empty_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A new empty store for a module's mount (fails, not skips, where FUSE is missing)."""
    if FUSE_MISSING:
        pytest.fail(FUSE_MISSING)
    store = tmp_path_factory.mktemp(name) / "store"
    Repo.init(store).close()
    return store


def module_mount(store: Path, tmp_path_factory: pytest.TempPathFactory, name: str,
                 settle: float = 1.0) -> Iterator[Mounted]:
    """The body of a module-scoped mount fixture: mounted, yielded, stopped."""
    root = tmp_path_factory.mktemp(name)
    m = start_mount(store, root / "mnt", root / "daemon.log", extra=("--settle", str(settle)))
    try:
        yield m
    finally:
        m.stop()


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def head_ref(model_dir: Path) -> str | None:
    """``<model>@<n>`` a head directory shows now (None before its first commit)."""
    try:
        return os.getxattr(model_dir, "user.modelfs.ref").decode()
    except OSError:
        return None


def wait_ref(model_dir: Path, ref: str, timeout: float = 30.0) -> float:
    """Wait until a head shows version ``ref``; returns the seconds it took."""
    t = time.monotonic()
    if not wait_for(lambda: head_ref(model_dir) == ref, timeout, 0.01):
        raise AssertionError(f"{model_dir} shows {head_ref(model_dir)}, not {ref}, after "
                             f"{timeout}s; draft: {draft_state(model_dir)}")
    return time.monotonic() - t


def draft_state(model_dir: Path) -> dict[str, Any]:
    import json

    try:
        return dict(json.loads(os.getxattr(model_dir, "user.modelfs.draft")))
    except OSError as e:
        return {"error": str(e)}


PY = sys.executable
READERS = str(Path(__file__).with_name("readers.py"))


def reader(*args: str, **kw: Any) -> subprocess.Popen[str]:
    """A reader process (tests/fs/readers.py) with pipes for its stdin and stdout."""
    return subprocess.Popen([PY, READERS, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, **kw)
