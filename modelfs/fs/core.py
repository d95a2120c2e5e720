"""The mount's synchronous core: open handles, the life of a written file, what to do next.

The pyfuse3/trio adapter (``ops.py``) owns only what needs trio: locks, events, worker
threads and background tasks. Every decision is made here, on plain values, so it is
tested without FUSE or an event loop (as borg's ``fuse.py`` sits on its ``vfs.py``):

- the handle table, and the writer counts the commit rule reads (``Settler``);
- how a read of a file being written is served (its staging file, or the stored file it
  was opened from, before the copy-up);
- what the last close of a written file does (``CloseAction``), and the bookkeeping once
  it is recorded, stored, or dropped;
- which models have settled, what a commit changed, what recovery and shutdown must do.
"""

from __future__ import annotations

import enum
import errno
import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from modelfs.fs.config import MountConfig
from modelfs.fs.draftsync import Committed, Recovery, StoreOp, with_mode
from modelfs.fs.headwrites import HeadWrites
from modelfs.fs.nodes import Attr, FsError, Kind
from modelfs.fs.readahead import ReadAhead
from modelfs.fs.settle import Settler
from modelfs.fs.staged import Staged
from modelfs.fs.staging import StagingArea
from modelfs.fs.tree import Tree
from modelfs.repo import Draft, FileEntry, FileReader, Repo
from modelfs.repo.checkpoints import unit_of as checkpoint_unit

log = logging.getLogger("modelfs.fs")


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

    def add_read(self, nbytes: int) -> None:
        self.reads += 1
        self.read_bytes += nbytes


@dataclass(slots=True)
class OpenFile:
    size: int
    reader: FileReader | None = None  # a stored file
    data: bytes = b""  # a generated file
    ahead: ReadAhead | None = None
    staged: Staged | None = None  # a file whose bytes are in a staging file
    write: bool = False
    ino: int = 0  # of a write handle: to ask who else holds the file at a FLUSH


@dataclass(frozen=True, slots=True)
class BaseRead:
    """A read of a file being written that its base must answer (it is not copied up yet)."""

    base: FileEntry | Staged
    offset: int
    size: int  # bytes the base holds of the range
    total: int  # the range's length: the rest reads as zeros


class CloseAction(enum.Enum):
    NONE = "none"  # other writers still have it open
    DROP = "drop"  # a write or close failed: never kept
    RECORD = "record"  # record it (durable), then store it


class MountCore:
    """modelfs as the mount sees it, without trio or pyfuse3 (see the module docstring)."""

    def __init__(self, repo: Repo, config: MountConfig, staging: StagingArea | None = None,
                 store_label: str = "") -> None:
        self.repo = repo
        self.config = config
        self.drafts = repo.drafts()
        self.staging = staging
        self.store_label = store_label
        self.tree = Tree(repo, root_xattrs=self.root_xattrs, head_xattrs=self.head_xattrs,
                         staging=staging, refresh_interval=config.refresh_interval)
        self.writes = HeadWrites(self.tree)
        self.settler = Settler(config.settle, settle_of=self._model_settle)
        self.stats = ReadStats()
        self._fh = itertools.count(1)
        self._open: dict[int, OpenFile] = {}
        self._dirs: dict[int, tuple[int, list[tuple[bytes, Attr]]]] = {}
        self._readers: OrderedDict[bytes, FileReader] = OrderedDict()

    def _model_settle(self, model: str) -> float | None:
        """The model's own settle time (``modelfs config M settle``), None for the mount's."""
        value = self.repo.model_settings().get(model, "settle")
        return None if value is None else float(value)

    # ---- published state ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Decode work (repo counters) and read/write-path work (this mount)."""
        c = getattr(self.repo, "counters", None)
        out = {k: int(getattr(c, k)) for k in ("chunks_decoded", "bytes_decoded", "cache_hits")
               if hasattr(c, k)}
        out.update(asdict(self.stats))
        fetched = self.repo.fetch_stats() if hasattr(self.repo, "fetch_stats") else None
        out.update({f"lazy_{k}": v for k, v in (fetched or {}).items()})  # a lazy store's fetches
        out["open_files"] = len(self._open)
        out["inodes"] = self.tree.inode_count
        return out

    def root_xattrs(self) -> dict[str, bytes]:
        return {
            "user.modelfs.pid": str(os.getpid()).encode(),
            "user.modelfs.store": self.store_label.encode(),
            "user.modelfs.read_only": b"0" if self.staging is not None else b"1",
            "user.modelfs.counters": json.dumps(self.counters(), sort_keys=True).encode(),
        }

    def head_xattrs(self, model: str) -> dict[str, bytes]:
        if self.staging is None:
            return {}
        a = self.settler.of(model)
        out = {"user.modelfs.draft": json.dumps(a.to_json(), sort_keys=True).encode()}
        if a.errors:
            out["user.modelfs.errors"] = ("\n".join(a.errors) + "\n").encode()
        if a.last_commit:
            out["user.modelfs.committed"] = json.dumps(a.last_commit, sort_keys=True).encode()
        return out

    def error(self, model: str, message: str) -> None:
        """Failures nobody else sees (release errors are dropped): the log and an xattr."""
        self.stats.errors += 1
        log.error("%s: %s", model, message)
        self.settler.error(model, message)

    # ---- directories and activity ---------------------------------------------------------

    def looked_at(self, ino: int) -> None:
        """A lookup or listing in a head with a draft keeps its burst going (``Settler``)."""
        model = self.tree.model_dir(ino)
        if model and model in self.settler.models:
            self.settler.touch(model, change=False)

    def opendir(self, ino: int) -> int:
        self.looked_at(ino)
        # a snapshot, so offsets stay valid however the directory changes meanwhile
        listing = [(os.fsencode(n), a) for n, a in self.tree.readdir(ino)]
        fh = next(self._fh)
        self._dirs[fh] = (ino, listing)
        return fh

    def listing(self, fh: int) -> list[tuple[bytes, Attr]]:
        d = self._dirs.get(fh)
        if d is None:
            raise FsError(errno.EBADF)
        return d[1]

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def dir_model(self, fh: int) -> str | None:
        """The model whose head (or a directory in it) an open directory handle is in."""
        d = self._dirs.get(fh)
        if d is None or self.staging is None:
            return None
        return self.tree.model_dir(d[0])

    # ---- handles ----------------------------------------------------------------------------

    def add_handle(self, h: OpenFile) -> int:
        fh = next(self._fh)
        self._open[fh] = h
        if h.staged is not None:
            h.staged.refs += 1
            if h.write:
                h.staged.writers += 1
                self.settler.of(h.staged.model).writers += 1
        return fh

    def handle(self, fh: int) -> OpenFile:
        h = self._open.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    def write_handle(self, fh: int) -> Staged:
        """The staging file a write handle writes; EBADF for any other handle."""
        h = self._open.get(fh)
        if h is None or h.staged is None or not h.write:
            raise FsError(errno.EBADF)
        return h.staged

    def open_for_writing(self, inode: int) -> tuple[int, Staged]:
        if not self.tree.is_writable(inode):
            raise FsError(errno.EROFS)
        st = self.writes.open_write(inode)
        fh = self.add_handle(OpenFile(st.size, staged=st, write=True, ino=inode))
        self.settler.touch(st.model)
        return fh, st

    def create(self, parent: int, name: str, mode: int) -> tuple[int, Attr]:
        a, st = self.writes.create(parent, name, mode)
        log.debug("create %s/%s", st.model, st.path)
        fh = self.add_handle(OpenFile(0, staged=st, write=True, ino=a.ino))
        self.settler.touch(st.model)
        return fh, a

    def open_for_reading(self, inode: int) -> OpenFile | FileEntry:
        """A handle's state, or the stored file whose reader the adapter must open first."""
        content = self.tree.content(inode)
        if isinstance(content, bytes):
            return OpenFile(len(content), data=content)
        if isinstance(content, Staged):
            return OpenFile(content.size, staged=content)
        return content

    def reader_handle(self, reader: FileReader) -> OpenFile:
        c = self.config
        return OpenFile(reader.size, reader=reader, ahead=ReadAhead(reader.size, c.window,
                                                                    c.trigger))

    def cached_reader(self, entry: FileEntry) -> FileReader | None:
        """One reader per stored file, shared by its handles (it is thread-safe)."""
        r = self._readers.get(entry.key)
        if r is not None:
            self._readers.move_to_end(entry.key)
        return r

    def keep_reader(self, entry: FileEntry, reader: FileReader) -> None:
        self._readers[entry.key] = reader
        while len(self._readers) > 256:
            self._readers.popitem(last=False)

    def release(self, fh: int) -> Staged | None:
        """Forget a handle; the staged file whose last writer this was, if any."""
        h = self._open.pop(fh, None)
        if h is None or h.staged is None:
            return None
        st = h.staged
        st.refs -= 1
        if not h.write:
            return None
        st.writers -= 1
        self.settler.of(st.model).writers -= 1
        log.debug("release %s/%s (%d bytes, %d writers left)", st.model, st.path, st.size,
                  st.writers)
        self.settler.touch(st.model)
        return st if st.writers == 0 else None

    # ---- reads and writes -----------------------------------------------------------------

    def read_staged(self, st: Staged, off: int, size: int) -> bytes | BaseRead:
        """A staging file (page cache: on the loop), or what its base must answer."""
        end = min(off + size, st.size)
        if end <= off:
            return b""
        self.stats.add_read(end - off)
        base = st.base
        if base is None:
            return st.pread(end - off, off)
        have = min(end, st.keep, base.size)
        if isinstance(base, Staged):
            data = base.pread(have - off, off) if off < have else b""
            return data + bytes(end - off - len(data))
        return BaseRead(base, off, max(0, have - off), end - off)

    def wrote(self, st: Staged, n: int) -> None:
        self.stats.writes += 1
        self.stats.write_bytes += n
        self.settler.touch(st.model)

    def write_failed(self, st: Staged, size: int, off: int, e: OSError) -> int:
        self.error(st.model, f"{st.path}: write of {size} bytes at {off} failed "
                   f"({e.strerror}); the file will not be kept")
        return st.broken or errno.EIO

    def truncate_target(self, inode: int, fh: int | None) -> tuple[Staged, int | None]:
        """The staging file a truncate changes, and a handle opened for it (truncate by path)."""
        n = self.tree.node(inode)
        if n.kind is not Kind.FILE:
            raise FsError(errno.EISDIR)
        h = self._open.get(fh) if fh is not None else None
        if h is not None and h.write and h.staged is not None and not h.staged.frozen:
            return h.staged, None
        st = self.writes.open_write(inode)
        return st, self.add_handle(OpenFile(st.size, staged=st, write=True, ino=inode))

    # ---- where one save ends and the next begins -----------------------------------------

    def _cuts(self, model: str, paths: Iterable[str]) -> bool:
        a = self.settler.models.get(model)
        return a is not None and a.dirty and not a.held and any(p in a.burst for p in paths)

    def cut_at_open(self, inode: int, flags: int) -> str | None:
        """The model to commit before this open: a file closed whole in this burst is
        truncated for a new save (``O_TRUNC``), so the save it belonged to is complete."""
        if not flags & os.O_TRUNC or self.staging is None:
            return None
        n = self.tree.node(inode)
        return n.model if n.kind is Kind.FILE and self._cuts(n.model, [n.path]) else None

    def cut_before_ops(self, model: str, ops: list[StoreOp]
                       ) -> tuple[bool, tuple[str, ...], list[str]]:
        """Before namespace changes reach the draft: whether they start a new save.

        A rename over a file that was renamed into place whole in this burst (``save_file``'s
        temp file renamed over the weights again) does: the burst so far commits first,
        without the renamed files (the new save's). A rename over a file written in place is
        no new save (``write x; write tmp; mv tmp x`` is one). Returns (whether to commit first; the paths to leave out of
        that commit; the closed files that move, which stay in the burst under their names).
        """
        a = self.settler.of(model)
        moved = [op.new for op in ops if op.kind == "rename" and op.path in a.burst]
        renames = tuple(op.path for op in ops if op.kind == "rename")
        cut = self._cuts(model, [op.new for op in ops if op.kind == "rename"
                                 and op.new in a.renamed])
        # a trainer removing an old checkpoint (save_total_limit) it wrote in this burst:
        # the checkpoint becomes its version first
        cut_rm = self._cuts(model, [op.path for op in ops if op.kind == "remove"
                                    and checkpoint_unit(op.path) is not None])
        for op in ops:
            if op.kind in ("remove", "rename"):
                a.burst.discard(op.path)
                a.renamed.discard(op.path)
        return cut or cut_rm, (renames if cut else ()), moved

    def join_burst(self, model: str, ops: list[StoreOp], moved: list[str]) -> None:
        """After the changes: closed files keep their place in the burst under their new
        names, and each rename target is a file put in place by a rename (safetensors renames
        its temp file before it closes it): a second rename over one is a second save."""
        a = self.settler.of(model)
        a.burst.update(moved)
        a.renamed.update(op.new for op in ops if op.kind == "rename")

    # ---- closing ----------------------------------------------------------------------------

    def flush_needs_record(self, fh: int) -> tuple[Staged, int] | None:
        """close(2) records the file (durable before close returns) unless others write it.

        Returns the file and its inode: the adapter still asks whether a process holds it
        open for writing (a FLUSH also comes when a forked child closes its copy).
        """
        h = self._open.get(fh)
        if h is None or not h.write or h.staged is None:
            return None
        st = h.staged
        if st.broken:
            raise FsError(st.broken)
        return (st, h.ino) if st.writers <= 1 else None

    @staticmethod
    def needs_record(st: Staged) -> bool:
        return st.changed and st.present and not st.broken

    def last_close(self, st: Staged) -> CloseAction:
        """The last writer closed: keep the file (record, then store it), or drop it."""
        if st.broken:
            return CloseAction.DROP
        if st.gen == 0:  # opened for writing, never changed
            self.writes.revert(st)
            self._discard(st)
            return CloseAction.NONE
        if not st.present and st.recorded_gen == 0:  # removed before it was ever closed
            self._discard(st)
            return CloseAction.NONE
        return CloseAction.RECORD

    def recorded(self, st: Staged, gen: int) -> bool:
        """The close is durable; whether a hold on this path is released by it."""
        st.recorded_gen = gen
        self.stats.files_recorded += 1
        self.settler.of(st.model).burst.add(st.path)
        self.settler.touch(st.model, dirty=True)
        return self.settler.of(st.model).held.pop(st.path, None) is not None

    def start_storing(self, st: Staged) -> None:
        st.freeze()
        self.settler.of(st.model).storing += 1

    def drop(self, st: Staged, why: str) -> None:
        """A file whose save failed: not kept, and its burst held back (never half a save)."""
        self.error(st.model, why)
        self.writes.revert(st)
        # a pending pointer to it (from an earlier close) is dropped by the next commit
        self._discard(st)
        a = self.settler.of(st.model)
        if not a.held:
            head = self.tree.loaded_heads().get(st.model)
            a.held_head = head.version if head is not None else None
        a.held[st.path] = why

    @staticmethod
    def _discard(st: Staged) -> None:
        """A staging file that is not kept: its space goes now, not when it is collected."""
        st.file.unlink(missing_ok=True)
        if st.refs == 0:  # no handle reads it any more
            st.close_fd()

    def stored(self, st: Staged, path: str, entry: FileEntry, seconds: float) -> StoreOp | None:
        """The staging file is stored; the mode change it may have missed, as a store op."""
        self.stats.files_stored += 1
        log.info("stored %s/%s: %s, %d bytes, %.2fs", st.model, path, entry.format, entry.size,
                 seconds)
        if self.writes.stored(st, entry) and entry.mode != st.mode:
            return StoreOp("entry", st.model, st.path, entry=with_mode(entry, st.mode))
        return None

    def store_finished(self, st: Staged) -> None:
        self.settler.of(st.model).storing -= 1  # not a change: the settle clock runs on

    # ---- model operations and commits -------------------------------------------------------

    def begin_model_op(self, model: str) -> None:
        """A store operation of ``model`` starts: refreshes leave its head alone meanwhile."""
        head = self.tree.head(model)
        if head is not None:
            head.busy += 1

    def end_model_op(self, model: str) -> None:
        head = self.tree.loaded_heads().get(model)
        if head is not None:
            head.busy -= 1
            self.tree.settle(model)

    def may_commit(self, model: str, force: bool) -> bool:
        """Under the model's lock, with nothing being stored: whether to commit now."""
        a = self.settler.of(model)
        if not (a.dirty or force):
            return False
        if a.held:
            log.warning("%s: not committed: a save into it failed; `modelfs commit %s "
                        "--force` or `modelfs discard %s`", model, model, model)
            return False
        return True

    def committed(self, model: str, res: Committed, why: str) -> None:
        loaded = self.tree.loaded_heads().get(model)
        before = loaded.version if loaded is not None else None
        self.settler.committed(model)
        self.tree.committed(model, res.version)
        if res.version is not None:
            self.stats.commits += 1
            v = res.version
            self.settler.of(model).last_commit = {
                "ref": v.ref, "id": v.id, "why": why, "time": v.time, "files": len(res.changed),
                "versions": [x.ref for x in res.made]}
            if any(x.provenance.get("checkpoint") for x in res.made):
                self.tree.follow_checkpoints(model, before, v)
            for x in res.made[:-1]:
                log.info("committed %s (%s) [%s]: %s", x.ref, x.id, why,
                         x.provenance.get("checkpoint", ""))
            log.info("committed %s (%s) [%s]: %d files changed in %.3fs: %s", v.ref, v.id, why,
                     len(res.changed), res.seconds, ", ".join(res.changed[:20])
                     + (" ..." if len(res.changed) > 20 else ""))
        elif res.changed:
            log.info("%s: %d pending changes left the files as they were; no new version [%s]",
                     model, len(res.changed), why)

    def commit_failed(self, model: str, why: str, e: Exception) -> None:
        wait = self.settler.failed(model)
        self.error(model, f"commit failed ({why}): {e}; retrying in {wait:.0f}s")

    def held_models(self) -> list[str]:
        return [m for m, a in self.settler.models.items() if a.held]

    def hold_resolved(self, model: str, draft: Draft | None) -> bool:
        """Whether a held draft was committed or discarded from the CLI (then follow it).

        A hold the store could not record (its disk was full) is resolved by what the user
        did instead: the head moved (``commit --force``), or the draft went (``discard``).
        """
        a = self.settler.of(model)
        if a.held_stored:
            if draft is not None and draft.held:
                return False
        else:
            info = self.tree.models().get(model)
            if draft is not None and (info.head if info else None) == a.held_head:
                return False
        log.info("%s: its held draft was committed or discarded from the CLI", model)
        a.held.clear()
        a.held_stored = False
        a.dirty = draft is not None and draft.pending_files
        self.tree.resync(model)
        return True

    # ---- start and end ----------------------------------------------------------------------

    def recover(self, plan: Recovery) -> list[Staged]:
        """The closed files a killed daemon left, to store; marks their drafts to commit.

        Held drafts (a save into them failed) are stored but wait for the user.
        """
        out: list[Staged] = []
        for model, held in plan.held.items():
            a = self.settler.of(model)
            a.held.update(held)
            a.held_stored = True
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
                    out.append(st)
            log.info("%s: recovering a draft left by an earlier mount (%d closed files to store)",
                     model, len(dead))
        return out

    def abandon_open_files(self) -> None:
        """At exit: files still open for writing and never closed are not kept."""
        for head in list(self.tree.loaded_heads().values()):
            for st in head.staged():
                if not st.frozen and st.writers and not st.recorded_gen:
                    log.warning("%s/%s: still open for writing at exit; not kept",
                                st.model, st.path)
                    st.file.unlink(missing_ok=True)

    def dirty_models(self) -> Iterable[str]:
        return [m for m, a in sorted(self.settler.models.items()) if a.dirty]
