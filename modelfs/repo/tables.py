"""Tables the ops layer owns (tests, results, ...): keyed JSON records beside the lineage.

The ops layer never touches the store (DESIGN.md), yet tests, results and recipes must live
in it, since the store is the only place state lives. A `RecordTable` is that narrow door:
get, scan and put JSON values in one named table, each write one transaction under the
shared writer lock (so a read-only store refuses it with a clear error and gc never runs
beside it). The tables the facade itself maintains (versions, chunks, ...) are not reachable
this way: nothing outside the repo can write a version record or an index entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from modelfs.errors import ModelfsError
from modelfs.repo.writelock import WriterLock
from modelfs.store import TABLES, Store

# Maintained by the repo itself: versions, file and chunk records, the lineage indexes.
REPO_TABLES = frozenset({"meta", "chunks", "files", "versions", "models", "vnums", "children", "tsig",
                         "sketch", "pending", "tags", "annotations"})


class RecordTable:
    """One ops table of ``bytes key -> JSON value``; every call is its own transaction."""

    def __init__(self, store: Store, lock: WriterLock, name: str) -> None:
        if name not in TABLES:
            raise ModelfsError(f"no table {name!r} in this store layout (add it to store.base.TABLES)")
        if name in REPO_TABLES:
            raise ModelfsError(f"table {name!r} is maintained by the repo and not open to records")
        self.name = name
        self._store = store
        self._lock = lock

    def get(self, key: bytes) -> Any | None:
        with self._store.read() as txn:
            raw = txn.get(self.name, key)
        return None if raw is None else json.loads(bytes(raw))

    def items(self, prefix: bytes = b"") -> list[tuple[bytes, Any]]:
        """Every record whose key starts with ``prefix``, in key order (a snapshot)."""
        with self._store.read() as txn:
            return [(bytes(k), json.loads(bytes(v))) for k, v in txn.items(self.name, prefix)]

    def put(self, key: bytes, value: Any, overwrite: bool = True) -> bool:
        """Store one record; False (and nothing written) if it exists and not ``overwrite``."""
        return self.put_many([(key, value)], overwrite) == 1

    def put_many(self, records: Iterable[tuple[bytes, Any]], overwrite: bool = True) -> int:
        """Store several records all-or-nothing; returns how many were written."""
        encoded = [(k, json.dumps(v, sort_keys=True).encode()) for k, v in records]
        with self._lock.hold(), self._store.write() as txn:
            return sum(txn.put(self.name, k, v, overwrite=overwrite) for k, v in encoded)

    def delete(self, *keys: bytes) -> int:
        """Remove these records in one transaction; returns how many existed."""
        with self._lock.hold(), self._store.write() as txn:
            return sum(txn.delete(self.name, k) for k in keys)

    def __iter__(self) -> Iterator[tuple[bytes, Any]]:
        return iter(self.items())
