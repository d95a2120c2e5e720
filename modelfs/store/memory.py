"""An in-memory twin of the LMDB store, for fast tests of the layers above."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from modelfs.store.base import TABLES


class _MemTxn:
    def __init__(self, tables: dict[str, dict[bytes, bytes]], writable: bool, views: bool = False) -> None:
        self._tables = tables
        self._writable = writable
        self._views = views

    def get(self, table: str, key: bytes) -> bytes | memoryview | None:
        v = self._tables[table].get(bytes(key))
        return memoryview(v) if self._views and v is not None else v

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        t = self._tables[table]
        for k in sorted(t):
            if k.startswith(prefix):
                yield k, t[k]

    def keys(self, table: str, prefix: bytes = b"") -> Iterator[bytes]:
        for k, _ in self.items(table, prefix):
            yield k

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        assert self._writable
        t = self._tables[table]
        key = bytes(key)
        if not overwrite and key in t:
            return False
        t[key] = bytes(value)
        return True

    def delete(self, table: str, key: bytes) -> bool:
        assert self._writable
        return self._tables[table].pop(bytes(key), None) is not None


class MemoryStore:
    """Copy-on-write transactions over dicts: a failed write transaction changes nothing.

    Committed tables are never mutated (a writer works on a copy and swaps it in), so a
    reader takes the current tables as its snapshot and never waits for a writer, as in LMDB.
    """

    readonly = False

    def __init__(self) -> None:
        self._tables: dict[str, dict[bytes, bytes]] = {t: {} for t in TABLES}
        self._write_lock = threading.Lock()

    @contextmanager
    def read(self, views: bool = False) -> Iterator[_MemTxn]:
        yield _MemTxn(self._tables, writable=False, views=views)

    @contextmanager
    def write(self) -> Iterator[_MemTxn]:
        with self._write_lock:
            work = {t: dict(v) for t, v in self._tables.items()}
            yield _MemTxn(work, writable=True)
            self._tables = work

    def stored_bytes(self) -> int:
        return sum(len(k) + len(v) for t in self._tables.values() for k, v in t.items())

    def offset_of(self, view: memoryview | bytes) -> int | None:
        return None  # no file: nothing to page in

    def will_need(self, spans: Iterable[tuple[int, int]]) -> None:
        pass

    def random_access(self, on: bool = True) -> bool:
        return False

    def map_in(self, offset: int, length: int) -> None:
        pass

    def close(self) -> None:
        pass
