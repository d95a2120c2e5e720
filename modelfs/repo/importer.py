"""Storing files: parse, cut tensors into chunks, delta-code them against parent tensors.

Chunks are hashed and encoded in a thread pool (numpy, zstd and blake3 release the GIL),
and written by the calling thread, since an LMDB write transaction belongs to one thread.
A chunk already in the store costs nothing. Records written before a crash but not reached
by any version are harmless garbage that `gc` removes; a version is recorded in one final
transaction, so an import is all-or-nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import blake3

from modelfs.codecs import EncodeContext, choose_encoding, get_codec, good_enough
from modelfs.dtypes import DType
from modelfs.errors import NotFound
from modelfs.formats import InlinePart, TensorPart, parse_file
from modelfs.lineage import FileEntry
from modelfs.repo.chunks import ChunkCache, ChunkRecord, chunk_key
from modelfs.repo.files import FileRecord, StoredInline, StoredTensor
from modelfs.repo.locations import chunk_exists
from modelfs.repo.sketches import TABLE as SKETCH_TABLE
from modelfs.repo.sketches import encode as encode_sketch
from modelfs.repo.sketches import file_key as sketch_key
from modelfs.repo.sketches import name_suffixes, sketch_parts
from modelfs.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
# (file path, tensor name, chunk index) -> hints, each with .codec (an id), .bases (chunk keys)
# and .hint (handed to the codec as EncodeContext.hint): what a merge or a LoRA import knows.
ChunkHints = Callable[[str, str, int], Sequence[Any]]


class BaseChunk(NamedTuple):
    """A chunk offered as a delta base: its key, element type and chain depth."""

    key: bytes
    dtype: DType
    depth: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to store a chunk: a codec, the base chunks it decodes against, the payload."""

    codec: str
    bases: tuple[bytes, ...]  # base chunk keys, in the codec's order
    base_dtypes: tuple[DType, ...]
    depth: int  # chain depth the chunk gets (0: self-contained)
    payload: bytes

    def record(self, dtype: DType, length: int) -> ChunkRecord:
        return ChunkRecord(self.codec, dtype, self.depth, length,
                           tuple(zip(self.bases, self.base_dtypes, strict=True)), memoryview(self.payload))


@dataclass(frozen=True, slots=True)
class StoreSettings:
    chunk_elems: int = 1 << 19  # elements per chunk: 2 MiB of fp32, the same elements in fp16
    blob_chunk_bytes: int = 1 << 21
    max_chain: int = 8  # a self-contained chunk at least every this many delta levels


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """A read-only view of a whole file without reading it into memory."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mv = memoryview(mm)
        try:
            yield mv
        finally:
            mv.release()
            _close_map(mm)


def _close_map(mm: mmap.mmap) -> None:
    """Close a map whose slices a worker may still hold for a moment (a finished future's
    work item); failing here would hide the error that is on its way out. A map that is
    still exported after a collection is closed when its last slice goes."""
    try:
        mm.close()
    except BufferError:
        gc.collect()
        with contextlib.suppress(BufferError):
            mm.close()


def chunk_bytes_for(part: TensorPart, settings: StoreSettings) -> int:
    """Bytes per chunk of a tensor part: a fixed element count, or fixed bytes for blobs."""
    if part.name == "":
        return settings.blob_chunk_bytes
    return settings.chunk_elems * part.dtype.itemsize


def chunk_keys_of(path: str, src: Path, settings: StoreSettings) -> set[bytes]:
    """The chunk keys a file would be stored under (hashing only: nothing is encoded)."""
    keys: set[bytes] = set()
    with mapped(src) as mv:
        layout, _ = parse_file(path, mv)
        for part in layout.parts:
            if isinstance(part, TensorPart):
                cb = chunk_bytes_for(part, settings)
                for start in range(0, part.nbytes, cb):
                    keys.add(chunk_key(mv[part.offset + start:part.offset + min(start + cb, part.nbytes)]))
    return keys


@dataclass
class ParentTensors:
    """One parent version's tensors, found by name, by a dotted suffix (renamed heads), by path."""

    by_name: dict[str, StoredTensor] = field(default_factory=dict)
    by_suffix: dict[str, StoredTensor | None] = field(default_factory=dict)
    blobs: dict[str, StoredTensor] = field(default_factory=dict)

    def add(self, path: str, rec: FileRecord) -> None:
        for t in rec.tensors():
            if t.name == "":
                self.blobs[path] = t
                continue
            self.by_name[t.name] = t
            for s in name_suffixes(t.name):
                self.by_suffix[s] = None if s in self.by_suffix else t  # ambiguous -> None

    def match(self, path: str, part: TensorPart) -> StoredTensor | None:
        if part.name == "":
            return self.blobs.get(path)
        numel = math.prod(part.shape)
        for s in name_suffixes(part.name):
            t = self.by_name.get(s) or self.by_suffix.get(s)
            if t is not None and math.prod(t.shape) == numel:
                return t
        return None


class Importer:
    def __init__(self, store: Store, cache: ChunkCache, settings: StoreSettings,
                 workers: int | None = None, hints: ChunkHints | None = None) -> None:
        self.hints = hints
        self.store = store
        self.cache = cache
        self.settings = settings
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.warnings: list[str] = []
        self._seen: set[bytes] = set()
        # One thread owns every write transaction, so commits (fsync) overlap with encoding.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelfs-writer")
        self._pending_write: Future[None] | None = None
        self._batch: list[tuple[str, bytes, bytes]] = []  # (table, key, record)
        self._batch_bytes = 0

    # -- per chunk work (worker threads) ----------------------------------------------
    def _root(self, key: bytes) -> BaseChunk | None:
        """The self-contained chunk at the end of a chunk's chain of first bases."""
        rec = self.cache.record(key)
        while rec.depth > 0 and rec.bases:
            key = rec.bases[0][0]
            rec = self.cache.record(key)
        return BaseChunk(key, rec.dtype, 0) if rec.depth == 0 else None

    def _base_sets(self, bases: list[tuple[StoredTensor, int]], dt: DType
                   ) -> tuple[list[tuple[list[bytes], list[DType]]], list[list[bytes]], list[int]]:
        """Candidate base sets with the depth each gives: an average of two parents first, then
        each parent alone, then (for a parent that is itself a delta) its chain's root, which
        keeps reads of deep lineages flat at a small cost in size."""
        usable: list[BaseChunk] = []
        roots: list[BaseChunk] = []
        for t, i in bases:
            key = t.chunks[i]
            depth = self.cache.record(key).depth
            if depth + 1 <= self.settings.max_chain:
                usable.append(BaseChunk(key, t.dtype, depth))
            if depth > 0:
                root = self._root(key)
                if root is not None and all(root.key != r.key for r in roots):
                    roots.append(root)
        sets: list[list[BaseChunk]] = []
        same = [u for u in usable if u.dtype.name == dt.name]
        if len(same) >= 2 and same[0].key != same[1].key:
            sets.append(same[:2])
        sets += [[u] for u in usable + roots]
        return ([([self.cache.get(b.key) for b in s], [b.dtype for b in s]) for s in sets],
                [[b.key for b in s] for s in sets],
                [1 + max(b.depth for b in s) for s in sets])

    def _encode_hinted(self, data: bytes, dt: DType, h: Any) -> Candidate | None:
        """A hint's codec on the hint's base chunks, or None where it does not apply."""
        try:
            recs = [self.cache.record(k) for k in h.bases]
        except NotFound:
            return None
        depth = 1 + max((r.depth for r in recs), default=-1)
        if depth > self.settings.max_chain:
            return None
        ctx = EncodeContext(dt, [self.cache.get(k) for k in h.bases], [r.dtype for r in recs], h.hint)
        codec = get_codec(h.codec)
        payload = codec.encode(data, ctx) if codec.applies(ctx) else None
        if payload is None:
            return None
        return Candidate(h.codec, tuple(h.bases), tuple(r.dtype for r in recs), depth, payload)

    def _encode_chunk(self, data: memoryview, dt: DType, bases: list[tuple[StoredTensor, int]],
                      hints: Sequence[Any] = ()) -> tuple[bytes, bytes | None]:
        key = chunk_key(data)
        with self.store.read() as txn:
            if chunk_exists(txn, key):
                return key, None
        base_sets, base_keys, depths = self._base_sets(bases, dt) if bases else ([], [], [])
        raw = bytes(data)
        self.cache.put(key, raw)  # a child imported next finds its base decoded already
        hinted = [c for c in (self._encode_hinted(raw, dt, h) for h in hints) if c is not None]
        best = min(hinted, key=lambda c: len(c.payload)) if hinted else None
        if best is None or not good_enough(len(best.payload), len(raw)):
            enc = choose_encoding(raw, dt, base_sets, depths)
            chosen = (Candidate(enc.codec_id, tuple(base_keys[enc.base_set]), tuple(base_sets[enc.base_set][1]),
                                depths[enc.base_set], enc.payload)
                      if enc.base_set >= 0 else Candidate(enc.codec_id, (), (), 0, enc.payload))
            if best is None or len(chosen.payload) <= len(best.payload):
                best = chosen
        # else: the hint reproduces the chunk, nothing else can usefully beat it
        return key, best.record(dt, len(data)).to_bytes()

    # -- per file ------------------------------------------------------------------------
    def _chunk_jobs(self, path: str, mv: memoryview, layout_parts: Iterable[InlinePart | TensorPart],
                    parents: list[ParentTensors]
                    ) -> Iterator[tuple[int, memoryview, DType, list[tuple[StoredTensor, int]], Sequence[Any]]]:
        """(part index, data, dtype, bases, hints) for every chunk of every tensor part."""
        for pi, part in enumerate(layout_parts):
            if isinstance(part, InlinePart):
                continue
            cb = self._chunk_bytes(part)
            matches = [m for m in (p.match(path, part) for p in parents) if m is not None]
            for ci, start in enumerate(range(0, part.nbytes, cb)):
                end = min(start + cb, part.nbytes)
                bases = []
                for m in matches:
                    if (m.chunk_bytes // m.dtype.itemsize == cb // part.dtype.itemsize
                            and ci < len(m.chunks)
                            and (m.chunk_span(ci)[1] - m.chunk_span(ci)[0]) // m.dtype.itemsize
                            == (end - start) // part.dtype.itemsize):
                        bases.append((m, ci))
                hints = self.hints(path, part.name, ci) if self.hints is not None else ()
                yield pi, mv[part.offset + start:part.offset + end], part.dtype, bases, hints

    def _chunk_bytes(self, part: TensorPart) -> int:
        return chunk_bytes_for(part, self.settings)

    def store_file(self, path: str, src: Path, parents: list[ParentTensors],
                   pool: ThreadPoolExecutor, progress: Progress | None = None) -> tuple[FileEntry, FileRecord]:
        """Store one file's chunks; return its entry and record (written by `commit`)."""
        mode = os.stat(src).st_mode & 0o777
        with mapped(src) as mv:
            rec = self._store_buffer(path, mv, parents, pool, progress)
        return FileEntry(rec.key, rec.size, rec.format, mode), rec

    def _store_buffer(self, path: str, mv: memoryview, parents: list[ParentTensors],
                      pool: ThreadPoolExecutor, progress: Progress | None) -> FileRecord:
        fkey = blake3.blake3(mv, max_threads=blake3.blake3.AUTO).digest()
        with self.store.read() as txn:
            raw = txn.get("files", fkey)
            sketched = txn.get(SKETCH_TABLE, sketch_key(fkey)) is not None
        if raw is not None:
            if not sketched:  # stored before sketches existed: parent inference wants one
                self._queue_sketch(fkey, mv, parse_file(path, mv)[0].parts)
            if progress:
                progress(len(mv))
            return FileRecord.from_bytes(raw)
        layout, warning = parse_file(path, mv)
        if not sketched:
            self._queue_sketch(fkey, mv, layout.parts)
        if warning:
            log.warning(warning)
            self.warnings.append(warning)
        keys: dict[int, list[bytes]] = {i: [] for i in range(len(layout.parts))}
        window: deque[tuple[int, Future[tuple[bytes, bytes | None]], int]] = deque()

        def drain(limit: int) -> None:
            while len(window) > limit:
                pi, fut, n = window.popleft()
                key, rec = fut.result()
                keys[pi].append(key)
                if rec is not None and key not in self._seen:
                    self._seen.add(key)
                    self._batch.append(("chunks", key, rec))
                    self._batch_bytes += len(rec)
                if self._batch_bytes >= 32 << 20:
                    self._flush()
                if progress:
                    progress(n)

        for pi, data, dt, bases, hints in self._chunk_jobs(path, mv, layout.parts, parents):
            window.append((pi, pool.submit(self._encode_chunk, data, dt, bases, hints), len(data)))
            drain(self.workers * 3)
        drain(0)
        inline = sum(len(p.data) for p in layout.parts if isinstance(p, InlinePart))
        if progress and inline:
            progress(inline)
        parts: list[StoredInline | StoredTensor] = []
        for i, p in enumerate(layout.parts):
            if isinstance(p, InlinePart):
                parts.append(StoredInline(self._offset(layout.parts, i), p.data))
            else:
                parts.append(StoredTensor(p.name, p.dtype, p.shape, p.offset, p.nbytes,
                                          self._chunk_bytes(p), tuple(keys[i])))
        return FileRecord(layout.format, len(mv), fkey, tuple(parts))

    @staticmethod
    def _offset(parts: tuple[InlinePart | TensorPart, ...], i: int) -> int:
        return sum(len(p.data) if isinstance(p, InlinePart) else p.nbytes for p in parts[:i])

    def _flush(self) -> None:
        """Hand the batch to the writer thread; at most one batch is in flight (bounded memory).

        Batches span files, so the many small files of a checkpoint share one transaction.
        """
        if not self._batch:
            return
        self.wait_written()
        items, self._batch, self._batch_bytes = self._batch, [], 0
        self._pending_write = self._writer.submit(self._write, items)

    def _write(self, items: list[tuple[str, bytes, bytes]]) -> None:
        with self.store.write() as txn:
            for table, key, rec in items:
                txn.put(table, key, rec, overwrite=False)
        if self.cache.locations is not None:
            self.cache.locations.note(key for table, key, _ in items if table == "chunks")

    def _queue_sketch(self, fkey: bytes, mv: memoryview, parts: Iterable[InlinePart | TensorPart]) -> None:
        """The file's tensor sketch (repo/sketches.py), written with its chunks, so parent
        inference later compares weights without decoding this file's chunks."""
        tensors = sketch_parts(mv, parts)
        if tensors:
            rec = encode_sketch(tensors)
            self._batch.append((SKETCH_TABLE, sketch_key(fkey), rec))
            self._batch_bytes += len(rec)

    def wait_written(self) -> None:
        """Block until every chunk handed over is committed (before a version may reference it)."""
        if self._pending_write is not None:
            fut, self._pending_write = self._pending_write, None
            fut.result()

    def close(self) -> None:
        """Commit every chunk handed over; a version may reference them only after this."""
        self._flush()
        self.wait_written()
        self._writer.shutdown()
