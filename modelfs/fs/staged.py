"""A file being written in a head: its bytes live in a staging file until it is stored.

- A file opened for writing gets a ``Staged``: its bytes live in a staging file under
  ``<store>/staging/<this mount>/``, written with ``os.pwrite`` (page cache only).
  Opening an existing file does not copy it: the copy-up from the stored file happens in a
  worker thread at the first write (``copy_up``), and never for ``O_TRUNC``.
- From its close on, a staging file is *frozen*: opening it for writing again starts a new
  ``Staged`` copied from it, so storing it never reads a file that changes under it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from modelfs.lineage import FileEntry

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
        """Only for a file no handle holds (a create that failed, a file not kept)."""
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
