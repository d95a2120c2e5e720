"""The pyfuse3 adapter: FUSE requests become ``Tree`` answers, reads and staged writes.

Kept thin on purpose: naming, attributes and namespace changes live in ``tree.py`` and
``heads.py``, staging files and the commit rule in ``writes.py``, read-ahead policy in
``readahead.py``. What lives here is what needs trio: every handler passes through one
exception boundary; decoding, copy-up, fsync, store transactions and ``stage_file`` run
in worker threads (whole chunks or files per call, never one FUSE request); reads that
hit the decoded-chunk cache and writes to staging files (page cache) stay on the loop.

Store operations of one model run in order under that model's lock, so the draft in the
store follows the namespace the mount shows; a commit takes the same lock.
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
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from modelfs.errors import NotFound
from modelfs.fs.draftsync import (
    Committed,
    Recovery,
    StoreOp,
    apply_op,
    commit_model,
    plan_recovery,
    stage_closed,
    with_mode,
)
from modelfs.fs.headwrites import HeadWrites
from modelfs.fs.nodes import Attr, FsError, Kind
from modelfs.fs.readahead import ReadAhead, merge_spans
from modelfs.fs.settle import Settler
from modelfs.fs.staged import Staged, copy_up
from modelfs.fs.staging import StagingArea
from modelfs.fs.tree import Tree
from modelfs.repo import FileEntry, FileReader, Repo

log = logging.getLogger("modelfs.fs")

P = ParamSpec("P")
R = TypeVar("R")
BLKSIZE = 1 << 20  # st_blksize: tells cp and friends to read in 1 MiB pieces
_DATA_HANDLERS = frozenset({"open", "read"})


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
            if e.errno in (errno.EINVAL, errno.EPERM, errno.EXDEV) and e.what:
                log.info("%s%r: %s (%s)", fn.__name__, tuple(args)[:3], os.strerror(e.errno),
                         e.what)
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
    """What the read and write paths did; published with the repo counters as a root xattr."""

    reads: int = 0
    read_bytes: int = 0
    cached_reads: int = 0  # answered on the loop from decoded chunks
    thread_reads: int = 0  # had to decode in a worker thread
    prefetches: int = 0
    prefetch_bytes: int = 0
    errors: int = 0
    writes: int = 0
    write_bytes: int = 0
    copy_ups: int = 0  # files copied to staging before their first write
    files_recorded: int = 0  # closes made durable (record_staged)
    files_stored: int = 0  # stage_file done
    commits: int = 0


@dataclass(slots=True)
class OpenFile:
    size: int
    reader: FileReader | None = None  # a stored file
    data: bytes = b""  # a generated file
    ahead: ReadAhead | None = None
    staged: Staged | None = None  # a file whose bytes are in a staging file
    write: bool = False


def erofs() -> FsError:
    return FsError(errno.EROFS)


def _store_errno(e: BaseException) -> int:
    """The errno a failed store write carries (StoreIOError: ENOSPC when the disk or LMDB's
    map is full, EROFS when read-only; or an OSError's), else EIO. Never read from the text."""
    code = getattr(e, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


class Operations(pyfuse3.Operations):
    """modelfs as pyfuse3 sees it."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # writes reach us as they happen: a close is a real point
    enable_acl = False

    def __init__(self, repo: Repo, *, threads: int | None = None, window: int = 16 << 20,
                 piece: int = 2 << 20, trigger: int = 8 << 20, store_label: str = "",
                 refresh_interval: float = 0.5, staging: StagingArea | None = None,
                 settle: float = 1.0, stage_delay: float = 0.0) -> None:
        super().__init__()
        self.repo = repo
        self.drafts = repo.drafts()
        self.staging = staging
        self.tree = Tree(repo, root_xattrs=self._root_xattrs, head_xattrs=self._head_xattrs,
                         staging=staging, refresh_interval=refresh_interval)
        self.writes = HeadWrites(self.tree)
        cores = os.cpu_count() or 2
        self._limiter = trio.CapacityLimiter(threads or cores + 1)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, cores))
        self._io_limiter = trio.CapacityLimiter(4)  # fsync and small store transactions
        self._stage_limiter = trio.CapacityLimiter(1)  # stage_file uses every core itself
        self._window, self._piece, self._trigger = window, piece, trigger
        self._store_label = store_label
        self._fh = itertools.count(1)
        self._open: dict[int, OpenFile] = {}
        self._dirs: dict[int, tuple[int, list[tuple[bytes, Attr]]]] = {}
        self._readers: OrderedDict[bytes, FileReader] = OrderedDict()
        self._locks: dict[str, trio.Lock] = {}
        self._loading: dict[Staged, trio.Event] = {}
        self.settler = Settler(settle)
        self._stage_delay = stage_delay
        self._kick = trio.Event()  # something changed that the commit loop may care about
        self._progress = trio.Event()  # a stage_file or a commit finished
        self.stats = ReadStats()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.nursery: trio.Nursery | None = None  # set by the daemon; runs background work
        self.initialized = trio.Event()

    # ---- plumbing ----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Decode work (repo counters) and read/write-path work (this adapter)."""
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
            "user.modelfs.read_only": b"0" if self.staging is not None else b"1",
            "user.modelfs.counters": json.dumps(self.counters(), sort_keys=True).encode(),
        }

    def _head_xattrs(self, model: str) -> dict[str, bytes]:
        if self.staging is None:
            return {}
        a = self.settler.of(model)
        out = {"user.modelfs.draft": json.dumps(a.to_json(), sort_keys=True).encode()}
        if a.errors:
            out["user.modelfs.errors"] = ("\n".join(a.errors) + "\n").encode()
        return out

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

    def _send_invalidations(self) -> None:
        inv = self.tree.take_pending()
        for parent, name in inv.entries:
            try:
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except Exception:
                log.debug("invalidate_entry(%d, %s) failed", parent, name, exc_info=True)
        for ino in inv.inodes:
            try:
                pyfuse3.invalidate_inode(ino, attr_only=False)
            except OSError:  # the kernel does not know the inode: nothing to forget
                pass
            except Exception:
                log.debug("invalidate_inode(%d) failed", ino, exc_info=True)

    async def watch_repo(self, interval: float = 0.5) -> None:
        """Poll for commits; tell the kernel to forget names that moved (heads, model list)."""
        while True:
            await trio.sleep(interval)
            try:
                self.tree.refresh()
                await self.check_holds()
            except Exception:
                log.exception("refreshing the model list failed")
                continue
            self._send_invalidations()

    def _poke(self) -> None:
        self._kick.set()

    def _done_something(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
        self._poke()

    def _touch(self, model: str, dirty: bool = False) -> None:
        self.settler.touch(model, dirty)
        self._poke()

    def _error(self, model: str, message: str) -> None:
        """Failures nobody else sees (release errors are dropped): the log and an xattr."""
        self.stats.errors += 1
        log.error("%s: %s", model, message)
        self.settler.error(model, message)

    @contextlib.asynccontextmanager
    async def _model_op(self, model: str) -> AsyncIterator[None]:
        """One store operation of ``model`` at a time, in order; refreshes wait meanwhile."""
        head = self.tree.head(model)
        if head is not None:
            head.busy += 1
        try:
            lock = self._locks.get(model)
            if lock is None:
                lock = self._locks[model] = trio.Lock()
            async with lock:
                yield
        finally:
            if head is not None:
                head.busy -= 1
                self.tree.settle(model)

    async def _store_ops(self, model: str, ops: list[StoreOp]) -> None:
        if not ops:
            self._touch(model)
            return
        async with self._model_op(model):
            try:
                for op in ops:
                    await trio.to_thread.run_sync(apply_op, self.drafts, op,
                                                  limiter=self._io_limiter)
            except Exception as e:
                self._error(model, f"recording {ops[0].kind} of {ops[0].path} failed: {e}")
                raise FsError(_store_errno(e)) from None
        self._touch(model, dirty=True)

    # ---- lifecycle ---------------------------------------------------------------------

    def init(self) -> None:
        self.initialized.set()

    async def commit_loop(self) -> None:
        """Commit each model once it has settled (see ``Settler``)."""
        while True:
            wait = self.settler.next_check()
            with trio.move_on_after(3600.0 if wait is None else wait + 0.01):
                await self._kick.wait()
            self._kick = trio.Event()
            for model in self.settler.due():
                await self.commit(model, "recovered" if self.settler.of(model).urgent
                                  else "settled")
            self._send_invalidations()

    async def commit(self, model: str, why: str, force: bool = False) -> None:
        """Commit ``model``'s draft as one version (after every closed file is stored)."""
        a = self.settler.of(model)
        res: Committed | None = None
        while res is None:
            while a.storing:
                await self._progress.wait()
            async with self._model_op(model):
                if a.storing:  # a close came in while we waited for the lock
                    continue
                if not (a.dirty or force):
                    return
                if a.held:
                    log.warning("%s: not committed (%s): a save into it failed; `modelfs "
                                "commit %s --force` or `modelfs discard %s`", model, why,
                                model, model)
                    return
                own = self.staging.dir if self.staging is not None else None
                try:
                    res = await trio.to_thread.run_sync(commit_model, self.drafts, model, "",
                                                        own, limiter=self._io_limiter)
                except Exception as e:
                    wait = self.settler.failed(model)
                    self._error(model, f"commit failed ({why}): {e}; retrying in {wait:.0f}s")
                    return
                self.settler.committed(model)
                self.tree.committed(model, res.version)
        if res.version is not None:
            self.stats.commits += 1
            v = res.version
            log.info("committed %s (%s) [%s]: %d files changed in %.3fs: %s", v.ref, v.id, why,
                     len(res.changed), res.seconds, ", ".join(res.changed[:20])
                     + (" ..." if len(res.changed) > 20 else ""))
        elif res.changed:
            log.info("%s: %d pending changes left the files as they were; no new version [%s]",
                     model, len(res.changed), why)
        self._done_something()
        self._send_invalidations()

    def start_recovery(self, plan: Recovery) -> None:
        """Store what a killed daemon left (its closed files) and commit those drafts.

        Held drafts (a save into them failed) are stored but wait for the user.
        """
        assert self.nursery is not None
        for model, held in plan.held.items():
            self.settler.of(model).held.update(held)
            log.warning("%s: draft held since a save into it failed (%s); `modelfs commit %s "
                        "--force` or `modelfs discard %s`", model, "; ".join(held.values()),
                        model, model)
        for model in sorted(set(plan.commit) | set(plan.dead)):
            head = self.tree.head(model)
            a = self.settler.of(model)
            a.dirty = True
            a.urgent = model in plan.commit
            dead = set(plan.dead.get(model, ()))
            for st in head.staged() if head else []:
                if st.recovered and st.file in dead:
                    a.storing += 1
                    self.nursery.start_soon(self._store, st)
            log.info("%s: recovering a draft left by an earlier mount (%d closed files to store)",
                     model, len(dead))
        self._poke()

    async def _hold(self, model: str, path: str, why: str) -> None:
        """A save into ``model`` failed: its burst must not commit as if it were whole.

        Recorded in the store too, so neither a restarted mount nor a plain ``modelfs
        commit`` commits it; ``commit --force`` or ``discard`` decides.
        """
        self.settler.of(model).held[path] = why
        try:
            await trio.to_thread.run_sync(self.drafts.hold, model, path, why,
                                          limiter=self._io_limiter)
        except Exception as e:
            log.error("%s: could not record the hold in the store (%s); this mount still "
                      "will not commit it", model, e)

    async def _unhold(self, model: str, path: str) -> None:
        a = self.settler.of(model)
        if a.held.pop(path, None) is not None:
            await trio.to_thread.run_sync(self.drafts.release_hold, model, path,
                                          limiter=self._io_limiter)
            log.info("%s/%s: saved whole now; it no longer holds the draft", model, path)

    async def check_holds(self) -> None:
        """Follow ``modelfs commit --force`` / ``discard`` of a held draft made from the CLI."""
        for model, a in list(self.settler.models.items()):
            if not a.held:
                continue
            draft = await trio.to_thread.run_sync(self.drafts.get, model,
                                                  limiter=self._io_limiter)
            if draft is not None and draft.held:
                continue
            log.info("%s: its held draft was committed or discarded from the CLI", model)
            a.held.clear()
            a.dirty = draft is not None and draft.pending_files
            self.tree.resync(model)
            self._send_invalidations()

    async def shutdown(self) -> None:
        """Before exiting: store every closed file and commit every draft this mount made."""
        for head in list(self.tree.loaded_heads().values()):
            for st in head.staged():
                if not st.frozen and st.writers and not st.recorded_gen:
                    log.warning("%s/%s: still open for writing at exit; not kept",
                                st.model, st.path)
                    st.file.unlink(missing_ok=True)
        for model, a in sorted(self.settler.models.items()):
            if a.dirty:
                await self.commit(model, "unmount")
        if self.staging is not None:  # directories of dead mounts emptied by the recovery
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(plan_recovery, self.drafts, self.staging)
            self.staging.close()

    # ---- names and attributes ----------------------------------------------------------

    @boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        self._looked_at(parent_inode)
        return self._entry(self.tree.lookup(parent_inode, os.fsdecode(name)))

    def _looked_at(self, ino: int) -> None:
        """A lookup or listing in a head with a draft keeps its burst going (``Settler``)."""
        model = self.tree.model_dir(ino)
        if model and model in self.settler.models:
            self.settler.touch(model, change=False)

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
        self._looked_at(inode)
        # a snapshot, so offsets stay valid however the directory changes meanwhile
        listing = [(os.fsencode(n), a) for n, a in self.tree.readdir(inode)]
        fh = next(self._fh)
        self._dirs[fh] = (inode, listing)
        return fh

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs.get(fh)
        if d is None:
            raise FsError(errno.EBADF)
        listing = d[1]
        for i in range(start_id, len(listing)):
            name, attr = listing[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), i + 1):
                break

    @boundary
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsync of a model's directory commits it now (with every file closed so far)."""
        d = self._dirs.get(fh)
        if d is None or self.staging is None:
            return
        model = self.tree.model_dir(d[0])
        if model:
            await self.commit(model, "fsync", force=True)

    @boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """The staging area's filesystem: what a writer can still put here."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLKSIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.tree.inode_count
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        if self.staging is not None:
            with contextlib.suppress(OSError):
                v = os.statvfs(self.staging.root)
                s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
                s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
                s.f_files = max(v.f_files, self.tree.inode_count)
                s.f_ffree = s.f_favail = v.f_favail
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

    # ---- opening and reading -----------------------------------------------------------

    def _handle(self, h: OpenFile) -> int:
        fh = next(self._fh)
        self._open[fh] = h
        if h.staged is not None:
            h.staged.refs += 1
            if h.write:
                h.staged.writers += 1
                self.settler.of(h.staged.model).writers += 1
        return fh

    @boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            if not self.tree.is_writable(inode):
                raise erofs()
            st = self.writes.open_write(inode)
            fh = self._handle(OpenFile(st.size, staged=st, write=True))
            self._touch(st.model)
            if flags & os.O_TRUNC:
                await self._truncate(st, 0)
            # no keep_cache: what the kernel cached of the old bytes must go
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False)
        content = self.tree.content(inode)
        if isinstance(content, bytes):
            h = OpenFile(len(content), data=content)
        elif isinstance(content, Staged):
            h = OpenFile(content.size, staged=content)
        else:
            reader = await self._reader(content)
            h = OpenFile(reader.size, reader=reader,
                         ahead=ReadAhead(reader.size, self._window, self._trigger))
        fh = self._handle(h)
        # keep_cache: pages cached by an earlier open stay valid unless the file was
        # rewritten in place since. Never direct_io: mmap (safetensors, torch) needs the
        # page cache.
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.tree.keep_cache(inode), direct_io=False)

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._open.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        if h.staged is not None:
            return await self._read_staged(h.staged, off, size)
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
        return await self._read_entry(h.reader, off, size)

    async def _read_entry(self, reader: FileReader, off: int, size: int) -> bytes:
        data = reader.read_cached(off, size)
        if data is not None:
            self.stats.cached_reads += 1
            return data
        self.stats.thread_reads += 1
        return await trio.to_thread.run_sync(reader.read, off, size, limiter=self._limiter)

    async def _read_staged(self, st: Staged, off: int, size: int) -> bytes:
        """A staging file (page cache: on the loop), or its base before the copy-up."""
        end = min(off + size, st.size)
        if end <= off:
            return b""
        self.stats.reads += 1
        self.stats.read_bytes += end - off
        base = st.base
        if base is None:
            return st.pread(end - off, off)
        have = min(end, st.keep, base.size)
        data = b""
        if off < have:
            if isinstance(base, Staged):
                data = base.pread(have - off, off)
            else:
                data = await self._read_entry(await self._reader(base), off, have - off)
        return data + bytes(end - off - len(data))

    # ---- writing -----------------------------------------------------------------------

    async def _materialize(self, st: Staged) -> None:
        """Copy a file's old bytes into its staging file before the first write changes it."""
        while st.base is not None:
            if st.broken:
                raise FsError(st.broken)
            ev = self._loading.get(st)
            if ev is not None:
                await ev.wait()
                continue
            ev = self._loading[st] = trio.Event()
            try:
                await trio.to_thread.run_sync(copy_up, st, self.repo.iter_file,
                                              limiter=self._limiter)
                self.stats.copy_ups += 1
            except OSError as e:
                self._error(st.model, f"{st.path}: copying the file to staging failed: {e}")
                raise FsError(e.errno or errno.EIO) from None
            finally:
                del self._loading[st]
                ev.set()

    async def _truncate(self, st: Staged, size: int) -> None:
        if st in self._loading:  # a copy-up is running: truncate what it leaves
            await self._materialize(st)
        try:
            st.truncate(size)
        except OSError as e:
            raise FsError(e.errno or errno.EIO) from None
        self._touch(st.model)

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._open.get(fh)
        if h is None or h.staged is None or not h.write:
            raise FsError(errno.EBADF)
        st = h.staged
        if st.broken:
            raise FsError(st.broken)
        if st.base is not None:
            await self._materialize(st)
        try:
            n = st.pwrite(buf, off)
        except OSError as e:
            self._error(st.model, f"{st.path}: write of {len(buf)} bytes at {off} failed "
                        f"({e.strerror}); the file will not be kept")
            raise FsError(st.broken or errno.EIO) from None
        self.stats.writes += 1
        self.stats.write_bytes += n
        self.settler.touch(st.model)
        return n

    @boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if not self.tree.is_writable(inode):
            raise erofs()
        n = self.tree.node(inode)
        if fields.update_size:
            if n.kind is not Kind.FILE:
                raise FsError(errno.EISDIR)
            h = self._open.get(fh) if fh is not None else None
            if h is not None and h.write and h.staged is not None and not h.staged.frozen:
                await self._truncate(h.staged, attr.st_size)
            else:  # truncate(2) by path: open, truncate, close
                st = self.writes.open_write(inode)
                tmp = self._handle(OpenFile(st.size, staged=st, write=True))
                try:
                    await self._truncate(st, attr.st_size)
                finally:
                    await self.release(tmp)
        if fields.update_mode:
            model = n.model
            await self._store_ops(model, self.writes.chmod(inode, attr.st_mode))
        if fields.update_mtime:
            self.writes.utime(inode, attr.st_mtime_ns)
        return self._entry(self.tree.getattr(inode))

    @boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        a, st = self.writes.create(parent_inode, os.fsdecode(name), mode)
        log.debug("create %s/%s", st.model, st.path)
        fh = self._handle(OpenFile(0, staged=st, write=True))
        self._touch(st.model)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self._entry(a)

    @boundary
    async def flush(self, fh: int) -> None:
        """close(2): the file is durable before close returns (fsync'd and recorded)."""
        h = self._open.get(fh)
        if h is None or not h.write or h.staged is None:
            return
        st = h.staged
        if st.broken:
            raise FsError(st.broken)
        if st.writers > 1:  # another writer still has it open: the last close records it
            return
        await self._record(st)

    async def _record(self, st: Staged) -> None:
        """fsync the staging file and record it as a pending change (closed == durable)."""
        if not st.changed or not st.present or st.broken:
            return
        if st.base is not None:
            await self._materialize(st)
        gen = st.gen
        try:
            await trio.to_thread.run_sync(os.fsync, st.fd, limiter=self._io_limiter)
            async with self._model_op(st.model):
                if not st.present:  # removed while we synced: nothing to keep
                    return
                await trio.to_thread.run_sync(self.drafts.record_staged, st.model, st.path,
                                              st.file, limiter=self._io_limiter)
        except Exception as e:
            st.broken = _store_errno(e)
            self._error(st.model, f"{st.path}: could not record the closed file ({e}); "
                        "it is not kept")
            raise FsError(st.broken) from None
        st.recorded_gen = gen
        self.stats.files_recorded += 1
        await self._unhold(st.model, st.path)
        self._touch(st.model, dirty=True)

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        """The bytes reach the staging disk; they join the draft when the file is closed."""
        h = self._open.get(fh)
        if h is not None and h.write and h.staged is not None:
            await trio.to_thread.run_sync(os.fsync, h.staged.fd, limiter=self._io_limiter)

    @boundary
    async def release(self, fh: int) -> None:
        h = self._open.pop(fh, None)
        if h is None or h.staged is None:
            return
        st = h.staged
        st.refs -= 1
        if not h.write:
            return
        st.writers -= 1
        self.settler.of(st.model).writers -= 1
        log.debug("release %s/%s (%d bytes, %d writers left)", st.model, st.path, st.size,
                  st.writers)
        if st.writers == 0:
            await self._closed(st)
        self._touch(st.model)

    async def _closed(self, st: Staged) -> None:
        """The last writer closed: keep the file (record, then store it), or drop it."""
        if st.broken:
            await self._drop(st, f"{st.path}: not kept after a failed write or close "
                             f"({os.strerror(st.broken)}); the path shows what it held before")
            return
        if st.gen == 0:  # opened for writing, never changed
            self.writes.revert(st)
            st.file.unlink(missing_ok=True)
            return
        if not st.present and st.recorded_gen == 0:  # removed before it was ever closed
            st.file.unlink(missing_ok=True)
            return
        try:
            await self._record(st)
        except FsError:
            await self._drop(st, f"{st.path}: not kept")
            return
        st.freeze()
        assert self.nursery is not None
        self.settler.of(st.model).storing += 1
        self.nursery.start_soon(self._store, st)

    async def _drop(self, st: Staged, why: str) -> None:
        """A file whose save failed: not kept, and its burst held back (never half a save)."""
        self._error(st.model, why)
        self.writes.revert(st)
        # a pending pointer to it (from an earlier close) is dropped by the next commit
        st.file.unlink(missing_ok=True)
        self._send_invalidations()
        await self._hold(st.model, st.path, why)

    async def _store(self, st: Staged) -> None:
        """stage_file in a worker thread: diff against the parent, store, replace the pointer."""
        model = st.model
        try:
            async with self._stage_limiter:
                if self._stage_delay:
                    await trio.sleep(self._stage_delay)
                t0 = time.monotonic()
                res = await trio.to_thread.run_sync(stage_closed, self.drafts, model, st.file)
            if res is None:
                log.debug("%s/%s: nothing to store (removed or replaced meanwhile)", model, st.path)
                return
            path, entry = res
            self.stats.files_stored += 1
            log.info("stored %s/%s: %s, %d bytes, %.2fs", model, path, entry.format, entry.size,
                     time.monotonic() - t0)
            if self.writes.stored(st, entry) and entry.mode != st.mode:
                await self._store_ops(model, [StoreOp("entry", model, st.path,
                                                      entry=with_mode(entry, st.mode))])
        except Exception as e:
            # not a failed save (its close returned): it stays a durable pointer, and each
            # commit attempt retries it (backing off) until it is stored, then commits
            self._error(model, f"{st.path}: storing the closed file failed: {e}; it stays "
                        "pending (the next commit attempt retries it)")
            log.debug("stage_file failed", exc_info=True)
        finally:
            self.settler.of(model).storing -= 1  # not a change: the settle clock runs on
            self._done_something()

    # ---- namespace changes -------------------------------------------------------------

    @boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        a = self.writes.mkdir(parent_inode, os.fsdecode(name), mode)
        n = self.tree.node(a.ino)
        if n.kind is Kind.HEAD:
            log.info("new model directory %s (its parent is inferred from its first tensors, "
                     "or set with modelfs derive)", n.model)
        return self._entry(a)

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        ops = self.writes.unlink(parent_inode, os.fsdecode(name))
        await self._store_ops(ops[0].model, ops)

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.writes.rmdir(parent_inode, os.fsdecode(name))

    @boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        ops = self.writes.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                               os.fsdecode(name_new), bool(flags & pyfuse3.RENAME_NOREPLACE))
        if ops:
            await self._store_ops(ops[0].model, ops)

    @boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        self.writes.where(parent_inode)
        raise FsError(errno.EPERM, "only regular files and directories can be stored")

    @boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        self.writes.where(parent_inode)
        raise FsError(errno.EPERM, "symbolic links cannot be stored")

    @boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
                   ) -> pyfuse3.EntryAttributes:
        self.writes.where(new_parent_inode)
        raise FsError(errno.EPERM, "hard links cannot be stored")

    @boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if not self.tree.is_writable(inode):
            raise erofs()
        raise FsError(errno.ENOTSUP)

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if not self.tree.is_writable(inode):
            raise erofs()
        raise FsError(errno.ENOTSUP)
