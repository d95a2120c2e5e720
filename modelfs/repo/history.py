"""Everyday changes to the lineage that are not new bytes: tags, annotations, checkout, and
removing or renaming models and versions (docs/everyday.md says what each means).

Versions are immutable records. Nothing here rewrites one: a tag is a name in the ``tags``
table; `annotate`, `reparent` and `rename` record edits in ``annotations`` that every read
applies (lineage/overlay.py); `checkout` commits a new version holding an old one's files;
`remove` and `prune` delete records no other version needs, and keep those others derive
from (with ``force``) as lineage history: reachable by id, no longer named or numbered.
The bytes go at the next `modelfs gc`. Each change is one transaction under the writer
lock and moves the store's data version, so a running mount sees it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfs.errors import Conflict, NotFound
from modelfs.lineage import LineageGraph, ModelInfo, Version, overlay
from modelfs.lineage.refs import check_tag_name
from modelfs.names import check_model_name
from modelfs.repo import sketches
from modelfs.repo.drafts import Drafts
from modelfs.repo.naming import TAGS, tag_key, tags_of
from modelfs.repo.recording import DATA_VERSION_KEY, Recorder, data_version
from modelfs.repo.writelock import WriterLock
from modelfs.store import ReadTxn, Store, WriteTxn


@dataclass
class Removal:
    """What `remove` or `prune` did (or, with ``dry_run``, would do)."""

    removed: list[str] = field(default_factory=list)  # refs deleted
    kept_as_history: dict[str, list[str]] = field(default_factory=dict)  # ref -> refs deriving from it
    tags_dropped: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # version ids whose records went


TSIG_LEN = 16  # bytes of recording.tensor_signature, before the version id in a tsig key


def _vnum_key(model: str, number: int) -> bytes:
    return model.encode() + b"\0" + number.to_bytes(8, "big")


EDITS_KEY = b"lineage_edits"  # meta: moves with every change made here (not with commits)


def edits_version(txn: ReadTxn) -> int:
    """Changes whenever a name, tag or annotation changes or a version is removed, so a mount
    knows when the versions it cached may say something else (commits never change them)."""
    raw = txn.get("meta", EDITS_KEY)
    return int(raw) if raw else 0


def _bump(txn: WriteTxn) -> None:
    txn.put("meta", DATA_VERSION_KEY, str(data_version(txn) + 1).encode())
    txn.put("meta", EDITS_KEY, str(edits_version(txn) + 1).encode())


class History:
    """Tags, annotations, checkout, rm, mv and prune over the store; built by the facade."""

    def __init__(self, *, store: Store, graph: LineageGraph, lock: WriterLock, drafts: Drafts,
                 recorder: Recorder) -> None:
        self._store = store
        self._graph = graph
        self._lock = lock
        self._drafts = drafts
        self._recorder = recorder

    # -- tags ------------------------------------------------------------------------------------
    def tag(self, v: Version, tag: str, force: bool = False) -> str | None:
        """Name `v` MODEL:TAG; returns the version id the tag named before (with ``force``)."""
        check_tag_name(tag)
        with self._lock.hold(), self._store.write() as txn:
            old = txn.get(TAGS, tag_key(v.model, tag))
            if old is not None and bytes(old).decode() != v.id and not force:
                was = self._graph.version(txn, bytes(old).decode()).ref
                raise Conflict(f"tag {v.model}:{tag} already names {was}; `modelfs tag -f` moves it")
            txn.put(TAGS, tag_key(v.model, tag), v.id.encode())
            _bump(txn)
        return bytes(old).decode() if old is not None else None

    def untag(self, model: str, tag: str) -> str:
        """Delete MODEL:TAG; returns the id it named."""
        with self._lock.hold(), self._store.write() as txn:
            old = txn.get(TAGS, tag_key(model, tag))
            if old is None:
                raise NotFound(f"model {model!r} has no tag {tag!r}")
            txn.delete(TAGS, tag_key(model, tag))
            _bump(txn)
        return bytes(old).decode()

    def tags(self, model: str | None = None) -> list[tuple[str, str, Version]]:
        with self._store.read() as txn:
            return [(m, t, self._graph.version(txn, vid)) for m, t, vid in tags_of(txn, model)]

    # -- annotations -----------------------------------------------------------------------------
    def annotate(self, v: Version, edit: Mapping[str, Any]) -> Version:
        """Record one edit of `v`'s lineage (see lineage/overlay.py); the record stays as it is.

        A ``parents`` edit moves the children index with it, so children lists follow."""
        bad = set(edit) - overlay.EDIT_KEYS
        assert not bad, bad
        e = {"time": time.time(), **edit}
        with self._lock.hold(), self._store.write() as txn:
            cur = self._graph.version(txn, v.id)
            if "parents" in e:
                for p in e["parents"]:
                    if p == v.id or v.id in self._graph.ancestors(txn, p):
                        raise Conflict(f"{self._graph.version(txn, p).ref} descends from {cur.ref}: "
                                       "a parent cannot be a descendant (the lineage would loop)")
                for p in cur.derived_from:
                    if p != cur.previous:
                        txn.delete("children", p.encode() + b"\0" + v.id.encode())
                for p in e["parents"]:
                    txn.put("children", p.encode() + b"\0" + v.id.encode(), b"")
            edits = overlay.decode(txn.get(overlay.TABLE, v.id.encode()))
            txn.put(overlay.TABLE, v.id.encode(), overlay.encode([*edits, e]))
            _bump(txn)
            return self._graph.version(txn, v.id)

    # -- checkout --------------------------------------------------------------------------------
    def checkout(self, v: Version, message: str = "") -> Version:
        """A new version of v's model holding v's files; its versioning parent is the old head."""
        self._no_draft(v.model, "checkout")
        with self._lock.hold(), self._store.write() as txn:
            info = self._graph.model(txn, v.model)
            assert info is not None and info.head is not None
            head = self._graph.version(txn, info.head)
            if dict(head.files) == dict(v.files):
                raise Conflict(f"{v.model}'s head {head.ref} already holds {v.ref}'s files: nothing to do")
            new = self._recorder.record_in(txn, v.model, dict(v.files), [], [], "checkout",
                                           message or f"checkout of {v.ref}", {"checkout": v.ref,
                                                                                "checkout_id": v.id})
        return new

    # -- remove, rename, prune -------------------------------------------------------------------
    def _no_draft(self, model: str, what: str) -> None:
        d = self._drafts.get(model)
        if d is not None and (d.pending_files or d.held):
            raise Conflict(f"{model} has changes not committed yet (a mount's saves, `modelfs status` "
                           f"lists them): commit or discard them before {what}")

    def remove(self, model: str, force: bool = False, dry_run: bool = False) -> Removal:
        """Remove a model's name, its tags and its versions no other model derives from."""
        self._no_draft(model, "rm")
        with self._lock.hold(), self._store.write() as txn:
            self._need(txn, model)
            versions = self._graph.versions(txn, model)
            out = self._delete(txn, model, versions, force, dry_run, "rm")
            if not dry_run:
                self._splice(txn, versions, out.deleted)
                txn.delete("models", model.encode())
                self._drafts_forget(txn, model)
                _bump(txn)
        return out

    def prune(self, model: str, keep_last: int, keep_tagged: bool = False, force: bool = False,
              dry_run: bool = False) -> Removal:
        """Remove all but the last `keep_last` versions (the head always stays; tagged ones too
        with ``keep_tagged``); the versions after a removed one get its predecessor as theirs."""
        if keep_last < 1:
            raise Conflict("--keep-last must be at least 1 (the head stays)")
        self._no_draft(model, "prune")
        with self._lock.hold(), self._store.write() as txn:
            info = self._need(txn, model)
            versions = self._graph.versions(txn, model)
            keep = {v.id for v in versions[-keep_last:]} | {info.head}
            if keep_tagged:
                keep |= {vid for _, _, vid in tags_of(txn, model)}
            gone = [v for v in versions if v.id not in keep]
            out = self._delete(txn, model, gone, force, dry_run, "prune")
            if not dry_run and gone:
                self._splice(txn, versions, out.deleted)
                _bump(txn)
        return out

    def rename(self, old: str, new: str) -> int:
        """`mv`: the model and its versions, tags and numbers answer to `new`; returns how many
        versions moved. Recorded as an annotation of each version (the records keep `old`)."""
        check_model_name(new)
        self._no_draft(old, "mv")
        with self._lock.hold(), self._store.write() as txn:
            info = self._need(txn, old)
            if self._graph.model(txn, new) is not None or self._drafts.get(new) is not None:
                raise Conflict(f"model {new!r} already exists")
            versions = self._graph.versions(txn, old)
            now = time.time()
            for v in versions:
                edits = overlay.decode(txn.get(overlay.TABLE, v.id.encode()))
                txn.put(overlay.TABLE, v.id.encode(), overlay.encode(
                    [*edits, {"time": now, "model": new, "note": f"renamed from {old}"}]))
                txn.delete("vnums", _vnum_key(old, v.number))
                txn.put("vnums", _vnum_key(new, v.number), v.id.encode())
            for _, t, vid in tags_of(txn, old):
                txn.delete(TAGS, tag_key(old, t))
                txn.put(TAGS, tag_key(new, t), vid.encode())
            txn.delete("models", old.encode())
            txn.put("models", new.encode(), ModelInfo(new, info.head, info.count, info.created).to_bytes())
            self._drafts_forget(txn, old)
            _bump(txn)
        return len(versions)

    # -- the parts -------------------------------------------------------------------------------
    def _need(self, txn: WriteTxn, model: str) -> ModelInfo:
        info = self._graph.model(txn, model)
        if info is None:
            raise NotFound(f"unknown model {model!r}")
        return info

    @staticmethod
    def _drafts_forget(txn: WriteTxn, model: str) -> None:
        """A derive started from nothing pending (`_no_draft` refused the rest): drop its record."""
        txn.delete("pending", model.encode() + b"\0m")

    def _delete(self, txn: WriteTxn, model: str, gone: list[Version], force: bool, dry_run: bool,
                what: str) -> Removal:
        out = Removal()
        ids = {v.id for v in gone}
        needed: dict[str, list[str]] = {}
        for v in gone:
            for c in self._graph.children(txn, v.id):
                if c.id not in ids and v.id in c.derived_from:
                    needed.setdefault(v.ref, []).append(c.ref)
        if needed and not force:
            first, kids = next(iter(needed.items()))
            more = f" (and {len(needed) - 1} more versions)" if len(needed) > 1 else ""
            raise Conflict(f"{what} would orphan {first}{more}: {', '.join(kids)} derive from it; "
                           f"--force keeps it as lineage history (by id, no longer {model}@N) and "
                           "removes the rest")
        out.kept_as_history = needed
        tags = {vid: (m, t) for m, t, vid in tags_of(txn, model)}
        for v in gone:
            if v.id in tags:
                out.tags_dropped.append(f"{model}:{tags[v.id][1]}")
            if v.ref not in needed:
                out.removed.append(v.ref)
                out.deleted.add(v.id)
        if dry_run:
            return out
        for v in gone:
            txn.delete("vnums", _vnum_key(model, v.number))
            if v.id in tags:
                txn.delete(TAGS, tag_key(model, tags[v.id][1]))
            if v.ref in needed:
                edits = overlay.decode(txn.get(overlay.TABLE, v.id.encode()))
                txn.put(overlay.TABLE, v.id.encode(), overlay.encode(
                    [*edits, {"time": time.time(), "note": f"{what}: kept as lineage history",
                              "set": {"removed": f"{what} of {v.ref}"}}]))
                continue
            self._forget(txn, v)
        self._unindex_signatures(txn, out.deleted)
        return out

    def _forget(self, txn: WriteTxn, v: Version) -> None:
        """Delete a version's record and index entries; its files go at the next gc."""
        txn.delete("versions", v.id.encode())
        txn.delete(overlay.TABLE, v.id.encode())
        for p in v.parents:
            txn.delete("children", p.encode() + b"\0" + v.id.encode())
        for k in list(txn.keys("children", v.id.encode() + b"\0")):
            txn.delete("children", k)
        sketches.unindex_version(txn, v.id)

    @staticmethod
    def _unindex_signatures(txn: WriteTxn, ids: set[str]) -> None:
        """The tensor-signature index is keyed signature first: one pass over it for all the
        removed versions (TSIG_LEN bytes of signature, then the version id)."""
        if not ids:
            return
        wanted = {i.encode() for i in ids}
        for k in [bytes(k) for k in txn.keys("tsig") if bytes(k)[TSIG_LEN:] in wanted]:
            txn.delete("tsig", k)

    def _splice(self, txn: WriteTxn, versions: list[Version], gone: set[str]) -> None:
        """Each remaining version (kept, or kept as history) whose previous was deleted gets the
        nearest remaining one before it, so no record points at one that is gone."""
        by_id = {v.id: v for v in versions}
        for v in versions:
            if v.id in gone:
                continue
            prev = v.previous
            while prev is not None and prev in gone:
                prev = by_id[prev].previous if prev in by_id else None
            if prev != v.previous:
                edits = overlay.decode(txn.get(overlay.TABLE, v.id.encode()))
                txn.put(overlay.TABLE, v.id.encode(), overlay.encode(
                    [*edits, {"time": time.time(), "previous": prev,
                              "note": f"prune: previous was {by_id[v.previous].ref}" if v.previous else "prune"}]))
                if prev is not None:
                    txn.put("children", prev.encode() + b"\0" + v.id.encode(), b"")
