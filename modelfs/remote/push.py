"""`modelfs push`: upload what the remote lacks, in packs, then move its refs.

Order is what keeps the remote whole: chunk packs first (each pack, then its index), then
the metadata pack (versions, file records, sketches), then the refs, each by a conditional
write. A ref therefore never names a version whose objects are not all there, and a push
killed at any point leaves only packs no ref reaches yet: the next push reads the indexes,
finds them, and uploads only the rest (gc removes packs a push abandoned for good).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelfs.errors import Conflict, InvalidName, NotFound
from modelfs.lineage import Version
from modelfs.remote.packs import (
    KIND_CHUNKS,
    KIND_META,
    Record,
    batches,
    build_pack,
    index_key,
    pack_key,
    pack_meta,
)
from modelfs.remote.state import Holdings, Ref, Remote
from modelfs.repo import ChunkRecord, Repo, Transfer, file_record_chunks

log = logging.getLogger(__name__)

PACK_BYTES = 48 << 20  # a pack's target size: tens of MB, so a push is tens of requests


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    upto: int | None  # push versions 1..upto (None: all)


def parse_targets(repo: Repo, given: Iterable[str]) -> list[Target]:
    """`MODEL` or `MODEL@N` (a model up to that version); none given: every model."""
    out = []
    for t in given:
        name, _, num = t.partition("@")
        repo.model(name)  # NotFound for an unknown model
        upto = None
        if num:
            upto = repo.resolve(t).number
        out.append(Target(name, upto))
    return out or [Target(m.name, None) for m in repo.models()]


def is_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return len(a) <= len(b) and b[:len(a)] == a


def _local_ref(repo: Repo, model: str, upto: int | None) -> tuple[Ref, list[Version]]:
    versions = repo.versions(model)
    if upto is not None:
        versions = versions[:upto]
    if not versions:
        raise NotFound(f"model {model!r} has no versions to push")
    head = repo.model(model).head
    ids = tuple(v.id for v in versions)
    return Ref(model, head if head in ids else ids[-1], ids), versions


class Pusher:
    """One push: plans against the remote's refs and indexes, uploads, moves the refs."""

    def __init__(self, repo: Repo, remote: Remote, pack_bytes: int = PACK_BYTES, workers: int = 4,
                 progress: Callable[[int], None] | None = None,
                 on_total: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.on_total = on_total or (lambda n: None)
        self.remote = remote
        self.transfer = Transfer(repo)
        self.pack_bytes = pack_bytes
        self.workers = workers
        self.progress = progress or (lambda n: None)
        self.total = 0  # bytes the plan will upload, known after `plan`

    def run(self, targets: list[Target]) -> dict[str, Any]:
        self.remote.check(create=True)
        held = self.remote.holdings(self.repo)
        refs = self.remote.refs()
        upto = {t.model: t.upto for t in targets}
        models = self.transfer.model_closure(upto)
        plans: list[tuple[Ref, Ref | None]] = []
        versions: list[Version] = []
        for m in models:
            new, vs = _local_ref(self.repo, m, upto.get(m))
            old = refs.get(m)
            if old is not None and not is_prefix(old.versions, new.versions):
                raise Conflict(f"remote has newer versions of {m}; pull first")
            plans.append((new, old))
            # every version the ref does not reach yet is walked, even one a killed push left on
            # the remote: its chunk packs may be gone (gc) while its metadata pack is not
            versions += [v for v in vs if old is None or v.id not in old.versions]
        need = self._chunks_to_send(versions, held)
        meta = self._meta_records(versions, held)
        chunk_bytes = self.repo.stored_size_of(set(need))
        self.total = chunk_bytes + sum(len(r.value) for r in meta)
        self.on_total(self.total)
        relied = self._relied_on(plans, held)
        packs = self._upload(KIND_CHUNKS, self._records(need)) + self._upload(KIND_META, meta)
        self._still_there(relied)
        moved = []
        for new, old in plans:
            if old is not None and old.versions == new.versions and old.head == new.head:
                continue
            self.remote.move_ref(new, old)
            moved.append(new.model)
        return {"models": models, "refs_moved": moved, "versions": len(versions),
                "chunks": len(need), "chunk_bytes": chunk_bytes,
                "packs": packs, **self.remote.summary()}

    def _chunks_to_send(self, versions: list[Version], held: Holdings) -> list[bytes]:
        """The chunks these versions reach that the remote lacks, in file order (so a
        sequential read of a file finds its chunks side by side in a pack)."""
        if not versions:
            return []
        there = {k: e.bases for k, e in held.chunks.items()}
        need, missing = self.transfer.chunks_to_send(versions, there)
        if missing:
            raise NotFound(f"this store lacks what it would push ({missing[0]}): "
                           "fetch it first (modelfs fetch) or run fsck")
        return need

    def _relied_on(self, plans: list[tuple[Ref, Ref | None]], held: Holdings) -> set[str]:
        """Packs already on the remote that the refs this push moves will reach and the refs
        there now may not (left by a killed push): a gc could take them while we upload."""
        fresh = [vid for new, old in plans for vid in new.versions if old is None or vid not in old.versions]
        if not fresh:
            return set()
        versions = [self.repo.version(vid) for vid in fresh]
        files = self.transfer.file_records(versions)
        keys = {k for raw in files.values() for k in file_record_chunks(raw)}
        packs = {held.chunks[k].pack for k in held.chunk_closure(keys) if k in held.chunks}
        wanted = [("versions", vid.encode()) for vid in fresh]
        wanted += [(t, k) for f in files for t, k in (("files", f), ("sketch", b"f" + f))]
        return packs | {held.meta[w].pack for w in wanted if w in held.meta}

    def _still_there(self, packs: set[str]) -> None:
        """Refuse to move a ref onto packs a concurrent gc removed (one listing)."""
        if not packs:
            return
        listed = {o.key for o in self.remote.store.list("packs/")}
        gone = sorted(p for p in packs if pack_key(p) not in listed or index_key(p) not in listed)
        if gone:
            raise Conflict(f"{self.remote.where()}: pack {gone[0]} this push counted on was removed while "
                           "it ran (a gc?); nothing was moved: push again")

    def _records(self, keys: list[bytes]) -> Iterator[Record]:
        for i in range(0, len(keys), 256):
            raws = self.transfer.chunk_records(keys[i:i + 256])
            for k in keys[i:i + 256]:
                raw = raws[k]
                yield Record("chunks", k, raw, ChunkRecord.from_bytes(raw).base_keys)

    def _meta_records(self, versions: list[Version], held: Holdings) -> list[Record]:
        files = self.transfer.file_records(versions)
        sketch = self.transfer.sketch_records(files)
        out = [Record("files", k, pack_meta(v)) for k, v in files.items() if ("files", k) not in held.meta]
        out += [Record("sketch", k, pack_meta(v)) for k, v in sketch.items() if ("sketch", k) not in held.meta]
        out += [Record("versions", v.id.encode(), pack_meta(v.to_bytes())) for v in versions
                if ("versions", v.id.encode()) not in held.meta]
        return out

    def _upload(self, kind: str, records: Iterable[Record]) -> int:
        """Packs of `records`, each uploaded then indexed, `workers` at once (so at most that
        many packs are in memory); how many packs."""

        def one(batch: list[Record]) -> None:
            data, idx = build_pack(kind, batch)
            self.remote.store.put(pack_key(idx.pack), data)
            raw = idx.to_bytes()
            self.remote.store.put(index_key(idx.pack), raw)  # after: an index means a whole pack
            self.transfer.cache_indexes(self.remote.name, {idx.pack: raw})
            self.progress(len(data))

        n = 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            inflight: list[Future[None]] = []
            for batch in batches(records, self.pack_bytes):
                if len(inflight) >= self.workers:
                    inflight.pop(0).result()
                inflight.append(pool.submit(one, batch))
                n += 1
            for f in inflight:
                f.result()
        return n


def push(repo: Repo, remote: Remote, targets: Iterable[str] = (), **kw: Any) -> dict[str, Any]:
    """Push these models (or `MODEL@N` refs; none: every model) and what they descend from."""
    given = list(targets)
    for t in given:
        if not t:
            raise InvalidName("empty model name")
    return Pusher(repo, remote, **kw).run(parse_targets(repo, given))
