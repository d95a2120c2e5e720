"""Whether a written file is really closed: who else still holds a descriptor of it.

The kernel sends FLUSH on every close(2) of a descriptor, not only the writer's last: a
forked child exiting, or any program the writer starts (its copy of the descriptor is
closed at exec), flushes a file its writer is still writing. Recording that as a close
would make half a file durable, and a crash or a directory fsync would commit it. pyfuse3
gives FLUSH no caller, so the mount asks ``/proc``: a close is the writer's last when no
process holds a descriptor of the file open for writing any more (the closing descriptor
has left its table before the kernel flushes). Processes whose ``/proc`` cannot be read
(another user, ``hidepid``) are not seen, and their closes count as the last, as before.
"""

from __future__ import annotations

import os

PROC = "/proc"


def held_for_writing(mountpoint: str, mount_id: int, ino: int, proc: str = PROC) -> bool:
    """Whether any process holds a descriptor of inode ``ino`` of this mount open to write."""
    prefix = mountpoint.rstrip("/") + "/"
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")  # the kernel's path: no request to us
            except OSError:
                continue
            if target.startswith(prefix) and _writes(f"{proc}/{pid}/fdinfo/{fd}", mount_id, ino):
                return True
    return False


def _writes(fdinfo: str, mount_id: int, ino: int) -> bool:
    try:
        with open(fdinfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        if int(fields["mnt_id"]) != mount_id or int(fields["ino"]) != ino:
            return False
        return int(fields["flags"], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, KeyError, ValueError):
        return False
