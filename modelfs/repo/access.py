"""Who may read a store: its owner only, or also its group (`modelfs init --shared`).

A store holds every weight ever imported, so it is private by default: 0700 directories,
0600 files, whatever the umask (which would leave 0755/0644 and let every local user read
every weight). A shared store gives its group the same access (setgid 2770 directories, so
new files keep the store's group; 0660 files). The choice is written in the store (the
``access`` file), so what a later mount or command creates there follows it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

ACCESS_FILE = "access"


@dataclass(frozen=True, slots=True)
class Access:
    name: str
    dir_mode: int
    file_mode: int


PRIVATE = Access("private", 0o700, 0o600)
SHARED = Access("shared", 0o2770, 0o660)


def prepare_store(store: Path, shared: bool) -> Access:
    """Make a new store's directory with its access set and recorded, before anything in it."""
    access = SHARED if shared else PRIVATE
    make_dir(store, access)
    record_access(store, access)
    return access


def seal_store(store: Path, access: Access) -> None:
    """Give what `init` made (LMDB's files, the writer lock, staging) the store's modes."""
    for name in ("data.mdb", "lock.mdb"):
        set_file_mode(store / name, access)
    open_private(store / "lock", access).close()  # made now, so a shared group can take it
    make_dir(store / "staging", access)


def store_access(store: Path) -> Access:
    """The store's recorded choice; private when none is recorded (stores made before it)."""
    try:
        name = (store / ACCESS_FILE).read_text().strip()
    except OSError:
        return PRIVATE
    return SHARED if name == SHARED.name else PRIVATE


def record_access(store: Path, access: Access) -> None:
    with open_private(store / ACCESS_FILE, access, "wb") as f:
        f.write(f"{access.name}\n".encode())


def make_dir(path: Path, access: Access) -> Path:
    """`path` (and missing parents) as a store directory, its mode set whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # made by another member of a shared store's group
        os.chmod(path, access.dir_mode)
    return path


def set_file_mode(path: Path, access: Access) -> None:
    with contextlib.suppress(PermissionError, FileNotFoundError):
        os.chmod(path, access.file_mode)


def open_private(path: Path, access: Access, mode: str = "ab") -> BinaryIO:
    """Open (creating) a store file with the store's file mode: never readable by all, not
    even for the moment between creating and fixing its mode."""
    flags = os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    flags |= os.O_WRONLY if "+" not in mode else os.O_RDWR
    fd = os.open(path, flags, access.file_mode)
    with contextlib.suppress(PermissionError):  # a file of another group member keeps its mode
        os.fchmod(fd, access.file_mode)
    return os.fdopen(fd, mode)
