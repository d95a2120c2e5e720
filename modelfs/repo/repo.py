"""The facade every front end uses: import, commit, resolve, read, export, inspect."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

from modelfs.errors import Conflict, ModelfsError, NotFound, StoreReadOnly
from modelfs.lineage import FileEntry, LineageGraph, ModelInfo, Version
from modelfs.lineage.refs import mount_ref
from modelfs.names import check_file_path, check_model_name
from modelfs.repo import naming
from modelfs.repo.access import prepare_store, seal_store
from modelfs.repo.chunks import ChunkCache, ChunkRecord, Counters
from modelfs.repo.chunksource import LAZY_REMOTE_KEY, ChunkSource, DeferredSource, SourceCounters
from modelfs.repo.drafts import Drafts
from modelfs.repo.files import FileReader, FileRecord, Files
from modelfs.repo.history import History, edits_version
from modelfs.repo.importer import ChunkHints, Importer, Progress, StoreSettings
from modelfs.repo.lazy import LazyFetcher
from modelfs.repo.locations import LOCATIONS_KEY, RecordLocations, chunk_stat
from modelfs.repo.locations import TABLE as LOCATIONS_TABLE
from modelfs.repo.lossy import LossyPlan, LossyPlanner
from modelfs.repo.maintenance import Maintenance
from modelfs.repo.parents import Inference, Parents
from modelfs.repo.reachability import chunk_keys
from modelfs.repo.recording import Recorder, data_version
from modelfs.repo.settings import ModelSettings
from modelfs.repo.sources import source_files
from modelfs.repo.tables import RecordTable
from modelfs.repo.writelock import WriterLock
from modelfs.store import LmdbStore, ReadTxn, Store

log = logging.getLogger(__name__)

_SETTINGS_KEY = b"settings"


class Repo:
    """A store of models and versions; safe to use from several threads (reads) and processes.

    Composed as dulwich's `Repo` is of an object store and refs: the writer lock, version
    recording, parent lookup and file reading are objects of their own, built here once and
    handed to `Drafts` and `Maintenance`, which never see the facade.
    """

    def __init__(self, store: Store, path: Path | None = None, cache_bytes: int = 512 << 20) -> None:
        self.store = store
        self.path = path
        with store.read() as txn:
            raw = txn.get("meta", _SETTINGS_KEY)
        if raw is None:
            raise ModelfsError("store has no settings record: not a modelfs store, or damaged")
        self.settings = StoreSettings(**json.loads(raw))
        self.counters = Counters()
        self.cache = ChunkCache(store, cache_bytes, self.counters)
        self.locations = self.cache.locations = RecordLocations(store)
        self.locations.load_flag()
        self.graph = LineageGraph()
        self._files = Files(store, self.cache)
        self._lock = WriterLock(store, path)
        self._recorder = Recorder(store, self.graph)
        self._parents = Parents(store, self.graph, self._files, self.settings)
        self._drafts = Drafts(store=store, graph=self.graph, cache=self.cache, settings=self.settings,
                              lock=self._lock, recorder=self._recorder, parents=self._parents,
                              resolve=self.resolve)
        self._maintenance = Maintenance(store=store, graph=self.graph, cache=self.cache, files=self._files,
                                        drafts=self._drafts, lock=self._lock)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None = None, *, store: Store | None = None,
             settings: StoreSettings | None = None, shared: bool = False, **kw: Any) -> Repo:
        """A new store: private to its owner, or open to its group when `shared` (access.py)."""
        if store is None:
            assert path is not None
            p = Path(path)
            if (p / "data.mdb").exists():
                raise Conflict(f"a modelfs store already exists at {p}")
            if p.exists() and not p.is_dir():
                raise Conflict(f"{p} exists and is not a directory")
            access = prepare_store(p, shared)  # first, so nothing below is reachable by others
            store = LmdbStore(p, create=True)
            seal_store(p, access)
        settings = settings or StoreSettings()
        with store.write() as txn:
            if txn.get("meta", _SETTINGS_KEY) is None:
                txn.put("meta", _SETTINGS_KEY, json.dumps(dataclasses.asdict(settings)).encode())
                txn.put("meta", LOCATIONS_KEY, b"1")  # every record it gets has a location
        return cls(store, Path(path) if path is not None else None, **kw)

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kw: Any) -> Repo:
        """Writable if it can be; a store on a read-only disk still answers every read."""
        try:
            store = LmdbStore(path)
        except StoreReadOnly:
            store = LmdbStore(path, readonly=True)
            log.info("store %s is read-only: opened for reading only", path)
        return cls(store, Path(path), **kw)

    def close(self) -> None:
        self.cache.attach(None)  # keeps what was fetched before the store closes
        self.store.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lineage queries -------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        with self.store.read() as txn:
            return self.graph.models(txn)

    def model(self, name: str) -> ModelInfo:
        with self.store.read() as txn:
            info = self.graph.model(txn, name)
        if info is None:
            raise NotFound(f"unknown model {name!r}")
        return info

    def versions(self, model: str) -> list[Version]:
        self.model(model)
        with self.store.read() as txn:
            return self.graph.versions(txn, model)

    def all_versions(self) -> list[Version]:
        with self.store.read() as txn:
            return sorted(self.graph.all_versions(txn), key=lambda v: (v.time, v.model, v.number))

    def version(self, version_id: str) -> Version:
        with self.store.read() as txn:
            return self.graph.version(txn, version_id)

    def children(self, version_id: str) -> list[Version]:
        with self.store.read() as txn:
            return self.graph.children(txn, version_id)

    def resolve(self, ref: str) -> Version:
        """A reference in the grammar of lineage/refs.py (`M`, `M@N`, `M@-K`, `M:TAG`, an id)."""
        with self.store.read() as txn:
            return naming.resolve(txn, self.graph, ref)

    def resolve_mount(self, name: str) -> Version | None:
        """What a root name of the mount names (`M@N`, `M:TAG`: refs.mount_ref), or None."""
        ref = mount_ref(name)
        if ref is None:
            return None
        try:
            with self.store.read() as txn:
                return naming.resolve(txn, self.graph, ref)
        except ModelfsError:
            return None

    def data_version(self) -> int:
        """Changes whenever a version commits, so long-lived views know to refresh."""
        with self.store.read() as txn:
            return data_version(txn)

    # -- reading ---------------------------------------------------------------------------
    def file_record(self, entry: FileEntry | bytes) -> FileRecord:
        return self._files.record(entry)

    def open_file(self, entry: FileEntry) -> FileReader:
        return self._files.open(entry)

    def reader(self, record: FileRecord) -> FileReader:
        """Ranged reads of a file record already in hand (diff, merge, update detection)."""
        return self._files.reader(record)

    def iter_file(self, entry: FileEntry, pool: ThreadPoolExecutor | None = None,
                  window: int = 8) -> Iterator[bytes]:
        """The file's bytes in order, decoding chunks ahead in a pool (export, fsck, diff)."""
        return self._files.iterate(entry, pool, window)

    def export(self, ref: str, dest: str | os.PathLike[str], progress: Progress | None = None) -> Version:
        """Write a version's files into `dest` (new or empty), each checked against its blake3."""
        v = self.resolve(ref)
        d = Path(dest)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise Conflict(f"export target {d} exists and is not an empty directory")
        d.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for path, entry in sorted(v.files.items()):
                target = d / path
                target.parent.mkdir(parents=True, exist_ok=True)
                h = blake3.blake3()
                with open(target, "wb") as f:
                    for data in self.iter_file(entry, pool):
                        h.update(data)
                        f.write(data)
                        if progress:
                            progress(len(data))
                os.chmod(target, entry.mode)
                if h.digest() != entry.key:
                    raise ModelfsError(f"{v.ref}:{path} read back with a wrong blake3: store damaged (run fsck)")
        return v

    # -- writing ---------------------------------------------------------------------------
    def import_dir(self, src: str | os.PathLike[str], model: str, parents: list[str] | None = None,
                   how: str | None = None, message: str = "", provenance: Mapping[str, Any] | None = None,
                   infer_parent: bool = True, progress: Progress | None = None,
                   follow_symlinks: bool = False, move_head: bool = True) -> Version:
        """Import every regular file under `src` as the next version of `model`.

        Symlinks out of `src` are refused before anything is stored (see repo/sources.py).
        Without `move_head` the version is stored and numbered but the head stays where it was.
        """
        src_path = Path(src)
        if not src_path.is_dir():
            raise NotFound(f"{src_path} is not a directory")
        files = source_files(src_path, follow_symlinks)
        return self.commit_files(model, files, parents=parents, how=how, message=message,
                                 provenance=provenance, infer_parent=infer_parent, progress=progress,
                                 move_head=move_head)

    def commit_files(self, model: str, files: Mapping[str, Path], *, parents: list[str] | None = None,
                     how: str | None = None, message: str = "", provenance: Mapping[str, Any] | None = None,
                     infer_parent: bool = True, progress: Progress | None = None,
                     keep: Mapping[str, FileEntry] | None = None,
                     hints: ChunkHints | None = None, move_head: bool = True) -> Version:
        """Commit a new version of `model`: `files` are stored, `keep` entries carried over as they are.

        The previous head (if any) is the versioning parent; `parents` are provenance parents.
        Without parents, a new model gets the parent(s) inferred from its weights (repo/parents.py).
        """
        check_model_name(model)
        for p in files:
            check_file_path(p)
        derived = [self.resolve(p) for p in (parents or [])]
        with self._lock.hold():
            head = None
            with self.store.read() as txn:
                info = self.graph.model(txn, model)
                if info is not None and info.head:
                    head = self.graph.version(txn, info.head)
            importer = Importer(self.store, self.cache, self.settings, hints=hints)
            # once each: a merge into A's own model has A as head and as parent
            if head is not None:  # the head is the versioning parent already, not a provenance one
                derived = [d for d in derived if d.id != head.id]
            base_versions = list({v.id: v for v in ([head] if head else []) + derived}.values())
            inferred = None
            inference = None
            if not base_versions and infer_parent and files:
                inference = self._parents.inference(files)
                if inference is not None and inference.parents:  # a merge's both: the importer tries their average
                    inferred = inference.parent
                    derived = list(inference.parents)
                    base_versions = list(inference.parents)
            parent_tensors = self._parents.tensors(base_versions)
            entries: dict[str, FileEntry] = dict(keep or {})
            records: list[FileRecord] = []
            try:
                with ThreadPoolExecutor(max_workers=importer.workers) as pool:
                    for path, src in sorted(files.items()):
                        entry, rec = importer.store_file(path, src, parent_tensors, pool, progress)
                        entries[path] = entry
                        records.append(rec)
            finally:
                importer.close()
            prov = dict(provenance or {})
            if inference is not None:
                prov.update(inference.provenance())
            if importer.warnings:
                prov["warnings"] = importer.warnings
            v = self._recorder.record(model, entries, records, [d.id for d in derived], how, message, prov,
                                      move_head)
        self.last_import_warnings = importer.warnings
        self.last_inferred_parent = inferred
        self.last_inference = inference  # the distances, for the CLI to print
        return v

    # -- lossy mode (repo/lossy.py; the gate is ops/lossy.py) ---------------------------------
    def delta_bases(self, model: str, parents: list[str] | None = None) -> list[Version]:
        """The versions a new version of `model` is delta-coded against: its head, then `parents`."""
        derived = [self.resolve(p) for p in (parents or [])]
        with self.store.read() as txn:
            info = self.graph.model(txn, model)
            head = self.graph.version(txn, info.head) if info is not None and info.head else None
        return list({v.id: v for v in ([head] if head else []) + derived}.values())

    def plan_lossy(self, files: Mapping[str, Path], bases: list[Version], aim: float,
                   workdir: Path) -> LossyPlan:
        """The reconstruction of `files` against `bases` at error ratio `aim`, written under
        `workdir`; nothing is stored (commit `plan.files` with ``hints=plan.chunk_hints``)."""
        lossy = bases[0].provenance.get("lossy") if bases else None  # the first parent's figures
        return LossyPlanner(self.cache, self.settings).plan(files, self._parents.tensors(bases), aim, workdir,
                                                            lossy if isinstance(lossy, dict) else None)

    def advance_head(self, version_id: str) -> Version:
        """Move the head to a version committed with ``move_head=False`` (a gated cascade's
        version whose tests passed), if the head is still the one it was built on."""
        with self._lock.hold():
            return self._recorder.advance_head(version_id)

    # -- parent inference --------------------------------------------------------------------
    def infer_parent(self, files: Mapping[str, Path]) -> Version | None:
        """The version nearest `files` in weight space (see `Parents.inference`), or None."""
        return self._parents.infer(files)

    def infer_parents(self, files: Mapping[str, Path]) -> Inference | None:
        """Inferred parents with the distances behind the choice (both parents of a merge)."""
        return self._parents.inference(files)

    def chunk_keys(self, *versions: Version) -> set[bytes]:
        """The chunk keys the files of these versions list (what a diff or a size compares)."""
        with self.store.read() as txn:
            return chunk_keys(txn, [v.files for v in versions])

    # -- lineage helpers for front ends ------------------------------------------------------
    def common_ancestor(self, a: str, b: str) -> Version | None:
        with self.store.read() as txn:
            vid = self.graph.common_ancestor(txn, a, b)
            return self.graph.version(txn, vid) if vid else None

    def read_txn(self) -> contextlib.AbstractContextManager[ReadTxn]:
        return self.store.read()

    def chunk_record(self, key: bytes) -> ChunkRecord:
        """A stored chunk's record (codec, depth, bases): what benchmarks and debugging inspect."""
        return self.cache.record(key)

    def chunk_count(self) -> int:
        """Chunks held here; counted through their locations where every record has one (py-lmdb
        would read every record of the store to count them)."""
        with self.store.read() as txn:
            if self.locations.complete:
                return sum(1 for _ in txn.keys(LOCATIONS_TABLE))
            return sum(1 for _ in txn.keys("chunks"))

    def stored_size_of(self, keys: set[bytes]) -> int:
        total = 0
        with self.store.read() as txn:
            for k in keys:
                st = chunk_stat(txn, k)
                total += st[0] if st else 0
        return total

    # -- lazy stores -----------------------------------------------------------------------
    def lazy_remote(self) -> str | None:
        """The remote a lazy store fetches missing chunks from (meta b"lazy_remote"), or None."""
        with self.store.read() as txn:
            raw = txn.get("meta", LAZY_REMOTE_KEY)
        return None if raw is None else bytes(raw).decode()

    def set_lazy_remote(self, name: str | None) -> None:
        """Mark this store lazy (chunks come from remote `name` on first read), or full (None)."""
        with self._lock.hold(), self.store.write() as txn:
            if name is None:
                txn.delete("meta", LAZY_REMOTE_KEY)
            else:
                txn.put("meta", LAZY_REMOTE_KEY, name.encode())

    def attach_chunk_source(self, source: ChunkSource | None) -> None:
        """Read missing chunk records through `source` from now on (a lazy store's remote);
        each is checked against its blake3 before use and then kept in this store. The repo
        closes the source (if it has a `close`) when it is replaced or the repo closes."""
        self.cache.attach(None if source is None else LazyFetcher(self.store, source, self._lock, self.locations))

    def attach_lazy_remote(self, opener: Callable[[Repo, str], ChunkSource]) -> str | None:
        """On a lazy store, read missing chunks through ``opener(self, remote)``, called on the
        first fetch (the CLI and the mount pass the remote layer's `open_chunk_source`);
        returns the remote's name, None on a full store."""
        name = self.lazy_remote()
        if name is not None:
            self.attach_chunk_source(DeferredSource(name, lambda: opener(self, name)))
        return name

    def warm_chunk_source(self) -> None:
        """Open a lazy store's remote now rather than on the first read (its client takes
        about half a second to make); a remote that cannot be opened is reported by the read."""
        lz = self.cache.lazy
        if lz is not None and isinstance(lz.source, DeferredSource):
            try:
                lz.source.open()
            except ModelfsError as e:
                log.info("remote %s not opened yet: %s", lz.source.name, e)

    def fetch_stats(self) -> dict[str, int] | None:
        """What the chunk source moved so far (None on a store without one)."""
        lz = self.cache.lazy
        if lz is None:
            return None
        out = lz.stats.to_json()
        src = lz.source
        wire = getattr(src.opened if isinstance(src, DeferredSource) else src, "counters", None)
        if isinstance(wire, SourceCounters):  # what crossed the network, counted by the source
            out.update(requests=wire.requests, wire_bytes=wire.bytes)
        return out

    def flush_fetched(self, timeout: float | None = None) -> bool:
        """Wait until every chunk fetched and checked so far is kept in the store."""
        lz = self.cache.lazy
        return True if lz is None else lz.flush(timeout)

    @property
    def chunk_source(self) -> ChunkSource | None:
        return self.cache.source

    def table(self, name: str) -> RecordTable:
        """An ops-owned table of JSON records (tests, results, ...): see repo/tables.py."""
        return RecordTable(self.store, self._lock, name)

    def model_settings(self) -> ModelSettings:
        """Per-model settings (`modelfs config`): settle time, lossy storage."""
        return ModelSettings(self.table("config"))

    def drafts(self) -> Drafts:
        """Changes staged for models' next versions (the mount's writes, `modelfs derive`)."""
        return self._drafts

    def maintenance(self) -> Maintenance:
        """du, fsck and gc."""
        return self._maintenance

    def lineage_edits(self) -> int:
        """Moves with every rename, removal, tag or annotation (repo/history.py), never with a
        commit: when it moves, versions a long-lived view cached may read differently."""
        with self.store.read() as txn:
            return edits_version(txn)

    def tags(self, model: str | None = None) -> list[tuple[str, str, Version]]:
        """(model, tag, version) of every tag, or of one model's (refs MODEL:TAG)."""
        return self.history().tags(model)

    def history(self) -> History:
        """Tags, annotations, checkout, rm, mv and prune (repo/history.py)."""
        return History(store=self.store, graph=self.graph, lock=self._lock, drafts=self._drafts,
                       recorder=self._recorder)
