"""The pyfuse3 adapter: every handler awaits the core (``core.py``) and maps its errors.

What lives here is what needs trio: the one exception boundary, worker threads (decoding,
copy-up, fsync, store transactions and ``stage_file``: whole chunks or files per call,
never one FUSE request), per-model locks that keep store operations in order (so the draft
in the store follows the namespace the mount shows; a commit takes the same lock), and
the background tasks (storing closed files, the commit loop, polling for outside commits).
Reads that hit the decoded-chunk cache and writes to staging files stay on the loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from modelfs.fs.boundary import boundary, entry_attributes, fetch_failure, statvfs_data, store_errno
from modelfs.fs.config import MountConfig
from modelfs.fs.control import MountEntry
from modelfs.fs.core import BaseRead, CloseAction, MountCore
from modelfs.fs.draftsync import (
    Committed,
    Recovery,
    StoreOp,
    apply_op,
    commit_model,
    plan_recovery,
    stage_closed,
)
from modelfs.fs.holders import held_for_writing
from modelfs.fs.nodes import Attr, FsError, Kind
from modelfs.fs.readahead import merge_spans
from modelfs.fs.staged import Staged, copy_up
from modelfs.fs.staging import StagingArea
from modelfs.repo import FileEntry, FileReader, Repo

log = logging.getLogger("modelfs.fs")

R = TypeVar("R")


class Operations(pyfuse3.Operations):
    """modelfs as pyfuse3 sees it."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # writes reach us as they happen: a close is a real point
    enable_acl = False

    def __init__(self, repo: Repo, config: MountConfig | None = None, *,
                 staging: StagingArea | None = None, store_label: str = "",
                 **settings: Any) -> None:
        super().__init__()
        config = config or MountConfig(**settings)
        self.core = core = MountCore(repo, config, staging, store_label)
        self.repo, self.drafts, self.staging = repo, core.drafts, staging
        self.tree, self.writes, self.settler, self.stats = (core.tree, core.writes, core.settler,
                                                            core.stats)
        cores = os.cpu_count() or 2
        self._limiter = trio.CapacityLimiter(config.threads or cores + 1)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, cores) * (4 if repo.chunk_source else 1))
        self._io_limiter = trio.CapacityLimiter(4)  # fsync and small store transactions
        self._stage_limiter = trio.CapacityLimiter(1)  # stage_file uses every core itself
        self._locks: dict[str, trio.Lock] = {}
        self._loading: dict[Staged, trio.Event] = {}
        self._kick = trio.Event()  # something changed that the commit loop may care about
        self._progress = trio.Event()  # a stage_file or a commit finished
        self.uid, self.gid = os.getuid(), os.getgid()
        self.nursery: trio.Nursery | None = None  # set by the daemon; runs background work
        self.mount: MountEntry | None = None  # set by the daemon once mounted
        self.initialized = trio.Event()

    # ---- plumbing ----------------------------------------------------------------------

    async def _io(self, fn: Callable[..., R], *args: Any) -> R:
        """A small store transaction or an fsync, in a worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_limiter)

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        return entry_attributes(a, self.uid, self.gid)

    async def _reader(self, entry: FileEntry) -> FileReader:
        r = self.core.cached_reader(entry)
        if r is None:
            r = await trio.to_thread.run_sync(self.repo.open_file, entry, limiter=self._limiter)
            self.core.keep_reader(entry, r)
        return r

    async def _prefetch(self, reader: FileReader, offset: int, size: int) -> None:
        try:
            await trio.to_thread.run_sync(reader.prefetch, offset, size,
                                          limiter=self._prefetch_limiter)
            self.stats.prefetches += 1
            self.stats.prefetch_bytes += size
        except Exception as e:  # a prefetch is a hint: the read that needs the bytes reports errors
            self.stats.errors += 1
            log.warning("prefetch of %d bytes at %d failed: %s", size, offset, e, exc_info=not fetch_failure(e))

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

    @contextlib.asynccontextmanager
    async def _model_op(self, model: str) -> AsyncIterator[None]:
        """One store operation of ``model`` at a time, in order; refreshes wait meanwhile."""
        self.core.begin_model_op(model)
        try:
            lock = self._locks.get(model)
            if lock is None:
                lock = self._locks[model] = trio.Lock()
            async with lock:
                yield
        finally:
            self.core.end_model_op(model)

    async def _store_ops(self, model: str, ops: list[StoreOp]) -> None:
        if not ops:
            self._touch(model)
            return
        cut, exclude, moved = self.core.cut_before_ops(model, ops)
        if cut:  # a rename over a file of this burst: the save before it is a version
            await self.commit(model, "a new save", exclude=exclude)
        self.core.join_burst(model, ops, moved)
        async with self._model_op(model):
            try:
                for op in ops:
                    await self._io(apply_op, self.drafts, op)
            except Exception as e:
                self.core.error(model, f"recording {ops[0].kind} of {ops[0].path} failed: {e}")
                raise FsError(store_errno(e)) from None
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

    async def commit(self, model: str, why: str, force: bool = False,
                     exclude: tuple[str, ...] = ()) -> None:
        """Commit ``model``'s draft as one version (after every closed file is stored)."""
        a = self.settler.of(model)
        res: Committed | None = None
        while res is None:
            while a.storing:
                await self._progress.wait()
            async with self._model_op(model):
                if a.storing:  # a close came in while we waited for the lock
                    continue
                if not self.core.may_commit(model, force):
                    return
                own = self.staging.dir if self.staging is not None else None
                try:
                    res = await self._io(commit_model, self.drafts, model, "", own, exclude)
                except Exception as e:
                    self.core.commit_failed(model, why, e)
                    return
                self.core.committed(model, res, why)
        self._done_something()
        self._send_invalidations()

    def start_recovery(self, plan: Recovery) -> None:
        """Store what a killed daemon left (its closed files) and commit those drafts."""
        assert self.nursery is not None
        for st in self.core.recover(plan):
            self.nursery.start_soon(self._store, st)
        self._poke()

    async def _hold_in_store(self, model: str, path: str, why: str) -> None:
        """So neither a new mount nor a plain commit commits a failed burst (see core.drop)."""
        try:
            await self._io(self.drafts.hold, model, path, why)
        except Exception as e:
            log.error("%s: could not record the hold in the store (%s); this mount still "
                      "will not commit it", model, e)
        else:
            self.settler.of(model).held_stored = True

    async def check_holds(self) -> None:
        """Follow ``modelfs commit --force`` / ``discard`` of a held draft made from the CLI."""
        for model in self.core.held_models():
            draft = await self._io(self.drafts.get, model)
            if self.core.hold_resolved(model, draft):
                self._send_invalidations()

    async def shutdown(self) -> None:
        """Before exiting: store every closed file and commit every draft this mount made."""
        self.core.abandon_open_files()
        for model in self.core.dirty_models():
            await self.commit(model, "unmount")
        if self.staging is not None:  # directories of dead mounts emptied by the recovery
            with contextlib.suppress(Exception):
                await self._io(plan_recovery, self.drafts, self.staging)
            self.staging.close()

    # ---- names and attributes ----------------------------------------------------------

    @boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        self.core.looked_at(parent_inode)
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
        return self.core.opendir(inode)

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.core.listing(fh)
        for i in range(start_id, len(listing)):
            name, attr = listing[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), i + 1):
                break

    @boundary
    async def releasedir(self, fh: int) -> None:
        self.core.releasedir(fh)

    @boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsync of a model's directory commits it now (with every file closed so far)."""
        model = self.core.dir_model(fh)
        if model:
            await self.commit(model, "fsync", force=True)

    @boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """The staging area's filesystem: what a writer can still put here."""
        root = self.staging.root if self.staging is not None else None
        return statvfs_data(root, self.tree.inode_count)

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
            raise FsError(errno.EROFS)
        self.tree.getattr(inode)
        return True

    # ---- opening and reading -----------------------------------------------------------

    @boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            if (model := self.core.cut_at_open(inode, flags)) is not None:
                await self.commit(model, "a new save")  # the file's last save is complete
            fh, st = self.core.open_for_writing(inode)
            self._poke()
            if flags & os.O_TRUNC:
                await self._truncate(st, 0)
            # no keep_cache: what the kernel cached of the old bytes must go
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False)
        h = self.core.open_for_reading(inode)
        if isinstance(h, FileEntry):
            h = self.core.reader_handle(await self._reader(h))
        # keep_cache: pages cached by an earlier open stay valid unless the file was
        # rewritten in place since. Never direct_io: mmap (safetensors, torch) needs the
        # page cache.
        return pyfuse3.FileInfo(fh=self.core.add_handle(h), keep_cache=self.tree.keep_cache(inode),
                                direct_io=False)

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.core.handle(fh)
        if h.staged is not None:
            got = self.core.read_staged(h.staged, off, size)
            if isinstance(got, BaseRead):
                data = b""
                if got.size:
                    data = await self._read_entry(await self._reader(got.base), got.offset,
                                                  got.size)  # type: ignore[arg-type]
                return data + bytes(got.total - len(data))
            return got
        if h.reader is None:
            return h.data[off:off + size]
        if off >= h.size or size <= 0:
            return b""
        size = min(size, h.size - off)
        self.stats.add_read(size)
        assert h.ahead is not None
        span = h.ahead.on_read(off, size, h.reader.tensor_end(off))
        if span is not None and self.nursery is not None:  # the disk starts on all of it at once
            self.nursery.start_soon(self._io, h.reader.page_in, span[0], span[1] - span[0])
            for a, b in merge_spans(h.reader.chunk_spans(span[0], span[1] - span[0]), self.core.config.piece):
                self.nursery.start_soon(self._prefetch, h.reader, a, b - a)
        return await self._read_entry(h.reader, off, size)

    async def _read_entry(self, reader: FileReader, off: int, size: int) -> bytes:
        data = reader.read_cached(off, size)
        if data is not None:
            self.stats.cached_reads += 1
            return data
        self.stats.thread_reads += 1
        return await trio.to_thread.run_sync(reader.read, off, size, limiter=self._limiter)

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
                self.core.error(st.model, f"{st.path}: copying the file to staging failed: {e}")
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
        st = self.core.write_handle(fh)
        if st.broken:
            raise FsError(st.broken)
        if st.base is not None:
            await self._materialize(st)
        try:
            n = st.pwrite(buf, off)
        except OSError as e:
            raise FsError(self.core.write_failed(st, len(buf), off, e)) from None
        self.core.wrote(st, n)
        return n

    @boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if not self.tree.is_writable(inode):
            raise FsError(errno.EROFS)
        if fields.update_size:
            st, tmp = self.core.truncate_target(inode, fh)
            try:
                await self._truncate(st, attr.st_size)
            finally:
                if tmp is not None:  # truncate(2) by path: open, truncate, close
                    await self.release(tmp)
        if fields.update_mode:
            await self._store_ops(self.tree.node(inode).model, self.writes.chmod(inode,
                                                                                attr.st_mode))
        if fields.update_mtime:
            self.writes.utime(inode, attr.st_mtime_ns)
        return self._entry(self.tree.getattr(inode))

    @boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, a = self.core.create(parent_inode, os.fsdecode(name), mode)
        self._poke()
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self._entry(a)

    def mounted(self, entry: MountEntry | None) -> None:
        """The kernel's view of this mount (its path and id), once it is up."""
        self.mount = entry

    @boundary
    async def flush(self, fh: int) -> None:
        """close(2): the file is durable before close returns (fsync'd and recorded).

        Not when a process still holds it open for writing: that FLUSH came from another
        copy of the descriptor (a forked child, a program the writer ran), not its close.
        """
        got = self.core.flush_needs_record(fh)
        if got is None:
            return
        st, ino = got
        m = self.mount
        if m is not None and await self._io(held_for_writing, m.mountpoint, m.mount_id, ino):
            log.debug("%s/%s: flushed, but still open for writing elsewhere", st.model, st.path)
            return
        await self._record(st)

    async def _record(self, st: Staged) -> None:
        """fsync the staging file and record it as a pending change (closed == durable)."""
        if not self.core.needs_record(st):
            return
        if st.base is not None:
            await self._materialize(st)
        gen = st.gen
        try:
            await self._io(os.fsync, st.fd)
            async with self._model_op(st.model):
                if not st.present:  # removed while we synced: nothing to keep
                    return
                await self._io(self.drafts.record_staged, st.model, st.path, st.file)
        except Exception as e:
            st.broken = store_errno(e)
            self.core.error(st.model, f"{st.path}: could not record the closed file ({e}); "
                            "it is not kept")
            raise FsError(st.broken) from None
        if self.core.recorded(st, gen):
            await self._io(self.drafts.release_hold, st.model, st.path)
            log.info("%s/%s: saved whole now; it no longer holds the draft", st.model, st.path)
        self._poke()

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        """The bytes reach the staging disk; they join the draft when the file is closed."""
        h = self.core.handle(fh)
        if h.write and h.staged is not None:
            await self._io(os.fsync, h.staged.fd)

    @boundary
    async def release(self, fh: int) -> None:
        st = self.core.release(fh)
        if st is not None:
            await self._closed(st)
        self._poke()

    async def _closed(self, st: Staged) -> None:
        action = self.core.last_close(st)
        if action is CloseAction.RECORD:
            try:
                await self._record(st)
            except FsError:
                action = CloseAction.DROP
            else:
                self.core.start_storing(st)
                assert self.nursery is not None
                self.nursery.start_soon(self._store, st)
                return
        if action is CloseAction.DROP:
            why = (f"{st.path}: not kept after a failed write or close "
                   f"({os.strerror(st.broken or errno.EIO)}); the path shows what it held before")
            self.core.drop(st, why)
            self._send_invalidations()
            await self._hold_in_store(st.model, st.path, why)

    async def _store(self, st: Staged) -> None:
        """stage_file in a worker thread: diff against the parent, store, replace the pointer."""
        model = st.model
        try:
            async with self._stage_limiter:
                if self.core.config.stage_delay:
                    await trio.sleep(self.core.config.stage_delay)
                t0 = time.monotonic()
                res = await trio.to_thread.run_sync(stage_closed, self.drafts, model, st.file)
            if res is None:
                log.debug("%s/%s: nothing to store (removed or replaced meanwhile)", model, st.path)
                return
            op = self.core.stored(st, res[0], res[1], time.monotonic() - t0)
            if op is not None:
                await self._store_ops(model, [op])
        except Exception as e:
            # not a failed save (its close returned): it stays a durable pointer, and each
            # commit attempt retries it (backing off) until it is stored, then commits
            self.core.error(model, f"{st.path}: storing the closed file failed: {e}; it stays "
                            "pending (the next commit attempt retries it)")
            log.debug("stage_file failed", exc_info=True)
        finally:
            self.core.store_finished(st)
            self._done_something()

    # ---- namespace changes -------------------------------------------------------------

    @boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        a = self.writes.mkdir(parent_inode, os.fsdecode(name), mode)
        if self.tree.node(a.ino).kind is Kind.HEAD:
            log.info("new model directory %s (its parent is inferred from its first tensors, "
                     "or set with modelfs derive)", os.fsdecode(name))
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
        raise self.writes.refused(parent_inode, "only regular files and directories can be stored")

    @boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        raise self.writes.refused(parent_inode, "symbolic links cannot be stored")

    @boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
                   ) -> pyfuse3.EntryAttributes:
        raise self.writes.refused(new_parent_inode, "hard links cannot be stored")

    @boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if not self.tree.is_writable(inode):
            raise FsError(errno.EROFS)
        raise FsError(errno.ENOTSUP)

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if not self.tree.is_writable(inode):
            raise FsError(errno.EROFS)
        raise FsError(errno.ENOTSUP)
