"""Drafts: changes staged for a model's next version (snapshot-on-write through the mount).

A closed file is stored at once (chunks delta-coded against the parent, file record written)
and recorded as a pending change in the same LMDB transaction, so it survives a crash of
the daemon before the version commits. Committing a draft turns every pending change of a
model into one version and clears them in one transaction. Pending file records count as
reachable for gc and fsck.

A file can also be pending as a *staged pointer*: the path of a fully written, fsync'd
staging file whose chunks are not stored yet. The mount records one on every close, which is
cheap, and stores the file in the background; `recover` (run when a mount starts and before
every commit) stores whatever pointers a killed daemon left behind.

Pending keys: ``model NUL "m"`` -> draft metadata (parents of a new model, how, and the
paths whose save failed: a *held* draft, never committed automatically), and
``model NUL "f" NUL path`` -> the file entry, a removal marker, or a staged pointer.

Every read-modify-write of a pending record happens in one write transaction against the
record's current value: a mount and a CLI may work on the same draft at once. Staging files
of a mount that is still running are its own; only those of dead mounts are recovered here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfs import locks
from modelfs.errors import Conflict, NotFound
from modelfs.lineage import FileEntry, LineageGraph, Version
from modelfs.names import check_file_path, check_model_name
from modelfs.repo import checkpoints
from modelfs.repo.adapters import ADAPTER_CONFIG, adapter_base
from modelfs.repo.chunks import ChunkCache
from modelfs.repo.importer import ChunkHints, Importer, Progress, StoreSettings
from modelfs.repo.parents import Parents
from modelfs.repo.recording import Recorder
from modelfs.repo.writelock import WriterLock
from modelfs.store import ReadTxn, Store, WriteTxn

log = logging.getLogger(__name__)

# lossy mode at commit: model -> provenance to record (or None); set by ops/lossy.py
LossyHook = Callable[[str], Mapping[str, Any] | None]


def _meta_key(model: str) -> bytes:
    return model.encode() + b"\0m"


def _file_key(model: str, path: str) -> bytes:
    return model.encode() + b"\0f\0" + path.encode()


def _staged_marker(staging: Path) -> bytes:
    return json.dumps({"staged": str(staging)}).encode()


STAGING_LOCK = ".lock"


def staging_owner_alive(staging: Path) -> bool:
    """Whether the mount that wrote this staging file still runs (it flocks its directory)."""
    return locks.held(staging.parent / STAGING_LOCK)


@dataclass
class Draft:
    """A model's pending changes as read from the store (a snapshot: changing it stores nothing)."""

    model: str
    derived_from: tuple[str, ...] = ()
    how: str | None = None
    inferred: bool = False
    inference: dict[str, Any] | None = None  # the distances behind an inferred parent
    changes: dict[str, FileEntry | None] = field(default_factory=dict)  # None: removed
    staged: dict[str, Path] = field(default_factory=dict)  # closed, not yet stored
    held: dict[str, str] = field(default_factory=dict)  # path -> why its save failed
    # files of trainer checkpoints that are versions already (see repo/checkpoints.py): shown
    # in the directory, not pending
    kept: dict[str, FileEntry] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)  # unit -> its version id

    @property
    def pending_files(self) -> bool:
        return bool(self.changes or self.staged)


class Drafts:
    """Every model's draft: staging closed files, recovering them, committing them as versions.

    Built by the facade with the collaborators it shares with imports (the writer lock,
    version recording, parent lookup), so a draft commits exactly as an import does.
    """

    def __init__(self, *, store: Store, graph: LineageGraph, cache: ChunkCache, settings: StoreSettings,
                 lock: WriterLock, recorder: Recorder, parents: Parents,
                 resolve: Callable[[str], Version]) -> None:
        self._store = store
        self._graph = graph
        self._cache = cache
        self._settings = settings
        self._lock = lock
        self._recorder = recorder
        self._parents = parents
        self._resolve = resolve
        self._lossy: LossyHook | None = None

    def set_lossy(self, hook: LossyHook | None) -> None:
        """Run `hook(model)` before each commit: lossy mode (ops/lossy.py) re-stores the draft's
        files as their gated reconstructions and returns the provenance to record (or None)."""
        self._lossy = hook

    # -- reading ---------------------------------------------------------------------------
    def _read(self, txn: ReadTxn, model: str) -> Draft | None:
        meta = txn.get("pending", _meta_key(model))
        prefix = model.encode() + b"\0f\0"
        changes: dict[str, FileEntry | None] = {}
        staged: dict[str, Path] = {}
        kept: dict[str, FileEntry] = {}
        m = json.loads(meta) if meta else {}
        cps: dict[str, str] = dict(m.get("checkpoints", {}))
        versioned: dict[str, Mapping[str, FileEntry]] = {}
        for k, v in txn.items("pending", prefix):
            d = json.loads(v)
            path = k[len(prefix):].decode()
            if "staged" in d:
                staged[path] = Path(d["staged"])
                continue
            entry = None if d.get("removed") else FileEntry.from_json(d)
            unit = checkpoints.unit_of(path) if cps and entry is not None else None
            if unit is not None and unit[0] in cps:
                if unit[0] not in versioned:
                    versioned[unit[0]] = self._graph.version(txn, cps[unit[0]]).files
                if versioned[unit[0]].get(checkpoints.inside(unit[0], path)) == entry:
                    kept[path] = entry  # type: ignore[assignment]
                    continue
            changes[path] = entry
        if meta is None and not changes and not staged and not kept:
            return None
        return Draft(model, tuple(m.get("derived_from", ())), m.get("how"), m.get("inferred", False),
                     m.get("inference"), changes, staged, dict(m.get("held", {})), kept, cps)

    def get(self, model: str) -> Draft | None:
        with self._store.read() as txn:
            return self._read(txn, model)

    def models(self) -> list[str]:
        """Models with a draft (pending changes or a derive not yet committed).

        Not a model whose draft holds nothing but trainer checkpoints that are versions
        already (``kept``): nothing of it is pending.
        """
        with self._store.read() as txn:
            out = []
            for m in self._models(txn):
                d = self._read(txn, m)
                if d is not None and (d.changes or d.staged or d.held or d.derived_from
                                      or not d.kept):
                    out.append(m)
            return out

    @staticmethod
    def _models(txn: ReadTxn) -> list[str]:
        return sorted({k.split(b"\0", 1)[0].decode() for k in txn.keys("pending")})

    def manifests(self, txn: ReadTxn) -> list[tuple[str, dict[str, FileEntry]]]:
        """(label, stored files) of every draft: what gc must keep and fsck must check."""
        out = []
        for m in self._models(txn):
            draft = self._read(txn, m)
            kept = dict(draft.kept) if draft else {}  # shown in a head even if its version goes
            out.append((f"draft {m}", kept | {p: e for p, e in (draft.changes if draft else {}).items() if e}))
        return out

    def view(self, model: str) -> dict[str, FileEntry]:
        """The files the model's directory shows now: its head (or derive parent) plus the draft."""
        with self._store.read() as txn:
            return self._view(txn, model)

    def _view(self, txn: ReadTxn, model: str) -> dict[str, FileEntry]:
        graph = self._graph
        info = graph.model(txn, model)
        draft = self._read(txn, model)
        files: dict[str, FileEntry] = {}
        if info is not None and info.head:
            files.update(graph.version(txn, info.head).files)
        elif draft is not None and draft.derived_from and draft.how == "derive":
            files.update(graph.version(txn, draft.derived_from[0]).files)
        if draft is not None:
            files.update(draft.kept)
            for path, entry in draft.changes.items():
                if entry is None:
                    files.pop(path, None)
                else:
                    files[path] = entry
        return files

    # -- staging ---------------------------------------------------------------------------
    def derive(self, parent_ref: str, model: str, how: str = "derive") -> Version:
        """Start a new model from a parent; its directory shows the parent's files at once."""
        check_model_name(model)
        parent = self._resolve(parent_ref)
        with self._store.write() as txn:
            if self._graph.model(txn, model) is not None or txn.get("pending", _meta_key(model)):
                raise Conflict(f"model {model!r} already exists")
            txn.put("pending", _meta_key(model), json.dumps(
                {"derived_from": [parent.id], "how": how}).encode())
        return parent

    def _bases(self, model: str, path: str, src: Path) -> tuple[list[Version], Draft | None]:
        with self._store.read() as txn:
            info = self._graph.model(txn, model)
            draft = self._read(txn, model)
            if info is not None and info.head:
                return [self._graph.version(txn, info.head)], draft
            if draft is not None and draft.derived_from:
                return [self._graph.version(txn, v) for v in draft.derived_from], draft
        return [], draft

    def stage_file(self, model: str, path: str, src: Path, expect_staged: Path | None = None,
                   hints: ChunkHints | None = None, progress: Progress | None = None) -> FileEntry:
        """Store a closed file as a pending change of `model` (durable when this returns).

        With `expect_staged`, the change is recorded only if the path still points at that
        staging file (it may have been renamed or replaced meanwhile), and the staging file
        is removed once stored.
        """
        check_model_name(model)
        check_file_path(path)
        with self._lock.hold():
            entry = self._stage_file(model, path, src, expect_staged, hints, progress)
        if expect_staged is not None:
            expect_staged.unlink(missing_ok=True)
        return entry

    def _stage_file(self, model: str, path: str, src: Path, expect_staged: Path | None,
                    hints: ChunkHints | None = None, progress: Progress | None = None) -> FileEntry:
        bases, draft = self._bases(model, path, src)
        inference = None
        if not bases:
            inference = self._parents.inference({path: src})
            bases = list(inference.parents) if inference else []
        importer = Importer(self._store, self._cache, self._settings, hints=hints)
        try:
            with ThreadPoolExecutor(max_workers=importer.workers) as pool:
                entry, rec = importer.store_file(path, src, self._parents.tensors(bases), pool, progress)
        finally:
            importer.close()
        for w in importer.warnings:
            log.warning("%s: %s", model, w)
        base = None
        if path == ADAPTER_CONFIG and (draft is None or draft.inferred or not draft.derived_from):
            with self._store.read() as txn:
                info = self._graph.model(txn, model)
            if info is None or not info.head:  # a new model: its first version gets the base
                base = adapter_base(src, self._resolve)
        with self._store.write() as txn:
            txn.put("files", rec.key, rec.to_bytes(), overwrite=False)
            if expect_staged is not None:
                # the pointer may have moved (rename) while we stored: follow it, whatever its path
                prefix = model.encode() + b"\0f\0"
                marker = _staged_marker(expect_staged)
                for k, v in list(txn.items("pending", prefix)):
                    if v == marker:
                        txn.put("pending", k, json.dumps(entry.to_json()).encode())
            else:
                txn.put("pending", _file_key(model, path), json.dumps(entry.to_json()).encode())
            if inference is not None:
                log.info("%s: %s", model, inference.describe())
            if base is not None:
                log.info("%s: a PEFT adapter of %s: derived from it by lora", model, base.ref)
                raw = txn.get("pending", _meta_key(model))
                m = {k: v for k, v in (json.loads(raw) if raw else {}).items()
                     if k not in ("inferred", "inference")}
                m |= {"derived_from": [base.id], "how": "lora", "adapter_base": base.ref}
                txn.put("pending", _meta_key(model), json.dumps(m).encode())
            elif inference is not None and inference.parents and txn.get("pending", _meta_key(model)) is None:
                txn.put("pending", _meta_key(model), json.dumps(
                    {"derived_from": [p.id for p in inference.parents], "how": None, "inferred": True,
                     "inference": inference.provenance()["inference"]}).encode())
        return entry

    def stage_remove(self, model: str, path: str) -> None:
        with self._store.write() as txn:
            raw = txn.get("pending", _file_key(model, path))
            staged = raw is not None and b'"staged"' in raw  # closed, not stored yet
            if path not in self._view(txn, model) and not staged:
                raise NotFound(f"{model}/{path} does not exist")
            txn.put("pending", _file_key(model, path), b'{"removed": true}')
            orphan = self._orphaned(txn, model, raw)
        if orphan is not None:
            orphan.unlink(missing_ok=True)

    def stage_rename(self, model: str, old: str, new: str) -> None:
        """Move a file within a model's draft; no data is copied or re-encoded."""
        check_file_path(new)
        with self._store.write() as txn:
            raw = txn.get("pending", _file_key(model, old))
            if raw is not None and b'"staged"' in raw:
                value = raw
            else:
                files = self._view(txn, model)
                if old not in files:
                    raise NotFound(f"{model}/{old} does not exist")
                value = json.dumps(files[old].to_json()).encode()
            replaced = txn.get("pending", _file_key(model, new))
            txn.put("pending", _file_key(model, new), value)
            txn.put("pending", _file_key(model, old), b'{"removed": true}')
            orphan = self._orphaned(txn, model, replaced)
        if orphan is not None:
            orphan.unlink(missing_ok=True)

    @staticmethod
    def _orphaned(txn: ReadTxn, model: str, raw: bytes | None) -> Path | None:
        """The staging file of a dropped pointer, if no other path points at it any more.

        A closed file removed before it was stored is garbage now: its space goes at once
        (open handles keep reading it), not at the next mount.
        """
        if raw is None or b'"staged"' not in raw:
            return None
        if any(v == raw for _, v in txn.items("pending", model.encode() + b"\0f\0")):
            return None
        return Path(json.loads(raw)["staged"])

    def record_staged(self, model: str, path: str, staging: Path) -> None:
        """Make a closed, fsync'd staging file durable as a pending change (cheap: no encoding)."""
        check_model_name(model)
        check_file_path(path)
        with self._store.write() as txn:
            txn.put("pending", _file_key(model, path), _staged_marker(staging))

    def to_recover(self, model: str, own: Path | None = None) -> int:
        """Bytes ``recover`` (so a commit) would store: the size a progress bar counts to."""
        draft = self.get(model)
        return sum(f.stat().st_size for f in (draft.staged.values() if draft else ())
                   if (f.parent == own or not staging_owner_alive(f)) and f.exists())

    def recover(self, model: str | None = None, own: Path | None = None,
                progress: Progress | None = None) -> list[str]:
        """Store the staged pointers dead mounts left pending; returns what it stored.

        Pointers into a running mount's staging directory are that mount's to store, except
        those under ``own`` (the calling mount's directory, which retries its own).
        """
        done = []
        for name in [model] if model else self.models():
            draft = self.get(name)
            for path, staging in sorted((draft.staged if draft else {}).items()):
                if staging.parent != own and staging_owner_alive(staging):
                    continue
                try:
                    self.stage_file(name, path, staging, expect_staged=staging, progress=progress)
                except FileNotFoundError:
                    if staging.exists():
                        raise
                    self._drop_pointer(name, path, staging)
                    continue
                done.append(f"{name}/{path}")
        return done

    def _drop_pointer(self, model: str, path: str, staging: Path) -> None:
        """A pointer whose staging file is gone: drop it, unless someone stored it meanwhile."""
        with self._store.write() as txn:
            if txn.get("pending", _file_key(model, path)) != _staged_marker(staging):
                return  # stored (or moved) by another process: its record stands
            log.error("%s/%s: staging file %s is gone; dropping the change", model, path, staging)
            txn.delete("pending", _file_key(model, path))

    def hold(self, model: str, path: str, why: str) -> None:
        """A save into ``model`` failed: its draft must not commit until the user says so."""
        with self._store.write() as txn:
            raw = txn.get("pending", _meta_key(model))
            m = json.loads(raw) if raw else {}
            m.setdefault("held", {})[path] = why
            txn.put("pending", _meta_key(model), json.dumps(m).encode())

    def release_hold(self, model: str, path: str) -> None:
        """``path`` was saved whole after all: it no longer holds the draft back."""
        with self._store.write() as txn:
            raw = txn.get("pending", _meta_key(model))
            m = json.loads(raw) if raw else {}
            if path not in m.get("held", {}):
                return
            del m["held"][path]
            if not m["held"]:
                del m["held"]
            if m:
                txn.put("pending", _meta_key(model), json.dumps(m).encode())
            else:
                txn.delete("pending", _meta_key(model))

    def stage_entry(self, model: str, path: str, entry: FileEntry) -> None:
        """Record an already stored file (e.g. a chmod or a copy of a file of another version)."""
        check_file_path(path)
        with self._store.write() as txn:
            if txn.get("files", entry.key) is None:
                raise NotFound(f"file {entry.blake3_hex} is not in the store")
            txn.put("pending", _file_key(model, path), json.dumps(entry.to_json()).encode())

    def discard(self, model: str) -> list[str]:
        """Drop the model's draft; staging files of dead mounts go with it. Returns the paths."""
        gone: list[Path] = []
        with self._store.write() as txn:
            draft = self._read(txn, model)
            if draft is None:
                return []
            for k in list(txn.keys("pending", model.encode() + b"\0")):
                txn.delete("pending", k)
            gone = [f for f in draft.staged.values() if not staging_owner_alive(f)]
        for f in gone:
            f.unlink(missing_ok=True)
        return sorted(set(draft.changes) | set(draft.staged) | set(draft.held))

    # -- committing ------------------------------------------------------------------------
    def commit(self, model: str, message: str = "", how: str | None = None,
               provenance: Mapping[str, Any] | None = None, force: bool = False,
               own: Path | None = None, exclude: Collection[str] = (),
               progress: Progress | None = None) -> Version | None:
        """Turn the model's draft into a version (None when it changes nothing), atomically.

        The newest of the versions ``commit_versions`` makes (one, unless trainer
        checkpoints were written: then one per checkpoint first).
        """
        made = self.commit_versions(model, message, how, provenance, force, own, exclude, progress)
        return made[-1] if made else None

    def commit_versions(self, model: str, message: str = "", how: str | None = None,
                        provenance: Mapping[str, Any] | None = None, force: bool = False,
                        own: Path | None = None, exclude: Collection[str] = (),
                        progress: Progress | None = None) -> list[Version]:
        """Turn the model's draft into versions in one transaction; the versions made, in order.

        Each new (or changed) trainer checkpoint in the directory (``repo/checkpoints.py``)
        becomes a version of its own, in step order; the files outside checkpoints then
        become one more version if they differ from the newest one. ``exclude`` names paths
        whose pending changes wait for the next commit (the mount's next save, begun already).
        A held draft (a save into it failed) commits only with ``force``, which also commits
        around files still being stored: those stay pending for the next version.
        """
        self.recover(model, own=own, progress=progress)  # the long part: a bar counts its bytes
        extra = self._lossy(model) if self._lossy is not None else None
        if extra:  # lossy mode replaced the draft's files by their reconstructions
            provenance = dict(provenance or {}) | dict(extra)
        with self._store.write() as txn:
            draft = self._read(txn, model)
            if draft is None:
                return []
            if draft.held and not force:
                why = "; ".join(f"{p}: {r}" for p, r in sorted(draft.held.items()))
                raise Conflict(f"{model}: not committed, a save into it failed ({why}); "
                               f"`modelfs commit {model} --force` commits what was closed, "
                               f"`modelfs discard {model}` drops it")
            if set(draft.staged) - set(exclude) and not force:
                raise Conflict(f"{model}: files are still being stored; commit again in a moment")
            info = self._graph.model(txn, model)
            files = self._view(txn, model)
            head_files = dict(self._graph.version(txn, info.head).files) if info and info.head else None
            for p in exclude:  # as the head has it
                if head_files is not None and p in head_files:
                    files[p] = head_files[p]
                else:
                    files.pop(p, None)
            cps = checkpoints.find(files)
            keep = {_file_key(model, p) for p in set(draft.staged) | set(exclude)}
            keep |= {_file_key(model, p) for p in files if checkpoints.unit_of(p) is not None}
            for k in list(txn.keys("pending", model.encode() + b"\0")):
                if k not in keep:
                    txn.delete("pending", k)
            for path, e in files.items():
                if txn.get("files", e.key) is None:
                    raise NotFound(f"pending file {path} ({e.blake3_hex}) is missing from the store")
            made = self._record_checkpoints(txn, model, draft, cps, head_files, message, provenance)
            top = {p: e for p, e in files.items()  # a checkpoint a version holds stays in it
                   if checkpoints.unit_of(p) is None or (head_files or {}).get(p) == e}
            if made:  # the files outside checkpoints, over the newest checkpoint
                top = dict(made[-1].files)
                for p, e in draft.changes.items():
                    if checkpoints.unit_of(p) is None and p not in exclude:
                        if e is None:
                            top.pop(p, None)
                        else:
                            top[p] = e
                head_files = dict(made[-1].files)
            if (head_files is not None and head_files == top) or (head_files is None and not top):
                return made  # identical bytes rewritten: costs nothing, no new version
            derived = list(draft.derived_from) if head_files is None else []
            prov = dict(provenance or {})
            if draft.inferred and derived:
                prov["inferred_parent"] = self._graph.version(txn, derived[0]).ref
                if draft.inference:
                    prov["inference"] = draft.inference
            if how is None:
                how = draft.how if head_files is None else "snapshot"
            made.append(self._recorder.record_in(txn, model, top, [], derived, how, message, prov))
        log.info("committed %s from %d pending changes", ", ".join(f"{v.ref} ({v.id})" for v in made),
                 len(draft.changes))
        return made

    def _record_checkpoints(self, txn: WriteTxn, model: str, draft: Draft,
                            cps: dict[str, checkpoints.Checkpoint],
                            head_files: dict[str, FileEntry] | None, message: str,
                            provenance: Mapping[str, Any] | None) -> list[Version]:
        """A version per new or changed checkpoint, in step order; the draft remembers them."""
        known = {u: v for u, v in draft.checkpoints.items() if u in cps}
        head = head_files or {}

        def new(c: checkpoints.Checkpoint) -> bool:
            """Written since its version (or the head: a checkpoint a version holds as is)."""
            if c.unit in known:
                return dict(self._graph.version(txn, known[c.unit]).files) != c.files
            return any(head.get(p) != e for p, e in c.paths.items())

        todo = [c for c in checkpoints.in_step_order(list(cps.values())) if new(c)]
        made: list[Version] = []
        derived = list(draft.derived_from) if head_files is None else []
        for c in todo:
            prov = dict(provenance or {}) | {"step": c.step, "checkpoint": c.unit}
            if draft.inferred and derived:
                prov["inferred_parent"] = self._graph.version(txn, derived[0]).ref
            # a trainer's first checkpoint of a model made from another is a fine-tune of it
            how = (draft.how or ("finetune" if derived else "checkpoint")) if head_files is None \
                else "checkpoint"
            v = self._recorder.record_in(txn, model, c.files, [], derived, how, message, prov)
            made.append(v)
            known[c.unit] = v.id
            derived, head_files = [], dict(c.files)
        if known:
            txn.put("pending", _meta_key(model), json.dumps({"checkpoints": known}).encode())
        return made
