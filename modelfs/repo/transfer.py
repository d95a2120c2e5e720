"""The store's side of a remote: raw records out (push), raw records and versions in (pull).

The remote layer moves records between stores byte for byte, so it needs what no other front
end does: a version's records as stored, and a way to write versions made elsewhere with
their ids and numbers kept. This module is that door, and the only one: it writes through
the writer lock and `Recorder.adopt_in`, so a pulled version is indexed (tensor signatures,
sketches, children) exactly as a committed one. It also keeps the ``remotes`` table: each
remote's config (``name -> JSON``) and the pack indexes read from it (``name NUL pack ->
index bytes``), so a lazy store finds a chunk's pack without asking the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from modelfs.errors import Conflict, NotFound
from modelfs.lineage import Version
from modelfs.repo import sketches
from modelfs.repo.files import FileRecord
from modelfs.repo.locations import chunk_exists, chunk_stat
from modelfs.repo.recording import Recorder
from modelfs.repo.repo import Repo
from modelfs.repo.writelock import WriterLock

REMOTES = "remotes"


class Transfer:
    """Raw reads and version adoption for one open repo (built per push, pull or clone)."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo
        self._store = repo.store
        self._lock = WriterLock(repo.store, repo.path)
        self._recorder = Recorder(repo.store, repo.graph)
        self._locations = repo.locations

    # -- what a set of models needs ----------------------------------------------------------
    def model_closure(self, names: Iterable[str]) -> list[str]:
        """These models and every model their versions descend from, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()
        with self._store.read() as txn:
            def visit(name: str) -> None:
                if name in seen:
                    return
                seen.add(name)
                if self._repo.graph.model(txn, name) is None:
                    raise NotFound(f"unknown model {name!r}")
                for v in self._repo.graph.versions(txn, name):
                    for p in v.parents:
                        visit(self._repo.graph.version(txn, p).model)
                order.append(name)
            for n in names:
                visit(n)
        return order

    def file_records(self, versions: Iterable[Version]) -> dict[bytes, bytes]:
        """File key -> stored file record, for every file of these versions."""
        out: dict[bytes, bytes] = {}
        with self._store.read() as txn:
            for v in versions:
                for path, e in v.files.items():
                    if e.key not in out:
                        raw = txn.get("files", e.key)
                        if raw is None:
                            raise NotFound(f"{v.ref}: file record for {path} is missing (run fsck)")
                        out[e.key] = bytes(raw)
        return out

    def sketch_records(self, file_keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """``sketch`` table key -> record, for the files that have a sketch."""
        out = {}
        with self._store.read() as txn:
            for k in file_keys:
                raw = txn.get(sketches.TABLE, sketches.file_key(k))
                if raw is not None:
                    out[sketches.file_key(k)] = bytes(raw)
        return out

    def chunks_to_send(self, versions: Iterable[Version], there: Mapping[bytes, tuple[bytes, ...]]
                       ) -> tuple[list[bytes], list[str]]:
        """The chunks these versions reach, with their delta bases, that are not `there`
        (chunk key -> its bases, as the remote's indexes list them), in file order; and what
        is missing here (a lazy store's chunks not fetched yet that the remote lacks too).

        A chunk the remote holds is not read here, but its bases are still followed: a killed
        push may have uploaded a delta's pack and not its base's."""
        order: dict[bytes, None] = {}
        missing: list[str] = []
        seen: set[bytes] = set()
        with self._store.read() as txn:
            for v in versions:
                for path, e in sorted(v.files.items()):
                    raw = txn.get("files", e.key)
                    if raw is None:
                        raise NotFound(f"{v.ref}: file record for {path} is missing (run fsck)")
                    stack = list(reversed(file_record_chunks(bytes(raw))))
                    while stack:
                        k = stack.pop()
                        if k in seen:
                            continue
                        seen.add(k)
                        if k in there:
                            stack += there[k]
                            continue
                        st = chunk_stat(txn, k)
                        if st is None:
                            missing.append(f"{v.ref}:{path}: chunk {k.hex()}")
                            continue
                        order[k] = None
                        stack += st[1]
        return list(order), missing

    def missing_chunks(self, keys: Iterable[bytes]) -> set[bytes]:
        with self._store.read() as txn:
            return {k for k in keys if not chunk_exists(txn, k)}

    def chunk_records(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        keys = list(keys)
        self._locations.page_in(keys)  # all of them from disk at once, not a fault a page
        out = {}
        with self._store.read() as txn:
            for k in keys:
                self._locations.ready(k)
                raw = txn.get("chunks", k)
                if raw is not None:
                    out[k] = bytes(raw)
        return out

    def put_chunks(self, records: Mapping[bytes, bytes]) -> int:
        """Store fetched chunk records (checked by the caller); returns how many were new."""
        if not records:
            return 0
        with self._lock.hold():
            with self._store.write() as txn:
                n = sum(txn.put("chunks", k, v, overwrite=False) for k, v in records.items())
            self._locations.note(records)
        return n

    # -- versions made elsewhere ---------------------------------------------------------------
    def adopt(self, versions: list[Version], files: Mapping[bytes, bytes], sketch: Mapping[bytes, bytes],
              heads: Mapping[str, str]) -> list[Version]:
        """Write versions pulled from a remote, all or nothing, each model's in number order,
        after their file records; then point each model's head where the remote's is.

        A version whose number is taken here by another version is a diverged history:
        Conflict, and nothing is written. Returns the versions that were new."""
        new: list[Version] = []
        with self._lock.hold(), self._store.write() as txn:
            graph = self._repo.graph
            for k, raw in files.items():
                txn.put("files", k, raw, overwrite=False)
            for k, raw in sketch.items():
                txn.put(sketches.TABLE, k, raw, overwrite=False)
            for v in sorted(versions, key=lambda v: (v.model, v.number)):
                if txn.get("versions", v.id.encode()) is not None:
                    continue
                info = graph.model(txn, v.model)
                have = info.count if info else 0
                if v.number <= have:  # (numbers may skip: a prune removes versions)
                    raise Conflict(f"local {v.model} has {have} versions and the remote's next is "
                                   f"{v.model}@{v.number}: the histories differ; nothing was pulled")
                for p in v.parents:
                    if txn.get("versions", p.encode()) is None and p not in {x.id for x in versions}:
                        raise NotFound(f"{v.ref}'s parent {p} is neither here nor on the remote")
                for e in v.files.values():
                    if txn.get("files", e.key) is None:
                        raise NotFound(f"{v.ref}: the remote sent no file record {e.key.hex()}")
                self._recorder.adopt_in(txn, v)
                new.append(v)
            for model, head in heads.items():
                info = graph.model(txn, model)
                if info is not None and info.head != head:
                    graph.set_head(txn, model, head)
        return new

    # -- the remotes table -----------------------------------------------------------------------
    def remotes(self) -> dict[str, dict[str, Any]]:
        with self._store.read() as txn:
            return {k.decode(): json.loads(bytes(v)) for k, v in txn.items(REMOTES) if b"\0" not in k}

    def set_remote(self, name: str, config: Mapping[str, Any], replace: bool = False) -> None:
        with self._lock.hold(), self._store.write() as txn:
            if not txn.put(REMOTES, name.encode(), json.dumps(dict(config), sort_keys=True).encode(),
                           overwrite=replace):
                raise Conflict(f"remote {name!r} exists (remove it first: modelfs remote rm {name})")

    def remove_remote(self, name: str) -> None:
        with self._lock.hold(), self._store.write() as txn:
            if not txn.delete(REMOTES, name.encode()):
                raise NotFound(f"no remote {name!r}")
            for k in list(txn.keys(REMOTES, name.encode() + b"\0")):
                txn.delete(REMOTES, k)

    def cached_indexes(self, name: str) -> dict[str, bytes]:
        """Pack id -> index bytes kept from earlier reads of remote `name`."""
        prefix = name.encode() + b"\0"
        with self._store.read() as txn:
            return {k[len(prefix):].decode(): bytes(v) for k, v in txn.items(REMOTES, prefix)}

    def cache_indexes(self, name: str, add: Mapping[str, bytes], drop: Iterable[str] = ()) -> None:
        """Keep new indexes of remote `name`, forget those of packs it no longer has."""
        drop = list(drop)
        if not add and not drop or self._store.readonly:
            return
        prefix = name.encode() + b"\0"
        with self._lock.hold(), self._store.write() as txn:
            for pack, raw in add.items():
                txn.put(REMOTES, prefix + pack.encode(), raw)
            for pack in drop:
                txn.delete(REMOTES, prefix + pack.encode())


def file_record_chunks(raw: bytes) -> list[bytes]:
    """The chunk keys a stored file record lists (to plan what a pull must fetch)."""
    return [k for t in FileRecord.from_bytes(raw).tensors() for k in t.chunks]
