"""Where a store file's memory map lies in this process, and paging hints to the kernel.

LMDB returns values as views into its map, and py-lmdb touches every page of a value
before handing it over (so no page fault happens with the GIL held). On a cold store that
touch is a chain of synchronous faults: with the map's default read-around each fault reads
`read_ahead_kb` around it (8 MiB on this machine's disk, 6-12x the record), without it one
4 KiB page at a time. Knowing a record's offset in the file lets a reader ask the kernel
for exactly the records it is about to decode, all at once (posix_fadvise WILLNEED), and
turn the map's read-around off (MADV_RANDOM), so B-tree lookups read one page.

Linux only (`/proc/self/maps`); elsewhere every answer is "unknown" and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_MADV_NORMAL = getattr(mmap, "MADV_NORMAL", 0)
_MADV_RANDOM = getattr(mmap, "MADV_RANDOM", 1)
_MADV_POPULATE_READ = 22  # Linux 5.14: map a range's pages in one call instead of a fault per page
_PAGE = mmap.PAGESIZE
_libc: ctypes.CDLL | None = None


def _madvise(addr: int, length: int, advice: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise(addr, length, advice) == 0


def buffer_address(view: memoryview | bytes) -> int:
    """The address of a buffer's first byte (read-only buffers included)."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if len(view) else 0


class FileMap:
    """The mapping of one file (by device and inode) in this process, found lazily."""

    def __init__(self, path: Path) -> None:
        self.path = path
        st = os.stat(path)
        self._ident = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        self._lock = threading.Lock()
        self._span: tuple[int, int, int] | None = None  # (start, end, file offset of start)
        self._fd: int | None = None
        self._populate = True  # until the kernel says it cannot

    def _find(self) -> tuple[int, int, int] | None:
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return None
        best: tuple[int, int, int] | None = None
        for line in lines:
            f = line.split(maxsplit=5)
            if len(f) < 5:
                continue
            major, minor = (int(x, 16) for x in f[3].split(":"))
            if (major, minor, int(f[4])) != self._ident:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if best is None or hi - lo > best[1] - best[0]:
                best = (lo, hi, int(f[2], 16))
        return best

    def span(self) -> tuple[int, int, int] | None:
        with self._lock:
            if self._span is None:
                self._span = self._find()
            return self._span

    def offset_of(self, view: memoryview | bytes) -> int | None:
        """The file offset of a view into the map, or None if it does not point into it."""
        addr = buffer_address(view)
        for attempt in (0, 1):
            s = self.span()
            if s is not None and s[0] <= addr and addr + len(view) <= s[1]:
                return addr - s[0] + s[2]
            if attempt == 0:  # mapped since we looked (or moved): look once more
                with self._lock:
                    self._span = None
        return None

    def random_access(self, on: bool = True) -> bool:
        """No read-around on faults in the map: each touches one page (lookups stay cheap);
        ``on=False`` gives the kernel's read-around back (a scan over every record)."""
        s = self.span()
        return s is not None and _madvise(s[0], s[1] - s[0], _MADV_RANDOM if on else _MADV_NORMAL)

    def map_in(self, offset: int, length: int) -> None:
        """Map a range of the file into the map's page tables in one call, waiting for its
        pages (started by `will_need`): without read-around each page would fault alone."""
        s = self.span()
        if s is None or not self._populate or not length:
            return
        addr = s[0] + offset - s[2]
        start = addr & ~(_PAGE - 1)
        if start < s[0] or addr + length > s[1]:
            return
        ok = _madvise(start, addr + length - start, _MADV_POPULATE_READ)
        if not ok and ctypes.get_errno() == errno.EINVAL:  # an older kernel: let the faults do it
            self._populate = False

    def will_need(self, spans: Iterable[tuple[int, int]]) -> None:
        """Start reading these (offset, length) ranges of the file into the page cache."""
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return
            fd = self._fd
        for off, n in spans:
            try:
                os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
            except OSError:  # a hint: a stale or odd span changes nothing
                return

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._span = None
