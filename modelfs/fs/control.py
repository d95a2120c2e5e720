"""Starting, finding and stopping mount daemons, without importing pyfuse3.

The CLI uses this to check a mount point, spawn ``python -m modelfs.fs.daemon`` detached
with a log file, wait until the mount answers, and unmount. The daemon is spawned, never
forked from a process that may hold an LMDB environment open.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from modelfs import locks
from modelfs.errors import ModelfsError
from modelfs.fs.config import MountConfig
from modelfs.repo import make_dir, open_private, store_access

FSTYPE = "fuse.modelfs"
PID_XATTR = "user.modelfs.pid"
STORE_XATTR = "user.modelfs.store"
READ_ONLY_XATTR = "user.modelfs.read_only"


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    dev: str  # "major:minor", the name of the mount's backing device info in /sys/class/bdi
    mount_id: int = -1  # the first field: what /proc/PID/fdinfo calls mnt_id


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[MountEntry]:
    out = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            a, b = pre.split(), post.split()
            if len(a) >= 5 and len(b) >= 2:
                out.append(MountEntry(_unescape(a[4]), b[0], _unescape(b[1]), a[2], int(a[0])))
    return out


def find_mount(mountpoint: str | os.PathLike[str]) -> MountEntry | None:
    """The (last, i.e. visible) mount at this path, read without touching the path itself.

    Reading mountinfo never blocks on a hung or dead FUSE daemon, unlike stat().
    """
    path = os.path.abspath(mountpoint)
    found = None
    for m in mounts():
        if m.mountpoint == path:
            found = m
    return found


def check_mountpoint(mountpoint: Path) -> Path:
    """An absolute, empty, unmounted directory, or a ModelfsError saying what is wrong."""
    mnt = Path(os.path.abspath(mountpoint))
    m = find_mount(mnt)
    if m is not None:
        what = "a modelfs mount" if m.fstype == FSTYPE else f"a {m.fstype} mount"
        raise ModelfsError(f"{mnt} is already {what}; unmount it first (modelfs umount {mnt})")
    try:
        st = os.stat(mnt)
    except FileNotFoundError:
        raise ModelfsError(f"mount point {mnt} does not exist; create an empty directory") from None
    except OSError as e:
        raise ModelfsError(f"mount point {mnt}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ModelfsError(f"mount point {mnt} is not a directory")
    try:
        entries = os.listdir(mnt)
    except OSError as e:
        raise ModelfsError(f"mount point {mnt}: {e.strerror}") from None
    if entries:
        raise ModelfsError(f"mount point {mnt} is not empty ({len(entries)} entries); "
                           "mount on an empty directory")
    return mnt


def mount_lock_path(store: Path) -> Path:
    """Held (flock) by the one writable mount of a store for as long as its daemon lives."""
    return store / "mount.lock"


def already_mounted(store: Path) -> str:
    """The one line that refuses a second writable mount, naming the first."""
    h = locks.holder(mount_lock_path(store))
    where = f" at {h['mountpoint']} (daemon pid {h.get('pid', '?')})" if "mountpoint" in h else ""
    return (f"{store} is already mounted writable{where}; unmount it first, or add "
            "--read-only to mount it read-only beside it")


def check_store_free(store: Path) -> None:
    """Refuse, before spawning a daemon, a writable mount of a store that has one."""
    if locks.held(mount_lock_path(store)):
        raise ModelfsError(already_mounted(store))


def log_path(store: Path, mountpoint: Path) -> Path:
    """One log per (store, mount point): ``<store>/logs/mount-<name>-<hash>.log``."""
    mnt = os.path.abspath(mountpoint)
    tag = hashlib.blake2s(mnt.encode(), digest_size=4).hexdigest()
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(mnt))
    return store / "logs" / f"mount-{name or 'root'}-{tag}.log"


def tail(path: Path, lines: int = 20) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def daemon_command(store: Path, mountpoint: Path, config: MountConfig) -> list[str]:
    return [sys.executable, "-m", "modelfs.fs.daemon", "--store", str(store),
            *config.to_argv(), str(mountpoint)]


def wait_mounted(mountpoint: Path, proc: subprocess.Popen[bytes] | None, timeout: float,
                 log: Path | None = None) -> None:
    """Poll until the mount is in mountinfo and answers a stat, or explain why not."""
    deadline = time.monotonic() + timeout
    while True:
        m = find_mount(mountpoint)
        if m is not None and m.fstype == FSTYPE:
            os.stat(mountpoint)  # returns once the daemon serves requests
            return
        rc = proc.poll() if proc is not None else None
        if rc is not None:
            msg = f"mount of {mountpoint} failed: the daemon exited with status {rc}"
            if log is not None:
                msg += f"; end of {log}:\n{tail(log)}"
            raise ModelfsError(msg)
        if time.monotonic() > deadline:
            if proc is not None:
                proc.terminate()
            msg = f"mount of {mountpoint} did not come up within {timeout:.0f}s"
            if log is not None:
                msg += f"; end of {log}:\n{tail(log)}"
            raise ModelfsError(msg)
        time.sleep(0.05)


def start_daemon(store: Path, mountpoint: Path, config: MountConfig, timeout: float = 60.0
                 ) -> int:
    """Spawn a detached mount daemon and return its pid once the mount is ready."""
    mnt = check_mountpoint(mountpoint)
    if not config.read_only:
        check_store_free(store)
    log = log_path(store, mnt)
    access = store_access(store)  # logs name models and files: as private as the store
    make_dir(log.parent, access)
    with open_private(log, access) as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} mount {mnt}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            daemon_command(store, mnt, config), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd="/",
        )
    wait_mounted(mnt, proc, timeout, log)
    return proc.pid


def mount_store(mountpoint: Path) -> Path | None:
    """The store a writable mount serves (None for a read-only or a foreign mount)."""
    try:
        if os.getxattr(mountpoint, READ_ONLY_XATTR) == b"1":
            return None
        return Path(os.fsdecode(os.getxattr(mountpoint, STORE_XATTR)))
    except OSError:
        return None


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid of the daemon serving a mount (it publishes it as a root xattr)."""
    try:
        return int(os.getxattr(mountpoint, PID_XATTR))
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 30.0) -> str:
    """Unmount and wait for the daemon to exit; returns a one-line report.

    Without ``lazy`` a mount with open files is refused (fusermount3 says busy). With it the
    mount is detached at once and the daemon keeps serving open files, exiting after the
    last one closes. The daemon commits every draft before it exits, so this returns once
    what was written is a version.
    """
    mnt = Path(os.path.abspath(mountpoint))
    m = find_mount(mnt)
    if m is None:
        raise ModelfsError(f"{mnt} is not mounted")
    if m.fstype != FSTYPE:
        raise ModelfsError(f"{mnt} is a {m.fstype} mount, not modelfs")
    pid = daemon_pid(mnt)
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mnt)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ModelfsError("fusermount3 not found: install the fuse3 package") from None
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"status {r.returncode}"
        if "busy" in err.lower():
            raise ModelfsError(f"{mnt} is busy (a process has a file or directory open there); "
                               "close it, or use --lazy to detach now and stop when it closes")
        raise ModelfsError(f"unmounting {mnt} failed: {err}")
    if pid is None:
        return f"unmounted {mnt}"
    if wait_exit(pid, 2.0 if lazy else timeout):
        return f"unmounted {mnt}"
    if lazy:
        return f"detached {mnt}; the daemon (pid {pid}) exits when the last open file closes"
    raise ModelfsError(f"unmounted {mnt}, but the daemon (pid {pid}) did not exit "
                       f"within {timeout:.0f}s")
