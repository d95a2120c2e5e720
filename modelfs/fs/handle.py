"""A mount daemon this process started and will stop: for tests and benchmarks.

``modelfs mount`` starts a detached daemon and forgets it; tests and benchmarks instead need
to own one: spawn ``python -m modelfs.fs.daemon`` (spawned, never forked: the caller may hold
LMDB environments open), wait until the mount answers, read its counters, and stop it for
sure, SIGTERM first (the daemon stores every closed file, then exits) and a forced unmount
if anything is left. No pyfuse3 or trio here: the daemon is another process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelfs.fs import control
from modelfs.fs.config import MountConfig

COUNTERS_XATTR = "user.modelfs.counters"


def force_unmount(path: Path | str) -> None:
    """Detach a mount whatever state its daemon is in (``fusermount3 -u -z``)."""
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


@dataclass
class MountHandle:
    """A running mount: its path, daemon process and log."""

    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, store: Path, mountpoint: Path, log: Path, config: MountConfig | None = None,
              extra: tuple[str, ...] = (), timeout: float = 60.0) -> MountHandle:
        """Spawn the daemon (output appended to `log`) and return once the mount answers."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*control.daemon_command(store, mountpoint, config or MountConfig()), *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            control.wait_mounted(mountpoint, proc, timeout=timeout, log=log)
        except BaseException:
            proc.kill()
            force_unmount(mountpoint)
            raise
        return cls(mountpoint, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def counters(self) -> dict[str, int]:
        """The daemon's work counters (reads, decodes, cache hits ...), from a root xattr."""
        return dict(json.loads(os.getxattr(self.path, COUNTERS_XATTR)))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (lazy unmount, then exit), falling back to a kill and a forced unmount."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if control.find_mount(self.path) is not None:
            force_unmount(self.path)
        return self.proc.returncode

    def __enter__(self) -> MountHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
