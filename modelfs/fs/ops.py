"""The pyfuse3 adapter: FUSE requests become ``Tree`` answers and ``FileReader`` reads.

Kept thin on purpose: naming and attributes live in ``tree.py``, read-ahead policy in
``readahead.py``. What lives here is what needs trio: every handler passes through one
exception boundary, decoding runs in worker threads (whole chunks per call, never one
FUSE request), and reads that hit the decoded-chunk cache are answered on the loop.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from modelfs.errors import NotFound
from modelfs.fs.readahead import ReadAhead, merge_spans
from modelfs.fs.tree import Attr, FsError, Tree
from modelfs.repo import FileEntry, FileReader, Repo

log = logging.getLogger("modelfs.fs")

P = ParamSpec("P")
R = TypeVar("R")
BLKSIZE = 1 << 20
_DATA_HANDLERS = frozenset({"open", "read"})  # st_blksize: tells cp and friends to read in 1 MiB pieces


def boundary(
    fn: Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Operations, P], Coroutine[Any, Any, R]]:
    """The one exception boundary: pyfuse3 handlers may raise only FUSEError.

    FsError carries its errno; an unknown name in the repo is ENOENT (but EIO when reading
    data, where it means a damaged store); anything else is a bug or a damaged store,
    logged with its traceback and answered with EIO.
    """

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: P.args, **kw: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kw)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
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


@dataclass
class ReadStats:
    """What the read path did; published with the repo counters as a root xattr."""

    reads: int = 0
    read_bytes: int = 0
    cached_reads: int = 0  # answered on the loop from decoded chunks
    thread_reads: int = 0  # had to decode in a worker thread
    prefetches: int = 0
    prefetch_bytes: int = 0
    errors: int = 0


@dataclass(slots=True)
class OpenFile:
    size: int
    reader: FileReader | None = None  # a stored file
    data: bytes = b""  # a generated file
    ahead: ReadAhead | None = None


def erofs() -> FsError:
    return FsError(errno.EROFS)


class Operations(pyfuse3.Operations):
    """modelfs as pyfuse3 sees it."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, repo: Repo, *, threads: int | None = None, window: int = 16 << 20,
                 piece: int = 2 << 20, trigger: int = 8 << 20, store_label: str = "",
                 refresh_interval: float = 0.5) -> None:
        super().__init__()
        self.repo = repo
        self.tree = Tree(repo, root_xattrs=self._root_xattrs, refresh_interval=refresh_interval)
        cores = os.cpu_count() or 2
        self._limiter = trio.CapacityLimiter(threads or cores + 1)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, cores))
        self._window, self._piece, self._trigger = window, piece, trigger
        self._store_label = store_label
        self._fh = itertools.count(1)
        self._open: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, Attr]]] = {}
        self._readers: OrderedDict[bytes, FileReader] = OrderedDict()
        self.stats = ReadStats()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.nursery: trio.Nursery | None = None  # set by the daemon; runs prefetches
        self.initialized = trio.Event()

    # ---- plumbing ----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Decode work (repo counters) and read-path work (this adapter), for tests and logs."""
        c = getattr(self.repo, "counters", None)
        out = {k: int(getattr(c, k)) for k in ("chunks_decoded", "bytes_decoded", "cache_hits")
               if hasattr(c, k)}
        out.update(asdict(self.stats))
        out["open_files"] = len(self._open)
        out["inodes"] = self.tree.inode_count
        return out

    def _root_xattrs(self) -> dict[str, bytes]:
        return {
            "user.modelfs.pid": str(os.getpid()).encode(),
            "user.modelfs.store": self._store_label.encode(),
            "user.modelfs.counters": json.dumps(self.counters(), sort_keys=True).encode(),
        }

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = a.entry_timeout
        e.attr_timeout = a.attr_timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_rdev = 0
        e.st_size = a.size
        e.st_blksize = BLKSIZE
        e.st_blocks = (a.size + 511) // 512 if stat.S_ISREG(a.mode) else 0
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
        return e

    async def _reader(self, entry: FileEntry) -> FileReader:
        """One reader per stored file, shared by its handles (it is thread-safe)."""
        r = self._readers.get(entry.key)
        if r is None:
            r = await trio.to_thread.run_sync(self.repo.open_file, entry, limiter=self._limiter)
            self._readers[entry.key] = r
            while len(self._readers) > 256:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(entry.key)
        return r

    def _pieces(self, reader: FileReader, start: int, end: int) -> list[tuple[int, int]]:
        """One worker call per chunk: chunk-aligned pieces keep two workers off the same chunk."""
        return merge_spans(reader.chunk_spans(start, end - start), self._piece)

    async def _prefetch(self, reader: FileReader, offset: int, size: int) -> None:
        try:
            await trio.to_thread.run_sync(reader.prefetch, offset, size,
                                          limiter=self._prefetch_limiter)
            self.stats.prefetches += 1
            self.stats.prefetch_bytes += size
        except Exception:  # a prefetch is a hint: the read that needs the bytes reports errors
            self.stats.errors += 1
            log.warning("prefetch of %d bytes at %d failed", size, offset, exc_info=True)

    async def watch_repo(self, interval: float = 0.5) -> None:
        """Poll for commits; tell the kernel to forget names that moved (heads, model list)."""
        while True:
            await trio.sleep(interval)
            try:
                self.tree.refresh()
                inv = self.tree.take_pending()
            except Exception:
                log.exception("refreshing the model list failed")
                continue
            for parent, name in inv.entries:
                try:
                    pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
                except Exception:
                    log.debug("invalidate_entry(%d, %s) failed", parent, name, exc_info=True)
            for ino in inv.inodes:
                # OSError: the kernel does not know the inode, so it has nothing to forget
                with contextlib.suppress(OSError):
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, True)

    # ---- lifecycle ---------------------------------------------------------------------

    def init(self) -> None:
        self.initialized.set()

    # ---- names and attributes ----------------------------------------------------------

    @boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        return self._entry(self.tree.lookup(parent_inode, os.fsdecode(name)))

    @boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self.tree.getattr(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: inode numbers stay assigned for the life of the mount."""

    @boundary
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(self.tree.readlink(inode))

    @boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        # a snapshot, so offsets stay valid however the directory changes meanwhile
        listing = [(os.fsencode(n), a) for n, a in self.tree.readdir(inode)]
        fh = next(self._fh)
        self._dirs[fh] = listing
        return fh

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise FsError(errno.EBADF)
        for i in range(start_id, len(listing)):
            name, attr = listing[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), i + 1):
                break

    @boundary
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLKSIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.tree.inode_count
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @boundary
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self.tree.xattrs(inode).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @boundary
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(k) for k in self.tree.xattrs(inode)]

    @boundary
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if mode & os.W_OK and not self.tree.is_writable(inode):
            raise erofs()
        self.tree.getattr(inode)
        return True

    # ---- reads -------------------------------------------------------------------------

    @boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing and not self.tree.is_writable(inode):
            raise erofs()
        content = self.tree.content(inode)
        if isinstance(content, bytes):
            h = OpenFile(len(content), data=content)
        else:
            reader = await self._reader(content)
            h = OpenFile(reader.size, reader=reader,
                         ahead=ReadAhead(reader.size, self._window, self._trigger))
        fh = next(self._fh)
        self._open[fh] = h
        # keep_cache: a version never changes, so pages cached by an earlier open stay valid.
        # Never direct_io: mmap (safetensors, torch) needs the page cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._open.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        if h.reader is None:
            return h.data[off:off + size]
        if off >= h.size or size <= 0:
            return b""
        size = min(size, h.size - off)
        self.stats.reads += 1
        self.stats.read_bytes += size
        assert h.ahead is not None
        span = h.ahead.on_read(off, size)
        if span is not None and self.nursery is not None:
            for a, b in self._pieces(h.reader, span[0], span[1]):
                self.nursery.start_soon(self._prefetch, h.reader, a, b - a)
        data = h.reader.read_cached(off, size)
        if data is not None:
            self.stats.cached_reads += 1
            return data
        self.stats.thread_reads += 1
        return await trio.to_thread.run_sync(h.reader.read, off, size, limiter=self._limiter)

    @boundary
    async def flush(self, fh: int) -> None:
        pass

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    @boundary
    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    # ---- writes: versions are immutable (a writable head comes with snapshot-on-write) -

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise erofs()

    @boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        raise erofs()

    @boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise erofs()

    @boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        raise erofs()

    @boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        raise erofs()

    @boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        raise erofs()

    @boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
                   ) -> pyfuse3.EntryAttributes:
        raise erofs()

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise erofs()

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise erofs()

    @boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        raise erofs()

    @boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise erofs()

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise erofs()
