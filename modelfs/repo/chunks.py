"""Chunk records and a thread-safe decoder with an LRU of decoded chunks.

A record is: codec id, dtype, chain depth, decoded length, base keys (with their dtypes),
then the payload. Keys are blake3 of the decoded bytes, so equal content is stored once
whatever codec won, and any decode can be checked against its key.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3

from modelfs.codecs import EncodeContext, get_codec
from modelfs.dtypes import DTYPES, DType
from modelfs.errors import CorruptData, ModelfsError, NotFound
from modelfs.store import ReadTxn, Store

if TYPE_CHECKING:  # both read ChunkRecord from here
    from modelfs.repo.chunksource import ChunkSource
    from modelfs.repo.lazy import LazyFetcher
    from modelfs.repo.locations import RecordLocations

KEY_LEN = 32
_VERSION = 1


def chunk_key(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    codec: str
    dtype: DType
    depth: int  # 0 for self-contained; 1 + max(base depths) for a delta
    length: int
    bases: tuple[tuple[bytes, DType], ...]
    payload: memoryview

    @property
    def base_keys(self) -> tuple[bytes, ...]:
        return tuple(k for k, _ in self.bases)

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<BB", _VERSION, len(self.codec)), self.codec.encode(),
                 struct.pack("<B", len(self.dtype.name)), self.dtype.name.encode(),
                 struct.pack("<HQB", self.depth, self.length, len(self.bases))]
        for key, dt in self.bases:
            parts += [key, struct.pack("<B", len(dt.name)), dt.name.encode()]
        parts.append(self.payload)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> ChunkRecord:
        mv = memoryview(raw)
        ver, n = struct.unpack_from("<BB", mv, 0)
        if ver != _VERSION:
            raise CorruptData(f"chunk record version {ver} unknown")
        pos = 2
        codec = bytes(mv[pos:pos + n]).decode()
        pos += n
        (n,) = struct.unpack_from("<B", mv, pos)
        dt = DTYPES[bytes(mv[pos + 1:pos + 1 + n]).decode()]
        pos += 1 + n
        depth, length, nb = struct.unpack_from("<HQB", mv, pos)
        pos += 11
        bases = []
        for _ in range(nb):
            key = bytes(mv[pos:pos + KEY_LEN])
            (n,) = struct.unpack_from("<B", mv, pos + KEY_LEN)
            bases.append((key, DTYPES[bytes(mv[pos + KEY_LEN + 1:pos + KEY_LEN + 1 + n]).decode()]))
            pos += KEY_LEN + 1 + n
        return cls(codec, dt, depth, length, tuple(bases), mv[pos:])


class Counters:
    """Monotonic counts of decode work, so tests and `status` can see what a read cost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.chunks_decoded = 0
        self.bytes_decoded = 0
        self.cache_hits = 0

    def add_decode(self, nbytes: int) -> None:
        with self._lock:
            self.chunks_decoded += 1
            self.bytes_decoded += nbytes

    def add_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1


class ChunkCache:
    """LRU of decoded chunks bounded by bytes; one decode per key even under concurrency."""

    def __init__(self, store: Store, max_bytes: int, counters: Counters, verify: bool = False) -> None:
        self._store = store
        self._max = max_bytes
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._inflight: dict[bytes, threading.Event] = {}
        self.counters = counters
        self.verify = verify
        self.lazy: LazyFetcher | None = None
        self.locations: RecordLocations | None = None  # set by the repo: pages records in ahead

    def attach(self, fetcher: LazyFetcher | None) -> None:
        """Fetch records missing from the store through `fetcher` (a lazy store's remote)."""
        old, self.lazy = self.lazy, fetcher
        if old is not None and old is not fetcher:
            old.close()

    @property
    def source(self) -> ChunkSource | None:
        return None if self.lazy is None else self.lazy.source

    def ensure(self, keys: list[bytes]) -> None:
        """Get ready to decode `keys`: what a lazy store lacks fetched in one batch, and the
        records (with their base chains) paged in from disk at once rather than fault by fault."""
        if not keys:
            return
        with self._lock:
            keys = [k for k in keys if k not in self._lru]
        if not keys:
            return
        if self.lazy is not None:
            self.lazy.ensure(keys)
        self.page_in(keys)

    def page_in(self, keys: list[bytes]) -> None:
        """Ask the disk for these records and their base chains now (those not decoded here)."""
        if self.locations is not None:
            self.locations.page_in(keys, skip=self._lru)

    def peek(self, key: bytes) -> bytes | None:
        with self._lock:
            data = self._lru.get(key)
            if data is not None:
                self._lru.move_to_end(key)
            return data

    def put(self, key: bytes, data: bytes) -> None:
        """Offer decoded bytes (e.g. of a chunk just imported: the next version's base)."""
        self._put(key, data)

    def _put(self, key: bytes, data: bytes) -> None:
        if len(data) > self._max:
            return
        with self._lock:
            if key in self._lru:
                return
            self._lru[key] = data
            self._size += len(data)
            while self._size > self._max:
                _, old = self._lru.popitem(last=False)
                self._size -= len(old)

    def _local(self, key: bytes, txn: ReadTxn | None) -> bytes | None:
        if self.locations is not None:
            self.locations.ready(key)
        if txn is not None:
            return txn.get("chunks", key)
        with self._store.read() as t:
            raw = t.get("chunks", key)
            return bytes(raw) if raw is not None else None

    def _raw(self, key: bytes, txn: ReadTxn | None = None) -> tuple[bytes, bool]:
        """A chunk's record bytes, and whether they came from the remote and wait for their check."""
        raw = self._local(key, txn)
        if raw is not None:
            return raw, False
        return self._from_remote(key)

    def _from_remote(self, key: bytes) -> tuple[bytes, bool]:
        """A record the store lacks, from the lazy store's remote (see `_raw`)."""
        lz = self.lazy
        if lz is None:
            raise NotFound(f"chunk {key.hex()} is missing from the store")
        got = lz.raw(key) or lz.fetch_one(key)
        if got is None:  # kept in the store meanwhile
            raw = self._local(key, None)
            if raw is None:
                raise NotFound(f"chunk {key.hex()} is missing from the store")
            return raw, False
        return got

    def record(self, key: bytes, txn: ReadTxn | None = None) -> ChunkRecord:
        return ChunkRecord.from_bytes(self._raw(key, txn)[0])

    def get(self, key: bytes) -> bytes:
        """The decoded bytes of a chunk (blocking: may decode it and its bases)."""
        while True:
            data = self.peek(key)
            if data is not None:
                self.counters.add_hit()
                return data
            with self._lock:
                ev = self._inflight.get(key)
                if ev is None:
                    ev = self._inflight[key] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                ev.wait()
                continue
            try:
                data = self.decode(key)
                self._put(key, data)
                return data
            finally:
                with self._lock:
                    del self._inflight[key]
                ev.set()

    def decode(self, key: bytes, verify: bool | None = None) -> bytes:
        verify = self.verify if verify is None else verify
        if self.locations is not None:  # whoever reads, the disk never serves it a page a time
            self.locations.ready(key)
        # In place: the record is read from the store's own pages (no copy of MBs of
        # payload), so the transaction stays open until the decoded bytes exist.
        with self._store.read(views=True) as txn:
            view = txn.get("chunks", key)
            if view is not None:
                return self._decode(key, view, verify)
        raw, fetched = self._from_remote(key)
        if not fetched:
            return self._decode(key, raw, verify)
        lz = self.lazy
        assert lz is not None
        try:  # a fetched record is always checked, and kept only once it passed
            data = self._decode(key, raw, True)
        except CorruptData as e:
            lz.rejected(key)
            raise CorruptData(f"{e} (fetched from remote {lz.source.name}; nothing was kept, "
                              "the next read fetches it again)") from e
        lz.accepted(key, raw)
        return data

    def _decode(self, key: bytes, raw: bytes | memoryview, verify: bool) -> bytes:
        try:
            rec = ChunkRecord.from_bytes(raw)
        except ModelfsError:
            raise
        except Exception as e:  # a truncated record fails inside struct or the dtype table
            raise CorruptData(f"chunk {key.hex()} has a damaged record ({type(e).__name__}: {e})") from e
        self.ensure([bk for bk, _ in rec.bases])
        bases = [self.get(bk) for bk, _ in rec.bases]
        ctx = EncodeContext(rec.dtype, bases, [dt for _, dt in rec.bases])
        try:
            data = get_codec(rec.codec).decode(rec.payload, rec.length, ctx)
        except ModelfsError:
            raise
        except Exception as e:  # damaged payloads fail inside zstd, struct or numpy
            raise CorruptData(f"chunk {key.hex()} cannot be decoded ({type(e).__name__}: {e}): "
                              "store damaged, run `modelfs fsck`") from e
        if type(data) is not bytes:  # never keep a view of the record: it may be the store's page
            data = bytes(data)
        if len(data) != rec.length:
            raise CorruptData(f"chunk {key.hex()} decodes to {len(data)} bytes, expected {rec.length}")
        if verify and chunk_key(data) != key:
            raise CorruptData(f"chunk {key.hex()} does not match its blake3 (store damaged)")
        self.counters.add_decode(len(data))
        return data
