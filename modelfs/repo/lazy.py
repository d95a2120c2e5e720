"""Fetching a lazy store's missing chunk records from its `ChunkSource`, and keeping them.

The read path (`ChunkCache`) asks `ensure` for every chunk a read (or a read-ahead) will
decode: what the store lacks is fetched in one call, then the delta bases those records
name, one call per level of the chain, so a read costs as few round trips as its chain is
deep. Several threads may fetch at once; a key one of them is fetching is waited for, not
fetched twice.

Fetched records are held in memory, unverified, until the cache decodes them and checks
blake3(decoded) == key (`accepted`); only then does the writer thread keep them in the
store's chunks table, in batches, under the shared writer lock, so neither the reader nor
the mount's request loop ever waits for a write transaction. A record that fails its check
is dropped (`rejected`) and fetched anew by the next read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from modelfs.errors import ModelfsError, NotFound, RemoteStillUnavailable, RemoteUnavailable
from modelfs.repo.chunks import ChunkRecord
from modelfs.repo.chunksource import ChunkSource, chain_of
from modelfs.repo.locations import RecordLocations, chunk_exists
from modelfs.repo.writelock import WriterLock
from modelfs.store import Store

log = logging.getLogger(__name__)

KEY_LEN = 32
_UNVERIFIED_MAX = 256 << 20  # fetched records no decode has checked yet (read-ahead's)
_BATCH = 256  # records kept per write transaction
# a fetch that failed is not asked again for this long: the kernel retries a failed read page
# by page at once, and each retry would wait the remote's whole timeout again
FAIL_HOLD = 1.0


@dataclass
class FetchStats:
    """What the lazy path did, for `modelfs status`, tests and the benchmark."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    fetch_calls: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    chunks_kept: int = 0
    rejected: int = 0
    failures: int = 0

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_json(self) -> dict[str, int]:
        with self._lock:
            return {"fetch_calls": self.fetch_calls, "chunks_fetched": self.chunks_fetched,
                    "bytes_fetched": self.bytes_fetched, "chunks_kept": self.chunks_kept,
                    "rejected": self.rejected, "failures": self.failures}


def _bases(raw: bytes) -> list[bytes]:
    """The base keys a raw chunk record names."""
    return list(ChunkRecord.from_bytes(raw).base_keys)


class LazyFetcher:
    """Missing chunk records of one store, from one source; thread-safe."""

    def __init__(self, store: Store, source: ChunkSource, lock: WriterLock,
                 locations: RecordLocations | None = None) -> None:
        self.store = store
        self._locations = locations
        self.source = source
        self._lock = lock
        self._mu = threading.Lock()
        self._fetched: OrderedDict[bytes, bytes] = OrderedDict()  # unverified
        self._fetched_bytes = 0
        self._accepted: dict[bytes, bytes] = {}  # verified, not yet in the store
        self._inflight: dict[bytes, threading.Event] = {}
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._idle = threading.Condition(self._mu)
        self._unwritten = 0
        self._failed: dict[bytes, tuple[float, str]] = {}  # key -> (when, why) of a failed fetch
        self.stats = FetchStats()

    # -- the read path ---------------------------------------------------------------------
    def raw(self, key: bytes) -> tuple[bytes, bool] | None:
        """The record held in memory for `key` and whether it still needs its check, or None."""
        with self._mu:
            raw = self._accepted.get(key)
            if raw is not None:
                return raw, False
            raw = self._fetched.get(key)
            return None if raw is None else (raw, True)

    def fetch_one(self, key: bytes) -> tuple[bytes, bool] | None:
        """`key`'s record from memory or the source (None: it is in the store by now, kept by
        another thread meanwhile); NotFound when the source lacks it too."""
        self.ensure([key])
        got = self.raw(key)
        if got is None and not self._local(key):  # another thread's fetch of it failed while
            self.ensure([key])  # this one waited: ask again, for this reader's own answer
            got = self.raw(key)
        if got is None:
            if self._local(key):
                return None
            raise NotFound(f"chunk {key.hex()} is missing from the store and from remote "
                           f"{self.source.name}")
        return got

    def ensure(self, keys: Iterable[bytes]) -> None:
        """Fetch what the store lacks of `keys` and of their delta chains: in one call where
        the source's index knows the chains, else one call per level."""
        want = self._missing(self._with_chains(self._missing(dict.fromkeys(keys))))
        while want:
            self._held_failure(want)
            mine, theirs = self._claim(want)
            if mine:
                try:
                    got = self.source.fetch(mine)
                except RemoteUnavailable as e:
                    self._note_failure(mine, str(e))
                    raise
                except ModelfsError:
                    self.stats.add(failures=1)
                    raise
                finally:
                    self._release(mine, None)
                self._release([], got)
            for ev in theirs:
                ev.wait()
            nxt: list[bytes] = []
            for k in want:
                held = self.raw(k)
                if held is not None and held[1]:
                    try:
                        nxt += _bases(held[0])
                    except ModelfsError:  # a damaged record: its decode reports it
                        continue
            want = self._missing(dict.fromkeys(nxt))

    def accepted(self, key: bytes, raw: bytes) -> None:
        """`raw` decoded to bytes whose blake3 is `key`: keep it in the store."""
        with self._mu:
            if self._fetched.pop(key, None) is not None:
                self._fetched_bytes -= len(raw)
            if self.store.readonly:  # nowhere to keep it: the next miss fetches it again
                return
            if key in self._accepted:
                return
            self._accepted[key] = raw
            self._unwritten += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="modelfs-lazy-keep",
                                                daemon=True)
                self._writer.start()
        self._queue.put(key)

    def rejected(self, key: bytes) -> None:
        """A fetched record failed to decode or its check: forget it, so a retry fetches anew."""
        with self._mu:
            raw = self._fetched.pop(key, None)
            if raw is not None:
                self._fetched_bytes -= len(raw)
        self.stats.add(rejected=1)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted record is in the store (tests, close)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unwritten == 0, timeout)

    def close(self) -> None:
        """Keep what was accepted, then close the source (if it has a `close`)."""
        if self._writer is not None:
            self.flush(30)
            self._queue.put(None)
            self._writer.join(5)
            self._writer = None
        close = getattr(self.source, "close", None)
        if callable(close):
            close()

    # -- internals -------------------------------------------------------------------------
    def _note_failure(self, keys: list[bytes], why: str) -> None:
        self.stats.add(failures=1)
        now = time.monotonic()
        with self._mu:
            for k in keys:
                self._failed[k] = (now, why)

    def _held_failure(self, keys: list[bytes]) -> None:
        """Raise the recent failure of any of `keys` again, without asking the remote."""
        now = time.monotonic()
        with self._mu:
            for k in keys:
                hit = self._failed.get(k)
                if hit is None:
                    continue
                if now - hit[0] >= FAIL_HOLD:
                    del self._failed[k]
                    continue
                raise RemoteStillUnavailable(hit[1])

    def _with_chains(self, keys: list[bytes]) -> dict[bytes, None]:
        out = dict.fromkeys(keys)
        stack = list(keys)
        while stack:
            for b in chain_of(self.source, stack.pop()):
                if b not in out:
                    out[b] = None
                    stack.append(b)
        return out

    def _local(self, key: bytes) -> bool:
        with self.store.read() as txn:
            return chunk_exists(txn, key)

    def _missing(self, keys: Iterable[bytes]) -> list[bytes]:
        with self._mu:
            cand = [k for k in keys if k not in self._accepted and k not in self._fetched]
        if not cand:
            return []
        with self.store.read() as txn:
            return [k for k in cand if not chunk_exists(txn, k)]

    def _claim(self, keys: list[bytes]) -> tuple[list[bytes], list[threading.Event]]:
        mine: list[bytes] = []
        theirs: list[threading.Event] = []
        with self._mu:
            for k in keys:
                ev = self._inflight.get(k)
                if ev is not None:
                    theirs.append(ev)
                elif k not in self._fetched and k not in self._accepted:
                    self._inflight[k] = threading.Event()
                    mine.append(k)
        return mine, theirs

    def _release(self, keys: list[bytes], got: dict[bytes, bytes] | None) -> None:
        with self._mu:
            for k, raw in (got or {}).items():
                if len(k) != KEY_LEN or k in self._fetched or k in self._accepted:
                    continue
                self._fetched[k] = raw
                self._fetched_bytes += len(raw)
            while self._fetched_bytes > _UNVERIFIED_MAX and len(self._fetched) > 1:
                _, old = self._fetched.popitem(last=False)
                self._fetched_bytes -= len(old)
            for k in keys:
                ev = self._inflight.pop(k, None)
                if ev is not None:
                    ev.set()
        if got:
            self.stats.add(fetch_calls=1, chunks_fetched=len(got),
                           bytes_fetched=sum(len(v) for v in got.values()))

    def _write_loop(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            batch = [key]
            while len(batch) < _BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            with self._mu:
                items = [(k, self._accepted[k]) for k in batch if k in self._accepted]
            try:
                with self._lock.hold():
                    with self.store.write() as txn:
                        for k, raw in items:
                            txn.put("chunks", k, raw, overwrite=False)
                    if self._locations is not None:
                        self._locations.note(k for k, _ in items)
                self.stats.add(chunks_kept=len(items))
            except Exception as e:  # noqa: BLE001  keeping is a cache: a full disk costs refetches
                log.warning("could not keep %d fetched chunks in the store (%s); they will be "
                            "fetched again when needed", len(items), e)
            with self._idle:
                for k, _ in items:
                    self._accepted.pop(k, None)
                self._unwritten -= len(batch)
                self._idle.notify_all()

