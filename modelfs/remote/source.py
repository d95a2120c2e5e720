"""A lazy store's chunk source over a remote: ranged GETs of the chunks' bytes in their packs.

The pack indexes a lazy clone kept in the store say where each chunk lies; `fetch` groups the
asked keys by pack, merges neighbouring byte ranges into one ranged GET, runs several GETs
at once, and checks every record against the blake3 its index gives, so it never returns
bytes for another key (the repo checks the decoded chunk against its key too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from modelfs.errors import ModelfsError, RemoteUnavailable
from modelfs.remote.packs import PackIndex, Span, coalesce, cut, pack_key
from modelfs.remote.state import Holdings, Remote
from modelfs.remote.transport import Options
from modelfs.repo import LAZY_REMOTE_KEY, ChunkSource, Repo, SourceCounters, Transfer

log = logging.getLogger(__name__)


class RemoteChunkSource:
    """`ChunkSource` over one remote's packs, from the indexes kept in the local store."""

    def __init__(self, remote: Remote, indexes: dict[str, bytes], workers: int = 8,
                 gap: int = 256 << 10, repo: Repo | None = None, refresh_s: float = 10.0) -> None:
        self.name = remote.name
        self.remote = remote
        self._repo = repo
        self._refresh_s = refresh_s
        self._refreshed = -refresh_s
        self.counters = SourceCounters()
        self._gap = gap
        self._held = Holdings()
        for pack, raw in indexes.items():
            self._held.add(PackIndex.from_bytes(pack, raw))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelfs-fetch")
        self._lock = threading.Lock()

    def held(self) -> Holdings:
        """What the kept indexes say the remote holds."""
        return self._held

    def knows(self, key: bytes) -> bool:
        return key in self._held.chunks

    def bases(self, key: bytes) -> tuple[bytes, ...]:
        """A chunk's delta bases as its index lists them (fetch plans a whole version's chunks)."""
        e = self._held.chunks.get(key)
        return e.bases if e else ()

    def _get(self, span: Span) -> dict[bytes, bytes]:
        try:
            data = self.remote.store.get_range(pack_key(span.pack), span.start, span.end - span.start)
            got = cut(span, data, self.remote.where())
        except RemoteUnavailable:
            raise
        except ModelfsError as e:  # corrupted, refused, vanished: the reader gets EIO and this line
            raise RemoteUnavailable(str(e)) from None
        self.counters.add(len(got), len(data))
        return got

    def _refresh(self) -> None:
        """Asked for a chunk no kept index lists (pushed after the clone): read the remote's
        indexes anew (keeping them in the store), at most once every `refresh_s` seconds."""
        now = time.monotonic()
        with self._lock:
            if self._repo is None or now - self._refreshed < self._refresh_s:
                return
            self._refreshed = now
        try:
            held = self.remote.holdings(self._repo)
        except ModelfsError as e:
            raise RemoteUnavailable(f"{self.remote.where()}: cannot read its indexes: {e}") from None
        with self._lock:
            self._held = held

    def fetch(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        if any(k not in self._held.chunks for k in keys):
            self._refresh()
        entries = [self._held.chunks[k] for k in dict.fromkeys(keys) if k in self._held.chunks]
        if not entries:
            return {}
        spans = coalesce(entries, gap=self._gap)
        out: dict[bytes, bytes] = {}
        try:
            for part in self._pool.map(self._get, spans):
                out.update(part)
        except RemoteUnavailable as e:
            names = ", ".join(k.hex()[:16] for k in list(keys)[:4]) + (" ..." if len(keys) > 4 else "")
            raise RemoteUnavailable(f"chunk {names} from {self.remote.where()}: {e}") from None
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# a reader waits on these: a stalled server gives EIO in about 3 x 10 s, not the verbs' 4 x 30 s
READ_OPTIONS = Options(connect_timeout=3.0, read_timeout=10.0, attempts=3)


def open_chunk_source(repo: Repo, remote_name: str, options: Options | None = None) -> ChunkSource:
    """The chunk source of remote `remote_name` for `repo`, from the indexes the store keeps
    (a lazy clone or pull kept them; none kept: read them from the remote now)."""
    remote = Remote.of(repo, remote_name, options or READ_OPTIONS)
    indexes = Transfer(repo).cached_indexes(remote_name)
    if not indexes:
        remote.holdings(repo)
        indexes = Transfer(repo).cached_indexes(remote_name)
    return RemoteChunkSource(remote, indexes, repo=repo)


def remote_for_store(repo: Repo, options: Options | None = None) -> ChunkSource | None:
    """The chunk source a lazy store reads through (meta ``lazy_remote``), None for a full store."""
    with repo.read_txn() as txn:
        raw = txn.get("meta", LAZY_REMOTE_KEY)
    if raw is None:
        return None
    return open_chunk_source(repo, bytes(raw).decode(), options)
