"""The facade every front end uses: import, commit, resolve, read, export, inspect."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

import blake3

from modelfs.errors import Conflict, InvalidName, ModelfsError, NotFound, StoreReadOnly
from modelfs.formats import TensorPart, parse_file
from modelfs.lineage import FileEntry, LineageGraph, ModelInfo, Version
from modelfs.names import check_file_path, check_model_name
from modelfs.repo.access import prepare_store, seal_store
from modelfs.repo.chunks import ChunkCache, Counters
from modelfs.repo.files import FileReader, FileRecord
from modelfs.repo.importer import (
    ChunkHints,
    Importer,
    ParentTensors,
    Progress,
    StoreSettings,
    chunk_keys_of,
    mapped,
)
from modelfs.repo.sources import source_files
from modelfs.store import LmdbStore, ReadTxn, Store, WriteTxn

log = logging.getLogger(__name__)

_SETTINGS_KEY = b"settings"
_DATA_VERSION_KEY = b"data_version"


def tensor_signature(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Index key of a tensor for parent inference; dtype "*" is the cast-blind form."""
    return blake3.blake3(f"{name}\0{dtype}\0{list(shape)}".encode()).digest()[:16]


class Repo:
    """A store of models and versions; safe to use from several threads (reads) and processes."""

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
        self.graph = LineageGraph()

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
        """`model` (its head), `model@N`, `model@-1` (previous...), or a version id (prefix)."""
        if not ref or "\0" in ref:
            raise InvalidName(f"bad version reference {ref!r}")
        with self.store.read() as txn:
            name, _, num = ref.partition("@")
            info = self.graph.model(txn, name)
            if info is not None:
                if not num:
                    if info.head is None:
                        raise NotFound(f"model {name!r} has no versions")
                    return self.graph.version(txn, info.head)
                try:
                    n = int(num)
                except ValueError:
                    raise InvalidName(f"bad version number {num!r} in {ref!r}") from None
                if n <= 0:
                    n = info.count + n
                return self.graph.version_by_number(txn, name, n)
            if not num and len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref):
                hits = [k.decode() for k in txn.keys("versions", ref.encode())]
                if len(hits) == 1:
                    return self.graph.version(txn, hits[0])
                if len(hits) > 1:
                    raise InvalidName(f"version id prefix {ref!r} is ambiguous")
        if "@" in ref:
            raise NotFound(f"unknown model {name!r} (in {ref!r})")
        raise NotFound(f"unknown model or version {ref!r}")

    def data_version(self) -> int:
        """Changes whenever a version commits, so long-lived views know to refresh."""
        with self.store.read() as txn:
            raw = txn.get("meta", _DATA_VERSION_KEY)
        return int(raw) if raw else 0

    # -- reading ---------------------------------------------------------------------------
    def file_record(self, entry: FileEntry | bytes) -> FileRecord:
        key = entry.key if isinstance(entry, FileEntry) else entry
        with self.store.read() as txn:
            raw = txn.get("files", key)
        if raw is None:
            raise NotFound(f"file record {key.hex()} is missing from the store")
        return FileRecord.from_bytes(raw)

    def open_file(self, entry: FileEntry) -> FileReader:
        return FileReader(self.file_record(entry), self.cache)

    def iter_file(self, entry: FileEntry, pool: ThreadPoolExecutor | None = None,
                  window: int = 8) -> Iterator[bytes]:
        """The file's bytes in order, decoding chunks ahead in a pool (export, fsck, diff)."""
        reader = self.open_file(entry)
        pieces = list(reader.pieces())
        if pool is None:
            for key, data in pieces:
                yield data if key is None else self.cache.get(key)
            return
        futs: list[Any] = []
        idx = 0

        def submit_upto(n: int) -> None:
            nonlocal idx
            while idx < len(pieces) and len(futs) < n:
                key, data = pieces[idx]
                futs.append(data if key is None else pool.submit(self.cache.get, key))
                idx += 1

        submit_upto(window)
        while futs:
            f = futs.pop(0)
            submit_upto(window)
            yield f if isinstance(f, bytes) else f.result()

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
    @contextlib.contextmanager
    def _writer_lock(self, exclusive: bool = False) -> Iterator[None]:
        """Imports share the lock; gc takes it alone so it never frees a chunk being written."""
        if self.store.readonly:  # before the lock file, which a read-only disk cannot create
            raise StoreReadOnly(f"store {self.path} is read-only: nothing was changed")
        if self.path is None:
            yield
            return
        with open(self.path / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _parent_tensors(self, versions: list[Version]) -> list[ParentTensors]:
        out = []
        for v in versions:
            pt = ParentTensors()
            for path, entry in v.files.items():
                pt.add(path, self.file_record(entry))
            out.append(pt)
        return out

    def import_dir(self, src: str | os.PathLike[str], model: str, parents: list[str] | None = None,
                   how: str | None = None, message: str = "", provenance: Mapping[str, Any] | None = None,
                   infer_parent: bool = True, progress: Progress | None = None,
                   follow_symlinks: bool = False) -> Version:
        """Import every regular file under `src` as the next version of `model`.

        Symlinks out of `src` are refused before anything is stored (see repo/sources.py).
        """
        src_path = Path(src)
        if not src_path.is_dir():
            raise NotFound(f"{src_path} is not a directory")
        files = source_files(src_path, follow_symlinks)
        return self.commit_files(model, files, parents=parents, how=how, message=message,
                                 provenance=provenance, infer_parent=infer_parent, progress=progress)

    def commit_files(self, model: str, files: Mapping[str, Path], *, parents: list[str] | None = None,
                     how: str | None = None, message: str = "", provenance: Mapping[str, Any] | None = None,
                     infer_parent: bool = True, progress: Progress | None = None,
                     keep: Mapping[str, FileEntry] | None = None,
                     hints: ChunkHints | None = None) -> Version:
        """Commit a new version of `model`: `files` are stored, `keep` entries carried over as they are.

        The previous head (if any) is the versioning parent; `parents` are provenance parents.
        Without parents, a new model gets the parent inferred from tensor overlap.
        """
        check_model_name(model)
        for p in files:
            check_file_path(p)
        derived = [self.resolve(p) for p in (parents or [])]
        with self._writer_lock():
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
            if not base_versions and infer_parent and files:
                inferred = self.infer_parent(files)
                if inferred is not None:
                    derived = [inferred]
                    base_versions = [inferred]
            parent_tensors = self._parent_tensors(base_versions)
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
            if inferred is not None:
                prov["inferred_parent"] = inferred.ref
            if importer.warnings:
                prov["warnings"] = importer.warnings
            v = self._record_version(model, entries, records, [d.id for d in derived], how, message, prov)
        self.last_import_warnings = importer.warnings
        self.last_inferred_parent = inferred
        return v

    def _record_version(self, model: str, entries: Mapping[str, FileEntry], records: list[FileRecord],
                        derived: list[str], how: str | None, message: str,
                        provenance: Mapping[str, Any]) -> Version:
        with self.store.write() as txn:
            v = self._record_version_in(txn, model, entries, records, derived, how, message, provenance)
        log.info("committed %s (%s)", v.ref, v.id)
        return v

    def _record_version_in(self, txn: WriteTxn, model: str, entries: Mapping[str, FileEntry],
                           records: list[FileRecord], derived: list[str], how: str | None,
                           message: str, provenance: Mapping[str, Any]) -> Version:
        """Write a version, its file records, its index entries and the new head, in `txn`."""
        info = self.graph.model(txn, model)
        number = (info.count if info else 0) + 1
        previous = info.head if info else None
        now = time.time()
        ident = blake3.blake3(json.dumps(
            [model, number, previous, derived, now, message, how,
             {p: e.key.hex() for p, e in sorted(entries.items())}]).encode()).hexdigest()[:20]
        v = Version(ident, model, number, previous, tuple(dict.fromkeys(derived)), how, message, now,
                    MappingProxyType(dict(entries)), MappingProxyType(dict(provenance)))
        for rec in records:
            txn.put("files", rec.key, rec.to_bytes(), overwrite=False)
        self._index_signatures(txn, v, records)
        self.graph.add_version(txn, v)
        raw = txn.get("meta", _DATA_VERSION_KEY)
        txn.put("meta", _DATA_VERSION_KEY, str((int(raw) if raw else 0) + 1).encode())
        return v

    def _index_signatures(self, txn: WriteTxn, v: Version, records: list[FileRecord]) -> None:
        recs = {r.key: r for r in records}
        for entry in v.files.values():
            rec = recs.get(entry.key) or FileRecord.from_bytes(txn.get("files", entry.key) or b"")
            for t in rec.tensors():
                if t.name:
                    for dt in (t.dtype.name, "*"):
                        txn.put("tsig", tensor_signature(t.name, dt, t.shape) + v.id.encode(), b"")

    # -- parent inference --------------------------------------------------------------------
    def infer_parent(self, files: Mapping[str, Path]) -> Version | None:
        """The version sharing the most tensors by name, dtype and shape (by name and shape
        alone when none matches, so a cast child finds its parent); ties go to the version
        sharing the most identical chunks (the smallest delta), then to the newest.

        Uses the signature index and chunk hashes: nothing is decoded, and of other versions
        only the file records of tied candidates are read.
        """
        tensors: list[TensorPart] = []
        for path, src in files.items():
            with mapped(src) as mv:
                layout, _ = parse_file(path, mv)
            tensors += [t for t in layout.parts if isinstance(t, TensorPart) and t.name]
        if not tensors:
            return None
        with self.store.read() as txn:
            for exact in (True, False):
                counts: Counter[str] = Counter()
                sigs = {tensor_signature(t.name, t.dtype.name if exact else "*", t.shape) for t in tensors}
                for s in sigs:
                    for k in txn.keys("tsig", s):
                        counts[k[16:].decode()] += 1
                if counts:
                    break
            if not counts:
                return None
            top = max(counts.values())
            tied = [self.graph.version(txn, vid) for vid, c in counts.items() if c == top]
        if len(tied) > 1:
            new_keys: set[bytes] = set()
            for path, src in files.items():
                new_keys |= chunk_keys_of(path, src, self.settings)
            shared = {v.id: len(new_keys & self._chunk_keys(v)) for v in tied}
            tied.sort(key=lambda v: (shared[v.id], v.time), reverse=True)
        else:
            tied.sort(key=lambda v: v.time, reverse=True)
        choice = tied[0]
        log.info("inferred parent %s (%d shared tensors)", choice.ref, top)
        return choice

    def _chunk_keys(self, v: Version) -> set[bytes]:
        keys: set[bytes] = set()
        for e in v.files.values():
            for t in self.file_record(e).tensors():
                keys.update(t.chunks)
        return keys

    # -- lineage helpers for front ends ------------------------------------------------------
    def common_ancestor(self, a: str, b: str) -> Version | None:
        with self.store.read() as txn:
            vid = self.graph.common_ancestor(txn, a, b)
            return self.graph.version(txn, vid) if vid else None

    def read_txn(self) -> contextlib.AbstractContextManager[ReadTxn]:
        return self.store.read()

    def stored_size_of(self, keys: set[bytes]) -> int:
        total = 0
        with self.store.read() as txn:
            for k in keys:
                raw = txn.get("chunks", k)
                total += len(raw) if raw else 0
        return total

    def drafts(self) -> Drafts:
        from modelfs.repo.drafts import Drafts
        return Drafts(self)

    def maintenance(self) -> Maintenance:
        from modelfs.repo.maintenance import Maintenance
        return Maintenance(self)



from modelfs.repo.drafts import Drafts  # noqa: E402  (they import Repo lazily)
from modelfs.repo.maintenance import Maintenance  # noqa: E402
