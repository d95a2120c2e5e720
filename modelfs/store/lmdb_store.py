"""The LMDB-backed store: one environment in one directory, one sub-database per table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from modelfs.errors import ModelfsError, StoreNotFound
from modelfs.store.base import TABLES

DEFAULT_MAP_SIZE = 1 << 40  # sparse: LMDB only uses what it writes


class _LmdbTxn:
    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, object]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[table])

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cur = self._txn.cursor(db=self._dbs[table])
        if not cur.set_range(prefix):
            return
        for k, v in cur:
            if not k.startswith(prefix):
                break
            yield k, v

    def keys(self, table: str, prefix: bytes = b"") -> Iterator[bytes]:
        cur = self._txn.cursor(db=self._dbs[table])
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
        try:
            self.env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(TABLES) + 4,
                max_readers=1024, readonly=readonly, sync=True, metasync=True,
                readahead=True, lock=True,  # chunk records are MBs read whole: let the OS read ahead
            )
        except lmdb.Error as e:
            raise ModelfsError(f"cannot open store at {self.path}: {e}") from e
        self._dbs = {t: self.env.open_db(t.encode(), create=not readonly) for t in TABLES}

    @contextmanager
    def read(self) -> Iterator[_LmdbTxn]:
        with self.env.begin(write=False) as txn:
            yield _LmdbTxn(txn, self._dbs)

    @contextmanager
    def write(self) -> Iterator[_LmdbTxn]:
        try:
            with self.env.begin(write=True) as txn:
                yield _LmdbTxn(txn, self._dbs)
        except lmdb.MapFullError as e:
            raise ModelfsError(f"store {self.path} is full: {e}") from e
        except lmdb.DiskError as e:
            raise ModelfsError(f"disk error writing store {self.path}: {e}") from e

    def stored_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def close(self) -> None:
        self.env.close()
