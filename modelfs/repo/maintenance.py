"""Space accounting (du), integrity checks (fsck) and garbage collection (gc)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import blake3

from modelfs.errors import ModelfsError
from modelfs.lineage import FileEntry, LineageGraph
from modelfs.repo.chunks import ChunkCache, chunk_key
from modelfs.repo.chunksource import LAZY_REMOTE_KEY
from modelfs.repo.drafts import Drafts
from modelfs.repo.files import Files
from modelfs.repo.reachability import Reachability
from modelfs.repo.sketches import TABLE as SKETCH_TABLE
from modelfs.repo.sketches import file_key as sketch_file_key
from modelfs.repo.writelock import WriterLock
from modelfs.store import Store


@dataclass
class FsckReport:
    errors: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    files_checked: int = 0
    versions_checked: int = 0
    unreferenced_chunks: int = 0
    unreferenced_files: int = 0
    # a lazy store: chunks (and the files needing them) its remote holds, not fetched yet;
    # not errors, and not checked here (each is checked against its blake3 when fetched)
    lazy_remote: str | None = None
    not_fetched_chunks: int = 0
    not_fetched_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "chunks_checked": self.chunks_checked,
                "files_checked": self.files_checked, "versions_checked": self.versions_checked,
                "unreferenced_chunks": self.unreferenced_chunks,
                "unreferenced_files": self.unreferenced_files, "lazy_remote": self.lazy_remote,
                "not_fetched_chunks": self.not_fetched_chunks,
                "not_fetched_files": self.not_fetched_files}


class Maintenance:
    """du, fsck and gc over one reachability walk of every version and every draft.

    Built by the facade with what it reads and locks through, never the facade itself.
    """

    def __init__(self, *, store: Store, graph: LineageGraph, cache: ChunkCache, files: Files,
                 drafts: Drafts, lock: WriterLock) -> None:
        self._store = store
        self._graph = graph
        self._cache = cache
        self._files = files
        self._drafts = drafts
        self._lock = lock

    def _scan(self) -> AbstractContextManager[None]:
        """Around a walk over every chunk record: py-lmdb reads each whole, so read ahead."""
        locs = self._cache.locations
        return locs.scanning() if locs is not None else nullcontext()

    # -- reachability ------------------------------------------------------------------------
    def _lazy_remote(self) -> str | None:
        with self._store.read() as txn:
            raw = txn.get("meta", LAZY_REMOTE_KEY)
        return None if raw is None else bytes(raw).decode()

    def _reachable(self) -> Reachability:
        """What versions and drafts reach (chunk bases included), and their dangling refs.

        On a lazy store a chunk not here is not dangling: its remote holds it. Every reached
        record is read, so the map reads ahead meanwhile.
        """
        lazy = self._lazy_remote() is not None
        with self._scan(), self._store.read() as txn:
            reach = Reachability(txn, lazy=lazy)
            for v in self._graph.all_versions(txn):
                reach.add(v.ref, v.files)
            for ref, entries in self._drafts.manifests(txn):
                reach.add(ref, entries)
        return reach

    # -- du ------------------------------------------------------------------------------------
    def du(self) -> dict[str, Any]:
        """Logical bytes (as full copies) and stored bytes; each chunk counts for the first version that used it."""
        models: dict[str, dict[str, Any]] = {}
        with self._store.read() as txn:
            versions = sorted(self._graph.all_versions(txn), key=lambda v: v.time)
            reach = Reachability(txn, bases=False, sizes=True)
            own: dict[str, Reachability] = {}  # per model: everything its versions reference
            for v in versions:
                m = models.setdefault(v.model, {"logical": 0, "stored": 0, "versions": 0, "referenced": 0})
                m["versions"] += 1
                m["logical"] += sum(e.size for e in v.files.values())
                m["stored"] += reach.add(v.ref, v.files)
                m["referenced"] += own.setdefault(v.model, Reachability(txn, bases=False, sizes=True)
                                                  ).add(v.ref, v.files)
        logical = sum(m["logical"] for m in models.values())
        stored = sum(m["stored"] for m in models.values())
        for m in models.values():
            # stored: bytes first stored for this model; referenced: what its versions read,
            # shared chunks included. A model stored entirely in others' chunks has stored 0.
            m["ratio"] = m["logical"] / m["stored"] if m["stored"] else 0.0
            m["referenced_ratio"] = m["logical"] / m["referenced"] if m["referenced"] else 0.0
            m["shared"] = m["referenced"] - m["stored"]
        return {"models": models,
                "total": {"logical": logical, "stored": stored,
                          "ratio": logical / stored if stored else 0.0,
                          "store_file_bytes": self._store.stored_bytes(),
                          "versions": len(versions)}}

    # -- fsck ----------------------------------------------------------------------------------
    def fsck(self, progress: Callable[[int], None] | None = None) -> FsckReport:
        """Decode every chunk and check its blake3; rebuild every file and check its blake3; check refs."""
        report = FsckReport(lazy_remote=self._lazy_remote())
        reach = self._reachable()
        chunks = {k for k in reach.chunks if not reach.not_fetched or reach.complete(k)}
        files = reach.files - reach.incomplete_files
        report.errors += reach.missing
        report.not_fetched_chunks = len(reach.not_fetched)
        report.not_fetched_files = len(reach.incomplete_files)
        with self._scan(), self._store.read() as txn:
            all_chunks = list(txn.keys("chunks"))
            all_files = list(txn.keys("files"))
            models = self._graph.models(txn)
            for m in models:
                if m.head is None or txn.get("versions", m.head.encode()) is None:
                    report.errors.append(f"model {m.name}: head {m.head} is missing")
            for v in self._graph.all_versions(txn):
                report.versions_checked += 1
                for p in v.parents:
                    if txn.get("versions", p.encode()) is None:
                        report.errors.append(f"{v.ref}: parent {p} is missing")
        report.unreferenced_chunks = len(set(all_chunks) - reach.chunks)
        report.unreferenced_files = len(set(all_files) - reach.files)

        def check_chunk(k: bytes) -> str | None:
            try:
                data = self._cache.decode(k, verify=False)
            except Exception as e:  # noqa: BLE001  damaged bytes fail anywhere (zstd, struct): report, go on
                return f"chunk {k.hex()}: cannot decode: {type(e).__name__}: {e}"
            if chunk_key(data) != k:
                return f"chunk {k.hex()}: content does not match its blake3"
            return None

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for err in pool.map(check_chunk, sorted(chunks)):
                report.chunks_checked += 1
                if err:
                    report.errors.append(err)
                if progress:
                    progress(1)
            for key in sorted(files):
                report.files_checked += 1
                h = blake3.blake3()
                try:
                    rec = self._files.record(key)
                    for data in self._files.iterate(FileEntry(key, rec.size, rec.format), pool):
                        h.update(data)
                except Exception as e:  # noqa: BLE001  as above: a damaged store is reported, not raised
                    report.errors.append(f"file {key.hex()}: {type(e).__name__}: {e}")
                    continue
                if h.digest() != key:
                    report.errors.append(f"file {key.hex()}: rebuilt bytes do not match its blake3")
        return report

    # -- gc --------------------------------------------------------------------------------------
    def gc(self, dry_run: bool = False) -> dict[str, int]:
        """Delete chunks and file records no version reaches (e.g. left by a killed import)."""
        with self._lock.hold(exclusive=True):
            reach = self._reachable()
            files, chunks = reach.files, reach.chunks
            if reach.missing:
                raise ModelfsError("store has dangling references; run `modelfs fsck` before gc: "
                                   + reach.missing[0])
            with self._scan(), self._store.read() as txn:
                dead_chunks = [(k, len(v)) for k, v in txn.items("chunks") if k not in chunks]
                dead_files = [k for k in txn.keys("files") if k not in files]
            located = 0
            locs = self._cache.locations
            if not dry_run:
                with self._store.write() as txn:
                    for k, _ in dead_chunks:
                        txn.delete("chunks", k)
                        if locs is not None:
                            locs.forget(txn, k)
                    for k in dead_files:
                        txn.delete("files", k)
                        txn.delete(SKETCH_TABLE, sketch_file_key(k))  # its weights' sketch
                if locs is not None:  # an older store's records get their locations here
                    located = locs.fill()
        return {"chunks_removed": len(dead_chunks), "files_removed": len(dead_files),
                "bytes_freed": sum(n for _, n in dead_chunks), "records_located": located}
