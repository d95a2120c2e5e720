"""Snapshot-on-write, the synchronous part: staging files, draft changes, when to commit.

Free of pyfuse3 and trio (the adapter in ``ops.py`` drives it), so it is tested directly.

- A file opened for writing in a head gets a ``Staged``: its bytes live in a staging file
  under ``<store>/staging/<this mount>/``, written with ``os.pwrite`` (page cache only).
  Opening an existing file does not copy it: the copy-up from the stored file happens in a
  worker thread at the first write, and never for ``O_TRUNC`` (truncating to 0 drops it).
- Closing it fsyncs the staging file and records it as a pending change of the model
  (``Drafts.record_staged``: cheap and durable), then ``Drafts.stage_file`` diffs and stores
  it in a worker thread. From the close on, a staging file is *frozen*: opening it for
  writing again starts a new ``Staged`` copied from it, so ``stage_file`` never reads a
  file that changes under it.
- ``StoreOp`` is a namespace change (rename, unlink, chmod) the draft in the store must
  follow; the adapter applies them in order, one model at a time.
- ``Settler`` decides when a model commits: nothing open for writing, nothing being
  stored, and quiet for the settle time (or at once when asked: fsync of the directory,
  recovery, unmount).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from modelfs import locks
from modelfs.errors import NotFound
from modelfs.lineage import FileEntry, Version
from modelfs.repo.drafts import STAGING_LOCK

if TYPE_CHECKING:
    from modelfs.repo.drafts import Drafts

log = logging.getLogger("modelfs.fs")

LOCK_NAME = STAGING_LOCK
COPY_PIECE = 8 << 20


class Staged:
    """One file whose bytes are in a staging file: being written, or closed and being stored.

    ``base`` is what the file held before the first write (a stored file or a frozen
    ``Staged``) while it is not copied up yet: the content is then ``base[:keep]``, zero
    padded to ``size`` (``keep`` is the smallest size a truncate left). ``gen`` counts changes; a close records the file only if ``gen`` moved since
    the last record. The fd stays open after ``stage_file`` unlinks the staging file, so
    handles opened before keep reading it.
    """

    def __init__(self, file: Path, fio: io.FileIO, model: str, path: str, mode: int, *,
                 base: FileEntry | Staged | None = None, size: int = 0,
                 mtime_ns: int | None = None) -> None:
        self.file = file
        self._fio = fio  # closed when the last holder (head, handle, copy) lets go of this
        self.model = model
        self.path = path  # where it is shown now (renames move it)
        self.mode = mode & 0o7777
        self.base = base
        self.origin = base  # what the path showed before this file: restored if it fails
        self.size = size
        self.keep = size  # bytes of base that survive (until the copy-up)
        self.mtime_ns = mtime_ns if mtime_ns is not None else time.time_ns()
        self.writers = 0  # open write handles
        self.refs = 0  # open handles of any kind
        self.gen = 0
        self.recorded_gen = 0
        self.frozen = False  # closed and handed to stage_file: never written again
        self.present = True  # shown at ``path``; False once unlinked or replaced
        self.broken: int = 0  # errno of a failed write: this content must never be committed
        self.entry: FileEntry | None = None  # set once stored
        self.recovered = False  # left by a killed daemon, adopted at mount start

    @property
    def fd(self) -> int:
        return -1 if self._fio.closed else self._fio.fileno()

    def __repr__(self) -> str:
        return f"<Staged {self.model}/{self.path} {self.file.name} size={self.size} gen={self.gen}>"

    @property
    def materialized(self) -> bool:
        return self.base is None

    @property
    def changed(self) -> bool:
        return self.gen != self.recorded_gen

    def touch(self) -> None:
        self.gen += 1
        self.mtime_ns = time.time_ns()

    # -- IO on the staging file (cheap: page cache) ------------------------------------
    def pwrite(self, data: bytes, offset: int) -> int:
        """Write all of ``data`` at ``offset``; an OSError (ENOSPC ...) breaks the file."""
        assert self.base is None and not self.frozen
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self.fd, view[done:], offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, "short write to the staging file")
                done += n
        except OSError as e:
            self.broken = e.errno or errno.EIO
            raise
        finally:
            if done:
                self.size = max(self.size, offset + done)
                self.touch()
        return done

    def pread(self, size: int, offset: int) -> bytes:
        """Bytes of a copied-up file (``base is None``)."""
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        data = os.pread(self.fd, end - offset, offset)
        if len(data) < end - offset:  # a hole past what the staging file holds
            data += bytes(end - offset - len(data))
        return data

    def truncate(self, size: int) -> None:
        """Set the size; before a copy-up only the size moves (content is ``base[:size]``)."""
        assert not self.frozen
        if self.base is not None and size == 0:
            self.base = None  # nothing of the old bytes survives: no copy-up ever
        if self.base is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self.broken = e.errno or errno.EIO
                raise
        self.keep = min(self.keep, size)
        self.size = size
        self.touch()

    def chmod(self, mode: int) -> None:
        self.mode = mode & 0o7777
        with contextlib.suppress(OSError):  # gone with its fd: nothing reads the mode any more
            os.fchmod(self.fd, staging_mode(self.mode))

    def close_fd(self) -> None:
        """Only for a file nothing else can hold yet (a create that failed)."""
        with contextlib.suppress(OSError):
            self._fio.close()

    def freeze(self) -> None:
        """Closed and recorded: from now on only read (and stored) as it is."""
        self.frozen = True
        self.origin = None  # nothing to fall back to any more; lets the old file go


def staging_mode(mode: int) -> int:
    """The staging file's mode: the file's, plus owner read/write so it can be stored."""
    return (mode & 0o7777) | 0o600


def copy_up(st: Staged, read_entry: Callable[[FileEntry], Iterable[bytes]]) -> None:
    """Fill a staging file with its base (run in a worker thread; nothing writes it meanwhile).

    Copies ``base[:keep]`` (a stored file decoded in order, or another staging file by
    ``copy_file_range``), then sets the size, so a truncate before the first write costs no
    more than it keeps.
    """
    base = st.base
    if base is None:
        return
    want = min(st.keep, st.size, base.size)
    try:
        if isinstance(base, Staged):
            _copy_fd(base.fd, st.fd, want)
        else:
            pos = 0
            for data in read_entry(base):
                if pos >= want:
                    break
                piece = memoryview(data)[: want - pos]
                written = 0
                while written < len(piece):
                    written += os.pwrite(st.fd, piece[written:], pos + written)
                pos += len(piece)
            if pos < want:
                raise OSError(errno.EIO, f"stored file gave {pos} of {want} bytes")
        os.ftruncate(st.fd, st.size)
    except OSError as e:
        st.broken = e.errno or errno.EIO
        raise
    st.base = None


def _copy_fd(src: int, dst: int, count: int) -> None:
    pos = 0
    while pos < count:
        try:
            n = os.copy_file_range(src, dst, min(COPY_PIECE, count - pos), pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = 0
        if n == 0:  # not supported here, or a short source: copy by hand
            data = os.pread(src, min(COPY_PIECE, count - pos), pos)
            if not data:
                raise OSError(errno.EIO, "staging file shorter than its size")
            n = os.pwrite(dst, data, pos)
        pos += n


class StagingArea:
    """This mount's staging files: ``<store>/staging/<tag>/``, flock'd while the daemon lives.

    The lock tells a later mount whose staging files are orphans (their daemon died) and
    whose belong to a mount that is still running.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.dir = root / f"mount-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir.mkdir()
        os.chmod(self.dir, root.stat().st_mode & 0o7777)  # as private (or shared) as the store
        self._lock: IO[str] | None = open(self.dir / LOCK_NAME, "w")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._n = 0

    def new(self, model: str, path: str, mode: int, *, base: FileEntry | Staged | None = None,
            size: int = 0) -> Staged:
        """A fresh staging file (created on the loop: one metadata operation)."""
        self._n += 1
        file = self.dir / f"{self._n:08d}"
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fio = io.FileIO(fd, "r+", closefd=True)
        try:
            os.fchmod(fd, staging_mode(mode))
        except OSError:
            fio.close()
            file.unlink(missing_ok=True)
            raise
        return Staged(file, fio, model, path, mode, base=base, size=size)

    @staticmethod
    def adopt(model: str, path: str, file: Path) -> Staged | None:
        """A staging file recorded by a daemon that died (or another mount): frozen, read-only."""
        try:
            fio = io.FileIO(file, "r")
        except OSError:
            return None
        st_ = os.fstat(fio.fileno())
        st = Staged(file, fio, model, path, st_.st_mode, size=st_.st_size,
                    mtime_ns=st_.st_mtime_ns)
        st.freeze()
        st.recovered = True
        return st

    def close(self) -> None:
        """Remove this mount's directory (if it holds nothing but the lock) and unlock it."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            leftovers = [p for p in self.dir.iterdir() if p.name != LOCK_NAME]
            if not leftovers:
                (self.dir / LOCK_NAME).unlink()
                self.dir.rmdir()
        self._lock.close()
        self._lock = None

    # -- other mounts' directories -------------------------------------------------------
    @staticmethod
    def _alive(d: Path) -> bool:
        return locks.held(d / LOCK_NAME)

    def owned_by_live_mount(self, file: Path) -> bool:
        """Whether a staging file belongs to a mount that is running now (this one included)."""
        d = file.parent
        if d == self.dir:
            return True
        return d.parent == self.root and self._alive(d)

    def sweep(self, keep: set[Path]) -> list[Path]:
        """Delete staging files of dead mounts that no pending change points at.

        They were being written when their daemon died: never closed, so never part of a
        version. Directories of live mounts are left alone; emptied ones are removed.
        """
        removed: list[Path] = []
        for d in sorted(self.root.iterdir()):
            if d == self.dir:
                continue
            if not d.is_dir():
                if d not in keep:  # a stray file directly under staging/
                    d.unlink(missing_ok=True)
                    removed.append(d)
                continue
            if self._alive(d):
                continue
            left = False
            for f in sorted(d.iterdir()):
                if f.name == LOCK_NAME:
                    continue
                if f in keep:
                    left = True
                    continue
                f.unlink(missing_ok=True)
                removed.append(f)
            if not left:
                with contextlib.suppress(OSError):
                    (d / LOCK_NAME).unlink(missing_ok=True)
                    d.rmdir()
        return removed


# -- changes the draft in the store follows -------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoreOp:
    """A namespace change in a head, for the draft in the store (applied in a worker thread).

    The store shows every path as the mount does, except that a file still open for
    writing shows what the path held before it was opened (or nothing): so a crash never
    commits half a file, and a rename of such a file moves the old bytes along.
    """

    kind: str  # "remove" | "rename" | "entry"
    model: str
    path: str
    new: str = ""
    entry: FileEntry | None = None


def apply_op(drafts: Drafts, op: StoreOp) -> None:
    """Apply one change to the model's draft, as the store sees the model now."""
    draft = drafts.get(op.model)
    present = set(drafts.view(op.model)) | set(draft.staged if draft else ())
    if op.kind == "remove":
        if op.path in present:
            drafts.stage_remove(op.model, op.path)
    elif op.kind == "rename":
        if op.path in present:
            drafts.stage_rename(op.model, op.path, op.new)
        elif op.new in present:
            drafts.stage_remove(op.model, op.new)
    elif op.kind == "entry":
        assert op.entry is not None
        try:
            drafts.stage_entry(op.model, op.path, op.entry)
        except NotFound:  # the file record is not stored yet: its stage_file records the mode
            log.debug("%s/%s: mode change left to the store", op.model, op.path)
    else:
        raise ValueError(f"unknown store op {op.kind!r}")


def stage_closed(drafts: Drafts, model: str, file: Path) -> tuple[str, FileEntry] | None:
    """Store a closed staging file under whatever path its pending pointer has now.

    None when no pointer names it any more (the file was removed or replaced meanwhile,
    or ``modelfs commit`` stored it first): then there is nothing to store.
    """
    draft = drafts.get(model)
    paths = sorted(p for p, f in (draft.staged.items() if draft else ()) if f == file)
    if not paths:
        file.unlink(missing_ok=True)
        return None
    try:
        return paths[0], drafts.stage_file(model, paths[0], file, expect_staged=file)
    except FileNotFoundError:
        if file.exists():
            raise
        return None  # stored by another process (its recover) between our look and now


@dataclass
class Recovery:
    """What a mount finds at start: closed files a killed daemon left, drafts to commit."""

    dead: dict[str, list[Path]] = field(default_factory=dict)  # model -> staging files
    commit: list[str] = field(default_factory=list)  # models whose drafts commit at once
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> path -> why
    removed: list[Path] = field(default_factory=list)  # orphans: never closed, deleted


def plan_recovery(drafts: Drafts, staging: StagingArea) -> Recovery:
    """Find what a killed daemon left; delete the staging files it never closed.

    A model commits at start when it has pending file changes and no other running mount
    is storing files of it. Drafts made by ``modelfs derive`` without files wait, and so do
    held drafts (a save into them failed): their closed files are stored, not committed.
    """
    r = Recovery()
    keep: set[Path] = set()
    for model in drafts.models():
        d = drafts.get(model)
        if d is None:
            continue
        keep |= set(d.staged.values())
        live = {f for f in d.staged.values() if staging.owned_by_live_mount(f)}
        dead = sorted(f for f in d.staged.values() if f not in live)
        if dead:
            r.dead[model] = dead
        if d.held:
            r.held[model] = dict(d.held)
        if (d.changes or dead) and not live and not d.held:
            r.commit.append(model)
    r.removed = staging.sweep(keep)
    return r


@dataclass(frozen=True, slots=True)
class Committed:
    version: Version | None
    changed: tuple[str, ...]  # paths whose pending change went in (removals included)
    seconds: float


def commit_model(drafts: Drafts, model: str, message: str = "", own: Path | None = None
                 ) -> Committed:
    """Commit a model's draft as one version (worker thread); what changed, for the log."""
    t0 = time.monotonic()
    draft = drafts.get(model)
    changed = tuple(sorted(set(draft.changes) | set(draft.staged))) if draft else ()
    v = drafts.commit(model, message=message, own=own)
    return Committed(v, changed, time.monotonic() - t0)


# -- when to commit -------------------------------------------------------------------------

@dataclass(slots=True)
class Activity:
    """What one model's directory is doing, for the commit decision and the ``draft`` xattr."""

    writers: int = 0  # handles open for writing
    storing: int = 0  # closed files waiting for, or in, stage_file
    dirty: bool = False  # the store holds changes this mount made (or recovered)
    last: float = float("-inf")  # monotonic time of the last request in the directory
    last_change: float = float("-inf")  # ... of the last change (a write, close, rename)
    urgent: bool = False  # commit without waiting for the settle time
    retry_at: float = float("-inf")  # after a failed commit
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # path -> why its save failed

    def to_json(self) -> dict[str, object]:
        return {"open_for_writing": self.writers, "storing": self.storing,
                "pending": self.dirty, "errors": len(self.errors), "held": dict(self.held)}


class Settler:
    """Per-model activity and the rule for when a burst of writes becomes one version.

    A model commits once nothing is open for writing, every closed file is stored, and
    its directory has been quiet for ``settle`` seconds. Lookups and listings count as
    activity too: a saver that looks around between two files (``save_pretrained`` lists
    the directory before it writes the weights) is still in its burst. A directory that is
    looked at forever still commits ``patience`` seconds after its last change.
    """

    MAX_ERRORS = 50

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle
        self.patience = max(10 * settle, 5.0)
        self.clock = clock
        self.models: dict[str, Activity] = {}

    def of(self, model: str) -> Activity:
        a = self.models.get(model)
        if a is None:
            a = self.models[model] = Activity()
        return a

    def touch(self, model: str, dirty: bool = False, change: bool = True) -> None:
        a = self.of(model)
        a.last = self.clock()
        if change:
            a.last_change = a.last
        a.dirty = a.dirty or dirty

    def error(self, model: str, message: str) -> None:
        a = self.of(model)
        a.errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}")
        del a.errors[: -self.MAX_ERRORS]

    def _ready(self, a: Activity) -> bool:
        """Held drafts never commit by themselves: a save into them failed (see ``hold``)."""
        return a.dirty and a.writers == 0 and a.storing == 0 and not a.held

    def _at(self, a: Activity) -> float:
        """When a ready model becomes due."""
        if a.urgent:
            return a.retry_at
        return max(a.retry_at, min(a.last + self.settle, a.last_change + self.patience))

    def due(self) -> list[str]:
        """Models to commit now."""
        now = self.clock()
        return [m for m, a in sorted(self.models.items()) if self._ready(a) and now >= self._at(a)]

    def next_check(self) -> float | None:
        """Seconds until a model may become due (None: nothing pending but writes)."""
        now = self.clock()
        waits = [self._at(a) - now for a in self.models.values() if self._ready(a)]
        return max(0.0, min(waits)) if waits else None

    def committed(self, model: str) -> None:
        a = self.of(model)
        a.dirty = a.urgent = False
        a.failures = 0
        a.retry_at = float("-inf")

    def failed(self, model: str) -> float:
        """Back off after a failed commit (5 s, doubling, at most a minute); returns the wait."""
        a = self.of(model)
        a.failures += 1
        wait = min(60.0, 5.0 * 2 ** (a.failures - 1))
        a.retry_at = self.clock() + wait
        return wait


def with_mode(entry: FileEntry, mode: int) -> FileEntry:
    return dataclasses.replace(entry, mode=mode & 0o7777)
