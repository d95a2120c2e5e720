"""The mount under benchmark: one `MountHandle`, restarted between cold runs, with CPU and
counter readings of its daemon."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib.common import proc_cpu

from modelfs.fs.config import MountConfig
from modelfs.fs.handle import MountHandle


class Mount:
    """`modelfs mount`'s default settings; `start_s` collects how long each start took."""

    def __init__(self, store: Path, mnt: Path, log: Path) -> None:
        self.store, self.mnt, self.log = store, mnt, log
        self.handle: MountHandle | None = None
        self.start_s: list[float] = []

    @property
    def up(self) -> bool:
        return self.handle is not None

    def start(self) -> None:
        t0 = time.perf_counter()
        self.handle = MountHandle.start(self.store, self.mnt, self.log, MountConfig())
        self.start_s.append(time.perf_counter() - t0)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.handle is not None, "the mount is not running"
        return self.handle.pid

    def counters(self) -> dict[str, int]:
        assert self.handle is not None, "the mount is not running"
        return self.handle.counters()

    def cpu(self) -> float:
        return proc_cpu(self.pid)


def counter_delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if isinstance(b[k], int) and k not in ("open_files", "inodes")}


@contextlib.contextmanager
def daemon_watch(m: Mount, into: dict[str, Any]) -> Iterator[None]:
    """Record the daemon's CPU seconds and counter deltas over a block."""
    c0, cpu0 = m.counters(), m.cpu()
    yield
    into["daemon_cpu_s"] = round(m.cpu() - cpu0, 3)
    into["counters"] = counter_delta(c0, m.counters())
