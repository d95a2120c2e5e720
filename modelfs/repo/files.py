"""File records (a file as inline bytes and chunked tensors) and ranged reads over them."""

from __future__ import annotations

import bisect
import json
import logging
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from modelfs.dtypes import DTYPES, DType
from modelfs.errors import NotFound
from modelfs.lineage import FileEntry
from modelfs.repo.chunks import ChunkCache
from modelfs.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredInline:
    offset: int
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class StoredTensor:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    chunk_bytes: int  # every chunk but the last holds exactly this many bytes
    chunks: tuple[bytes, ...]

    def chunk_span(self, i: int) -> tuple[int, int]:
        """Byte range of chunk i inside the tensor."""
        start = i * self.chunk_bytes
        return start, min(start + self.chunk_bytes, self.nbytes)


StoredPart = StoredInline | StoredTensor


@dataclass(frozen=True, slots=True)
class FileRecord:
    format: str
    size: int
    key: bytes
    parts: tuple[StoredPart, ...]

    def tensors(self) -> Iterator[StoredTensor]:
        return (p for p in self.parts if isinstance(p, StoredTensor))

    def chunk_keys(self) -> set[bytes]:
        """The chunks its tensors list (not their delta bases)."""
        return {k for t in self.tensors() for k in t.chunks}

    def to_bytes(self) -> bytes:
        meta: list[dict[str, object]] = []
        blobs: list[bytes] = []
        for p in self.parts:
            if isinstance(p, StoredInline):
                meta.append({"inline": len(p.data)})
                blobs.append(p.data)
            else:
                meta.append({"name": p.name, "dtype": p.dtype.name, "shape": list(p.shape),
                             "nbytes": p.nbytes, "chunk_bytes": p.chunk_bytes,
                             "chunks": b"".join(p.chunks).hex()})
        head = json.dumps({"format": self.format, "size": self.size, "key": self.key.hex(),
                           "parts": meta}).encode()
        return struct.pack("<I", len(head)) + head + b"".join(blobs)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> FileRecord:
        raw = bytes(raw)
        (n,) = struct.unpack_from("<I", raw, 0)
        d = json.loads(raw[4:4 + n])
        pos = 4 + n
        offset = 0
        parts: list[StoredPart] = []
        for m in d["parts"]:
            if "inline" in m:
                ln = m["inline"]
                parts.append(StoredInline(offset, raw[pos:pos + ln]))
                pos += ln
                offset += ln
            else:
                keys = bytes.fromhex(m["chunks"])
                chunks = tuple(keys[i:i + 32] for i in range(0, len(keys), 32))
                parts.append(StoredTensor(m["name"], DTYPES[m["dtype"]], tuple(m["shape"]), offset,
                                          m["nbytes"], m["chunk_bytes"], chunks))
                offset += m["nbytes"]
        return cls(d["format"], d["size"], bytes.fromhex(d["key"]), tuple(parts))


class FileReader:
    """Ranged reads of one stored file that decode only the chunks the range touches."""

    def __init__(self, record: FileRecord, cache: ChunkCache) -> None:
        self.record = record
        self.size = record.size
        self._cache = cache
        self._starts = [p.offset for p in record.parts]

    def _pieces(self, offset: int, size: int) -> Iterator[tuple[StoredPart, int, int, int]]:
        """(part, chunk index or -1, start, end) pieces covering [offset, offset+size)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        pos = offset
        parts = self.record.parts
        while pos < end and i < len(parts):
            p = parts[i]
            p_end = p.offset + p.nbytes
            if p_end <= pos:
                i += 1
                continue
            if isinstance(p, StoredInline):
                yield p, -1, pos - p.offset, min(end, p_end) - p.offset
                pos = min(end, p_end)
            else:
                rel = pos - p.offset
                c = rel // p.chunk_bytes
                c_start, c_end = p.chunk_span(c)
                stop = min(end - p.offset, c_end)
                yield p, c, rel - c_start, stop - c_start
                pos = p.offset + stop
            if pos >= p_end:
                i += 1

    def chunk_spans(self, offset: int, size: int) -> list[tuple[int, int]]:
        """File-offset spans of the chunks a range touches, so callers can decode per chunk."""
        spans = []
        for p, c, _, _ in self._pieces(offset, size):
            if isinstance(p, StoredTensor):
                a, b = p.chunk_span(c)
                spans.append((p.offset + a, p.offset + b))
        return spans

    def tensor_end(self, offset: int) -> int | None:
        """Where the tensor holding byte `offset` ends; None for bytes outside any tensor."""
        if not 0 <= offset < self.size:
            return None
        p = self.record.parts[max(bisect.bisect_right(self._starts, offset) - 1, 0)]
        return p.offset + p.nbytes if isinstance(p, StoredTensor) else None

    def chunk_keys(self, offset: int, size: int) -> list[bytes]:
        return [p.chunks[c] for p, c, _, _ in self._pieces(offset, size) if isinstance(p, StoredTensor)]

    def read(self, offset: int, size: int) -> bytes:
        self._cache.ensure(self.chunk_keys(offset, size))  # one fetch / page-in for the read
        out = []
        for p, c, a, b in self._pieces(offset, size):
            if isinstance(p, StoredInline):
                out.append(p.data[a:b])
            else:
                out.append(self._cache.get(p.chunks[c])[a:b])
        return out[0] if len(out) == 1 else b"".join(out)

    def read_cached(self, offset: int, size: int) -> bytes | None:
        out = []
        for p, c, a, b in self._pieces(offset, size):
            if isinstance(p, StoredInline):
                out.append(p.data[a:b])
            else:
                data = self._cache.peek(p.chunks[c])
                if data is None:
                    return None
                out.append(data[a:b])
        return out[0] if len(out) == 1 else b"".join(out)

    def page_in(self, offset: int, size: int) -> None:
        """Start the disk on every record a range will decode, before its chunks are decoded."""
        try:
            self._cache.page_in(self.chunk_keys(offset, size))
        except Exception as e:  # noqa: BLE001  a hint: the read that needs the records reports errors
            log.warning("paging in %d bytes at %d failed: %s", size, offset, e)

    def prefetch(self, offset: int, size: int) -> None:
        keys = self.chunk_keys(offset, size)
        self._cache.ensure(keys)
        for key in keys:
            self._cache.get(key)

    def pieces(self) -> Iterator[tuple[bytes | None, bytes]]:
        """The whole file in order: (chunk key, b"") for a chunk, (None, data) for inline bytes."""
        for p in self.record.parts:
            if isinstance(p, StoredInline):
                yield None, p.data
            else:
                for k in p.chunks:
                    yield k, b""


class Files:
    """Stored files by key: their records, and their bytes through the shared chunk cache.

    The facade, maintenance and the ops all read files this one way.
    """

    def __init__(self, store: Store, cache: ChunkCache) -> None:
        self._store = store
        self._cache = cache

    def record(self, entry: FileEntry | bytes) -> FileRecord:
        key = entry.key if isinstance(entry, FileEntry) else entry
        with self._store.read() as txn:
            raw = txn.get("files", key)
        if raw is None:
            raise NotFound(f"file record {key.hex()} is missing from the store")
        return FileRecord.from_bytes(raw)

    def reader(self, record: FileRecord) -> FileReader:
        return FileReader(record, self._cache)

    def open(self, entry: FileEntry) -> FileReader:
        return self.reader(self.record(entry))

    def iterate(self, entry: FileEntry, pool: ThreadPoolExecutor | None = None,
                window: int = 8) -> Iterator[bytes]:
        """The file's bytes in order, decoding up to `window` chunks ahead in `pool`."""
        pieces = list(self.open(entry).pieces())
        cache = self._cache
        if pool is None:
            for key, data in pieces:
                yield data if key is None else cache.get(key)
            return
        futs: list[bytes | Future[bytes]] = []
        idx = 0
        lazy = cache.lazy is not None

        def fetch_then_get(keys: list[bytes], key: bytes) -> bytes:
            cache.ensure(keys)  # a lazy store: the window's chunks in one fetch
            return cache.get(key)

        def submit_upto(n: int) -> None:
            nonlocal idx
            batch = [k for k, _ in pieces[idx:idx + n - len(futs)] if k is not None]
            if not lazy:  # the window's records paged in at once; a lazy fetch does it in the pool
                cache.ensure(batch)
                batch = []
            while idx < len(pieces) and len(futs) < n:
                key, data = pieces[idx]
                if key is None:
                    futs.append(data)
                elif batch:
                    futs.append(pool.submit(fetch_then_get, batch, key))
                else:
                    futs.append(pool.submit(cache.get, key))
                idx += 1

        if lazy:  # the network wants fewer, larger requests: refill by half windows
            window = max(window, 32)
        submit_upto(window)
        while futs:
            f = futs.pop(0)
            if not lazy or len(futs) <= window // 2:
                submit_upto(window)
            yield f if isinstance(f, bytes) else f.result()
