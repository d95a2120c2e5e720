"""The smallest pyfuse3 file system there is: one read-only file, read with pread.

``python scripts/benchlib/passfs.py SRC MOUNTPOINT`` shows SRC as MOUNTPOINT/data, with the
mount options the modelfs daemon uses and ``keep_cache``, so a warm re-read through it goes the
same way through the kernel's FUSE page cache as a warm re-read of the modelfs mount: the
baseline that says how much of the gap to ext4 is the kernel's, not the daemon's.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

INO = pyfuse3.ROOT_INODE + 1
NAME = b"data"


class PassFS(pyfuse3.Operations):
    def __init__(self, src: str) -> None:
        super().__init__()
        self.fd = os.open(src, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o444)
        a.st_size = 0 if ino == pyfuse3.ROOT_INODE else self.size
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.attr_timeout = a.entry_timeout = 300
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(INO)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(INO), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != INO:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)


def main() -> None:
    src, mnt = sys.argv[1], sys.argv[2]
    pyfuse3.init(PassFS(src), mnt, set(pyfuse3.default_options) | {"fsname=passfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
