"""Where a lazy store gets the chunk records it does not hold yet.

A lazy store (``clone --lazy``) holds versions, file records and refs, but chunks come on
first read. The repo's read path asks a `ChunkSource` for the records it misses; the remote
layer (modelfs/remote/) implements one over an object store, and `StoreChunkSource` here
over another local store (tests, and ``clone --lazy`` from a local path).

The contract: `fetch` returns the raw record bytes exactly as the source's "chunks" table
holds them (``ChunkRecord.to_bytes()``), for the keys it has; keys it lacks are left out;
a server failure or timeout raises `RemoteUnavailable` naming the chunks and the remote.
The caller verifies every decoded chunk against its key before use, so a source never has
to be trusted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from modelfs.errors import ModelfsError, RemoteUnavailable
from modelfs.repo.chunks import ChunkRecord
from modelfs.store import TABLES, LmdbStore, Store

# the store's meta key naming the remote a lazy store fetches its chunks from
LAZY_REMOTE_KEY = b"lazy_remote"


@runtime_checkable
class ChunkSource(Protocol):
    """Raw chunk records by key, from somewhere other than the local store."""

    name: str  # the remote's name, for messages

    def fetch(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Record bytes for each key it could get; raises RemoteUnavailable when it cannot ask.

        It may return more than was asked (e.g. the delta bases of what was asked, when its
        index knows them): the caller keeps every record it gets, after checking it.
        """
        ...


class SourceCounters:
    """What a source moved, counted at the client (benchmarks and tests compare these)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.chunks = 0
        self.bytes = 0

    def add(self, chunks: int, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.chunks += chunks
            self.bytes += nbytes


class DeferredSource:
    """A lazy store's source, opened on its first fetch, not when the store is opened.

    Commands that read no chunk (log, status, remote ...) then never touch the remote, and
    a remote that cannot be opened fails the read that needed it, not the whole command.
    """

    def __init__(self, name: str, opener: Callable[[], ChunkSource]) -> None:
        self.name = name
        self._opener = opener
        self._source: ChunkSource | None = None
        self._mu = threading.Lock()

    @property
    def opened(self) -> ChunkSource | None:
        return self._source

    def open(self) -> ChunkSource:
        """The source, opened now if it is not yet (the mount warms it up at start)."""
        with self._mu:
            if self._source is None:
                try:
                    self._source = self._opener()
                except RemoteUnavailable:
                    raise
                except ModelfsError as e:  # unknown remote, bad config: the next read tries again
                    raise RemoteUnavailable(f"remote {self.name} cannot be opened: {e}") from None
            return self._source

    def fetch(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.open().fetch(keys)

    def bases(self, key: bytes) -> tuple[bytes, ...]:
        """The opened source's `bases`, where it has one (see `chain_of`)."""
        return chain_of(self._source, key) if self._source is not None else ()

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if callable(close):
            close()


def chain_of(source: object, key: bytes) -> tuple[bytes, ...]:
    """A chunk's delta bases as the source's index knows them before fetching (a remote's
    pack index lists them), so a read asks for its whole chain in one fetch; () when the
    source cannot tell (then the chain is fetched one level per call)."""
    bases = getattr(source, "bases", None)
    return tuple(bases(key)) if callable(bases) else ()


class StoreChunkSource:
    """A `ChunkSource` reading another local store's chunks table (read-only)."""

    def __init__(self, store: Store | str | Path, name: str | None = None) -> None:
        if isinstance(store, (str, Path)):
            self.name = name or str(store)
            try:
                self.store: Store = LmdbStore(store, readonly=True)
            except Exception as e:  # a path that is gone is a remote that is unavailable
                raise RemoteUnavailable(f"remote store {self.name} cannot be opened: {e}") from e
        else:
            self.name = name or "store"
            self.store = store
        self.counters = SourceCounters()

    def fetch(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        with self.store.read() as txn:
            for k in keys:
                raw = txn.get("chunks", k)
                if raw is not None:
                    out[k] = bytes(raw)
        self.counters.add(len(out), sum(len(v) for v in out.values()))
        return out

    def bases(self, key: bytes) -> tuple[bytes, ...]:
        """A chunk's delta bases, from its record in the source store (read, not counted)."""
        with self.store.read() as txn:
            raw = txn.get("chunks", key)
            return () if raw is None else ChunkRecord.from_bytes(raw).base_keys

    def close(self) -> None:
        self.store.close()


def copy_metadata(src: Store, dst: Store, skip: tuple[str, ...] = ("chunks", "pending", "locs")) -> int:
    """Every record of `src` but its chunks (and uncommitted work) into `dst`, in one
    transaction: what a lazy clone from a local store holds before its first read."""
    n = 0
    with src.read() as rt, dst.write() as wt:
        for table in TABLES:
            if table in skip:
                continue
            for k, v in rt.items(table):
                wt.put(table, bytes(k), bytes(v))
                n += 1
    return n
