"""Recording a version: its file records, its index entries (tensor signatures and the sketch
index of repo/sketches.py, both read by parent inference), the new head.

Imports and draft commits both end here, so a version is written one way whatever made it.
`tensor_signature` lives here because this is where the index is written; parent inference
reads it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import blake3

from modelfs.errors import Conflict
from modelfs.lineage import FileEntry, LineageGraph, Version
from modelfs.repo import sketches
from modelfs.repo.files import FileRecord
from modelfs.store import ReadTxn, Store, WriteTxn

log = logging.getLogger(__name__)

DATA_VERSION_KEY = b"data_version"


def tensor_signature(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Index key of a tensor for parent inference; dtype "*" is the cast-blind form."""
    return blake3.blake3(f"{name}\0{dtype}\0{list(shape)}".encode()).digest()[:16]


def data_version(txn: ReadTxn) -> int:
    """Changes whenever a version commits, so long-lived views know to refresh."""
    raw = txn.get("meta", DATA_VERSION_KEY)
    return int(raw) if raw else 0


class Recorder:
    """Writes versions into the store and the lineage graph."""

    def __init__(self, store: Store, graph: LineageGraph) -> None:
        self._store = store
        self._graph = graph

    def record(self, model: str, entries: Mapping[str, FileEntry], records: list[FileRecord],
               derived: list[str], how: str | None, message: str,
               provenance: Mapping[str, Any], move_head: bool = True) -> Version:
        """`record_in` in a transaction of its own."""
        with self._store.write() as txn:
            v = self.record_in(txn, model, entries, records, derived, how, message, provenance,
                               move_head)
        log.info("committed %s (%s)", v.ref, v.id)
        return v

    def record_in(self, txn: WriteTxn, model: str, entries: Mapping[str, FileEntry],
                  records: list[FileRecord], derived: list[str], how: str | None,
                  message: str, provenance: Mapping[str, Any], move_head: bool = True) -> Version:
        """Write a version, its file records, its index entries and the new head, in `txn`."""
        info = self._graph.model(txn, model)
        number = (info.count if info else 0) + 1
        previous = info.head if info else None
        now = time.time()
        ident = blake3.blake3(json.dumps(
            [model, number, previous, derived, now, message, how,
             {p: e.key.hex() for p, e in sorted(entries.items())}]).encode()).hexdigest()[:20]
        v = Version(ident, model, number, previous, tuple(dict.fromkeys(derived)), how, message, now,
                    MappingProxyType(dict(entries)), MappingProxyType(dict(provenance)))
        for rec in records:
            txn.put("files", rec.key, rec.to_bytes(), overwrite=False)
        named = self._index_signatures(txn, v, records)
        sketches.index_version(txn, v.id, v.files, data_version(txn), named)
        self._graph.add_version(txn, v, move_head)
        txn.put("meta", DATA_VERSION_KEY, str(data_version(txn) + 1).encode())
        return v

    def adopt_in(self, txn: WriteTxn, v: Version, move_head: bool = True) -> None:
        """Write a version made elsewhere (pulled from a remote) as it is: its id, number and
        time kept, its index entries written as `record_in` writes them. Its file records must
        be in `txn` already."""
        named = self._index_signatures(txn, v, [])
        sketches.index_version(txn, v.id, v.files, data_version(txn), named)
        self._graph.add_version(txn, v, move_head)
        txn.put("meta", DATA_VERSION_KEY, str(data_version(txn) + 1).encode())

    def advance_head(self, version_id: str) -> Version:
        """Make a version stored beside the head (``move_head=False``) the head, if the head is
        still the version it was built on; otherwise Conflict and nothing changes."""
        with self._store.write() as txn:
            v = self._graph.version(txn, version_id)
            info = self._graph.model(txn, v.model)
            head = info.head if info else None
            if head != v.id:
                if head != v.previous:
                    raise Conflict(f"{v.model}'s head moved on since {v.ref} was stored beside it: "
                                   "the head was left where it is")
                self._graph.set_head(txn, v.model, v.id)
                txn.put("meta", DATA_VERSION_KEY, str(data_version(txn) + 1).encode())
        return v

    @staticmethod
    def _index_signatures(txn: WriteTxn, v: Version, records: list[FileRecord]) -> bool:
        """Index the version's named tensors; whether it has any."""
        recs = {r.key: r for r in records}
        named = False
        for entry in v.files.values():
            rec = recs.get(entry.key) or FileRecord.from_bytes(txn.get("files", entry.key) or b"")
            for t in rec.tensors():
                if t.name:
                    named = True
                    for dt in (t.dtype.name, "*"):
                        txn.put("tsig", tensor_signature(t.name, dt, t.shape) + v.id.encode(), b"")
        return named
