"""The one exception boundary of the pyfuse3 handlers, and errno of a failed store write.

pyfuse3 handlers may raise only ``FUSEError``: anything else ends ``pyfuse3.main()``. Every
handler of ``ops.Operations`` passes through ``boundary``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from modelfs.errors import CorruptData, NotFound, RemoteStillUnavailable, RemoteUnavailable
from modelfs.fs.nodes import Attr, FsError

log = logging.getLogger("modelfs.fs")

BLKSIZE = 1 << 20  # st_blksize: tells cp and friends to read in 1 MiB pieces

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
_DATA_HANDLERS = frozenset({"open", "read"})


def boundary(
    fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """The one exception boundary: pyfuse3 handlers may raise only FUSEError.

    FsError carries its errno; an unknown name in the repo is ENOENT (but EIO when reading
    data, where it means a damaged store); anything else is a bug or a damaged store,
    logged with its traceback and answered with EIO.
    """

    @functools.wraps(fn)
    async def wrapper(self: S, *args: P.args, **kw: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kw)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            if e.errno in (errno.EINVAL, errno.EPERM, errno.EXDEV) and e.what:
                log.info("%s%r: %s (%s)", fn.__name__, tuple(args)[:3], os.strerror(e.errno),
                         e.what)
            raise pyfuse3.FUSEError(e.errno) from None
        except (RemoteUnavailable, CorruptData) as e:
            if isinstance(e, RemoteStillUnavailable):  # the kernel's retry of what just failed
                log.debug("%s%r: %s; answering EIO again", fn.__name__, tuple(args)[:3], e)
            elif fn.__name__ in _DATA_HANDLERS and fetch_failure(e):  # a lazy store's fetch failed
                log.error("%s%r: %s; answering EIO", fn.__name__, tuple(args)[:3], e)
            else:
                log.exception("%s%r failed; answering EIO", fn.__name__, tuple(args)[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None
        except NotFound:
            if fn.__name__ in _DATA_HANDLERS:  # a missing chunk or record: the store is damaged
                log.exception("%s%r: missing from the store; answering EIO", fn.__name__,
                              tuple(args)[:3])
                raise pyfuse3.FUSEError(errno.EIO) from None
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except Exception:
            log.exception("%s%r failed; answering EIO", fn.__name__, tuple(args)[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def fetch_failure(e: BaseException) -> bool:
    """A lazy store's fetch failed (remote down, timed out, or sent damaged bytes): worth one
    log line naming the chunk and the remote, not a traceback; the next read retries."""
    return isinstance(e, (RemoteUnavailable, CorruptData))


def store_errno(e: BaseException) -> int:
    """The errno a failed store write carries (StoreIOError: ENOSPC when the disk or LMDB's
    map is full, EROFS when read-only; or an OSError's), else EIO. Never read from the text."""
    code = getattr(e, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


def entry_attributes(a: Attr, uid: int, gid: int) -> pyfuse3.EntryAttributes:
    """A node's attributes as the kernel wants them."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = a.entry_timeout
    e.attr_timeout = a.attr_timeout
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = uid
    e.st_gid = gid
    e.st_rdev = 0
    e.st_size = a.size
    e.st_blksize = BLKSIZE
    e.st_blocks = (a.size + 511) // 512 if stat.S_ISREG(a.mode) else 0
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
    return e


def statvfs_data(staging_root: Path | None, inodes: int) -> pyfuse3.StatvfsData:
    """statfs of the mount: the staging area's filesystem (what a writer can still put here)."""
    s = pyfuse3.StatvfsData()
    s.f_bsize = s.f_frsize = BLKSIZE
    s.f_blocks = s.f_bfree = s.f_bavail = 0
    s.f_files = inodes
    s.f_ffree = s.f_favail = 0
    s.f_namemax = 255
    if staging_root is not None:
        with contextlib.suppress(OSError):
            v = os.statvfs(staging_root)
            s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
            s.f_files = max(v.f_files, inodes)
            s.f_ffree = s.f_favail = v.f_favail
    return s
