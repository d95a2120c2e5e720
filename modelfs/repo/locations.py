"""Where each chunk record lies in the store's file, so reads page in exactly what they decode.

A cold read of a delta chunk needs its record and its bases' records. Found through LMDB
alone, each is paged in by a chain of synchronous faults (store/filemap.py). With the
location of every record and its base keys noted once, after the transaction that wrote it,
a read asks the kernel for all the records of a tensor and their base chains in one go, the
disk works on them in parallel, and the map needs no read-around at all (so a B-tree
lookup reads one page, not 8 MiB).

A location is a hint: a record on pages of its own never moves (records are immutable and
LMDB does not relocate a committed value; a small one, inside a B-tree leaf, does move and
gets no place), and if one were stale a read would only page in the wrong bytes: what it
decodes always comes through LMDB. Every chunk gets an entry (its length and bases at least),
so its keys also count the chunks without reading them. A store records that every record has a location
(meta ``locations``): only then is the map's read-around turned off, so an older store
reads as before until `modelfs gc` fills its locations in.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager

from modelfs.errors import ModelfsError
from modelfs.repo.chunks import ChunkRecord
from modelfs.store import ReadTxn, Store, WriteTxn

log = logging.getLogger(__name__)

TABLE = "locs"
LOCATIONS_KEY = b"locations"  # in meta: every chunk record has a location
_RECENT = 2.0  # seconds: pages asked for this recently are not asked for again
_ASKED_MAX = 8192
_OWN_PAGES = 4096  # records at least this long sit on pages of their own (LMDB: > ~2 KiB)
INLINE = (1 << 64) - 1  # offset of a record too small to have a fixed place (its bases still noted)
_HEAD = struct.Struct("<QIB")  # file offset, record length, number of bases
_KEY = 32


def encode(offset: int, length: int, bases: Iterable[bytes]) -> bytes:
    bs = list(bases)
    return _HEAD.pack(offset, length, len(bs)) + b"".join(bs)


def decode(raw: bytes | memoryview) -> tuple[int, int, tuple[bytes, ...]]:
    off, ln, nb = _HEAD.unpack_from(raw, 0)
    body = bytes(raw[_HEAD.size:_HEAD.size + nb * _KEY])
    return off, ln, tuple(body[i:i + _KEY] for i in range(0, len(body), _KEY))


def chunk_stat(txn: ReadTxn, key: bytes, located: bool = True) -> tuple[int, tuple[bytes, ...]] | None:
    """A stored chunk's record length and base keys, from its location when it has one (and
    ``located``): the record's pages are not touched (py-lmdb reads every page of a value it
    returns). A check of the store (fsck, gc) passes ``located=False``: the record itself."""
    raw = txn.get(TABLE, key) if located else None
    if raw is not None:
        _, length, bases = decode(raw)
        return length, bases
    rec = txn.get("chunks", key)
    if rec is None:
        return None
    return len(rec), ChunkRecord.from_bytes(rec).base_keys


def chunk_exists(txn: ReadTxn, key: bytes) -> bool:
    """Whether the store holds this chunk, without reading its record where it has a location
    (a location is written after its chunk and deleted with it)."""
    return txn.get(TABLE, key) is not None or txn.get("chunks", key) is not None


class RecordLocations:
    """Notes where records were written and pages them in, with their base chains, on demand."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known: dict[bytes, tuple[int, int, tuple[bytes, ...]] | None] = {}
        self._lock = threading.Lock()
        self._asked: dict[bytes, float] = {}  # key -> when its pages were last asked for
        self.complete = False  # set by `load_flag`: every record has a location
        self.pages_asked = 0  # records paged in through their location (for status and tests)

    def load_flag(self) -> bool:
        """Read the store's flag; when set, turn the map's read-around off."""
        with self._store.read() as txn:
            self.complete = txn.get("meta", LOCATIONS_KEY) is not None
        if self.complete:
            self._store.random_access(True)
        return self.complete

    @contextmanager
    def scanning(self) -> Iterator[None]:
        """Around a walk over every record (fsck, gc): the map reads ahead again meanwhile."""
        if self.complete:
            self._store.random_access(False)
        try:
            yield
        finally:
            if self.complete:
                self._store.random_access(True)

    def mark_complete(self, txn: WriteTxn) -> None:
        txn.put("meta", LOCATIONS_KEY, b"1")

    def note(self, keys: Iterable[bytes]) -> int:
        """After the transaction that wrote these chunk records committed: note where they lie."""
        keys = list(keys)
        if not keys or self._store.readonly:
            return 0
        found: dict[bytes, bytes] = {}
        with self._store.read(views=True) as txn:
            for k in keys:
                view = txn.get("chunks", k)
                if view is None:
                    continue
                # a small record lives in a B-tree leaf, which moves whenever a neighbour is
                # written: only records on pages of their own (LMDB's overflow pages) stay put
                off = self._store.offset_of(view) if len(view) >= _OWN_PAGES else None
                found[k] = encode(INLINE if off is None else off, len(view),
                                  ChunkRecord.from_bytes(view).base_keys)
        if not found:
            return 0
        try:
            with self._store.write() as wt:
                for k, v in found.items():
                    wt.put(TABLE, k, v)
        except ModelfsError as e:  # a hint: the records are stored, they only read slower
            log.warning("could not note where %d chunk records lie (%s)", len(found), e)
            return 0
        with self._lock:
            for k in found:
                self._known.pop(k, None)
        return len(found)

    def missing(self, txn: ReadTxn) -> list[bytes]:
        """Chunk keys without a location (an older store's), for `fill`."""
        return [bytes(k) for k in txn.keys("chunks") if txn.get(TABLE, bytes(k)) is None]

    def fill(self) -> int:
        """Note every chunk that has no location yet, then mark the store complete."""
        if self._store.readonly:
            return 0
        with self.scanning(), self._store.read() as txn:
            todo = self.missing(txn)
        n = sum(self.note(todo[i:i + 256]) for i in range(0, len(todo), 256))
        with self._store.write() as wt:
            self.mark_complete(wt)
        self.load_flag()
        return n

    def forget(self, txn: WriteTxn, key: bytes) -> None:
        """Drop a deleted chunk's location (in the transaction that deletes the chunk)."""
        txn.delete(TABLE, key)
        with self._lock:
            self._known.pop(key, None)

    def _lookup(self, keys: list[bytes]) -> dict[bytes, tuple[int, int, tuple[bytes, ...]]]:
        out = {}
        todo = []
        with self._lock:
            for k in keys:
                if k in self._known:
                    loc = self._known[k]
                    if loc is not None:
                        out[k] = loc
                else:
                    todo.append(k)
        if todo:
            got: dict[bytes, tuple[int, int, tuple[bytes, ...]] | None] = {}
            with self._store.read() as txn:
                for k in todo:
                    raw = txn.get(TABLE, k)
                    got[k] = None if raw is None else decode(raw)
            with self._lock:
                self._known.update(got)
            out.update((k, v) for k, v in got.items() if v is not None)
        return out

    def ready(self, key: bytes) -> None:
        """Just before `key`'s record is read: its chain asked for, its own pages mapped in."""
        self.page_in([key])
        loc = self._lookup([key]).get(key)
        if loc is not None and loc[0] != INLINE:
            self._store.map_in(loc[0], loc[1])

    def page_in(self, keys: Iterable[bytes], skip: Container[bytes] | None = None) -> int:
        """Ask the disk now for these records and their base chains (bar those in `skip`, and
        those asked for in the last `_RECENT` seconds: a read, its prefetch and each decode
        all ask for the same chain)."""
        now = time.monotonic()
        level = [k for k in keys if not skip or k not in skip]
        seen: set[bytes] = set()
        spans: list[tuple[int, int]] = []
        while level:
            level = [k for k in dict.fromkeys(level) if k not in seen]
            seen.update(level)
            locs = self._lookup(level)
            with self._lock:
                fresh = [k for k in locs if now - self._asked.get(k, -_RECENT) >= _RECENT]
                self._asked.update((k, now) for k in fresh)
                if len(self._asked) > _ASKED_MAX:
                    self._asked = {k: t for k, t in self._asked.items() if now - t < _RECENT}
            spans += [locs[k][:2] for k in fresh if locs[k][0] != INLINE]
            level = [b for _, _, bs in locs.values() for b in bs if not skip or b not in skip]
        if spans:
            spans.sort()
            self._store.will_need(spans)
            self.pages_asked += len(spans)
        return len(spans)
