"""The LMDB-backed store: one environment in one directory, one sub-database per table."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from modelfs.errors import ModelfsError, StoreFull, StoreIOError, StoreNotFound, StoreReadOnly
from modelfs.store.base import TABLES
from modelfs.store.filemap import FileMap

DEFAULT_MAP_SIZE = 1 << 40  # sparse: LMDB only uses what it writes
# LMDB answers a short write (the disk filled part way through it) with EIO, not ENOSPC.
# A disk that filled leaves next to nothing free; real I/O trouble leaves the space there.
FULL_MARGIN = 8 << 20


def _code(e: lmdb.Error) -> int:
    """The errno (or negative MDB_* code) py-lmdb keeps on its exceptions; 0 when it has none."""
    code = getattr(e, "code", 0)
    return code if isinstance(code, int) else 0


class _LmdbTxn:
    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, object | None]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | memoryview | None:
        db = self._dbs[table]
        return None if db is None else self._txn.get(key, db=db)

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        db = self._dbs[table]
        if db is None:  # a table newer than this read-only store: empty
            return
        cur = self._txn.cursor(db=db)
        if not cur.set_range(prefix):
            return
        for k, v in cur:
            if not k.startswith(prefix):
                break
            yield k, v

    def keys(self, table: str, prefix: bytes = b"") -> Iterator[bytes]:
        db = self._dbs[table]
        if db is None:
            return
        cur = self._txn.cursor(db=db)
        if not cur.set_range(prefix):
            return
        for k in cur.iternext(keys=True, values=False):
            if not k.startswith(prefix):
                break
            yield k

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        return self._txn.put(key, value, db=self._dbs[table], overwrite=overwrite)

    def delete(self, table: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[table])


class LmdbStore:
    """Write transactions are begun, filled and committed on one thread (py-lmdb's rule)."""

    def __init__(self, path: str | os.PathLike[str], create: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False) -> None:
        self.path = Path(path)
        data = self.path / "data.mdb"
        if not create and not data.exists():
            raise StoreNotFound(f"no modelfs store at {self.path} (run `modelfs init` first)")
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        try:
            self.env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(TABLES) + 4,
                max_readers=1024, readonly=readonly, sync=True, metasync=True,
                readahead=True, lock=True,  # chunk records are MBs read whole: let the OS read ahead
            )
        except lmdb.Error as e:
            if _code(e) in (errno.EACCES, errno.EROFS) and not readonly:
                raise StoreReadOnly(f"store {self.path} is read-only ({e})") from e
            raise ModelfsError(f"cannot open store at {self.path}: {e}") from e
        try:
            self._dbs = {t: self._open_table(t, readonly) for t in TABLES}
        except lmdb.Error as e:
            self.env.close()
            raise self._write_error(e) from e
        self._map = FileMap(data)

    def _open_table(self, table: str, readonly: bool) -> object | None:
        """A table's database; None for a table a read-only (older) store has not got yet.

        A writable store gets every table made on open, so an old store keeps working; a
        read-only one reads the tables it has and shows the newer ones empty.
        """
        try:
            return self.env.open_db(table.encode(), create=not readonly)
        except lmdb.NotFoundError:
            if not readonly:
                raise
            return None

    @contextmanager
    def read(self, views: bool = False) -> Iterator[_LmdbTxn]:
        with self.env.begin(write=False, buffers=views) as txn:
            yield _LmdbTxn(txn, self._dbs)

    @contextmanager
    def write(self) -> Iterator[_LmdbTxn]:
        """A write transaction; any LMDB failure in it (put or commit) is a typed StoreIOError."""
        if self.readonly:
            raise StoreReadOnly(f"store {self.path} is read-only: nothing was changed")
        try:
            with self.env.begin(write=True) as txn:
                yield _LmdbTxn(txn, self._dbs)
        except lmdb.Error as e:
            raise self._write_error(e) from e

    def _write_error(self, e: lmdb.Error) -> StoreIOError:
        """What a failed write means to the user; the transaction was aborted, so nothing changed."""
        code = _code(e)
        if isinstance(e, lmdb.MapFullError):
            return StoreFull(f"store {self.path} filled its LMDB map "
                             f"({self.env.info()['map_size']} bytes): nothing was changed")
        if isinstance(e, lmdb.ReadonlyError) or code == errno.EROFS:
            return StoreReadOnly(f"store {self.path} is read-only: nothing was changed")
        if code == errno.ENOSPC or (code == errno.EIO and self._disk_full()):
            return StoreFull(f"the disk holding store {self.path} is full: nothing was changed "
                             "(free some space, then retry)")
        return StoreIOError(f"cannot write store {self.path} ({e}): nothing was changed",
                            code if code > 0 else errno.EIO)

    def _disk_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < FULL_MARGIN

    def stored_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def offset_of(self, view: memoryview | bytes) -> int | None:
        return self._map.offset_of(view)

    def will_need(self, spans: Iterable[tuple[int, int]]) -> None:
        self._map.will_need(spans)

    def random_access(self, on: bool = True) -> bool:
        return self._map.random_access(on)

    def map_in(self, offset: int, length: int) -> None:
        self._map.map_in(offset, length)

    def close(self) -> None:
        self.env.close()
        self._map.close()
