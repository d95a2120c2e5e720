"""Keeping the draft in the store in step with the mount (run in worker threads).

- ``StoreOp`` is a namespace change (rename, unlink, chmod) the draft in the store must
  follow; the adapter applies them in order, one model at a time (``apply_op``).
- ``stage_closed`` stores a closed staging file under whatever path its pointer has now.
- ``plan_recovery`` finds what a killed daemon left; ``commit_model`` commits one draft.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelfs.errors import NotFound
from modelfs.fs.staging import StagingArea
from modelfs.lineage import FileEntry, Version

if TYPE_CHECKING:
    from modelfs.repo import Drafts

log = logging.getLogger("modelfs.fs")


@dataclass(frozen=True, slots=True)
class StoreOp:
    """A namespace change in a head, for the draft in the store (applied in a worker thread).

    The store shows every path as the mount does, except that a file still open for
    writing shows what the path held before it was opened (or nothing): so a crash never
    commits half a file, and a rename of such a file moves the old bytes along.
    """

    kind: str  # "remove" | "rename" | "entry"
    model: str
    path: str
    new: str = ""
    entry: FileEntry | None = None


def apply_op(drafts: Drafts, op: StoreOp) -> None:
    """Apply one change to the model's draft, as the store sees the model now."""
    draft = drafts.get(op.model)
    present = set(drafts.view(op.model)) | set(draft.staged if draft else ())
    if op.kind == "remove":
        if op.path in present:
            drafts.stage_remove(op.model, op.path)
    elif op.kind == "rename":
        if op.path in present:
            drafts.stage_rename(op.model, op.path, op.new)
        elif op.new in present:
            drafts.stage_remove(op.model, op.new)
    elif op.kind == "entry":
        assert op.entry is not None
        try:
            drafts.stage_entry(op.model, op.path, op.entry)
        except NotFound:  # the file record is not stored yet: its stage_file records the mode
            log.debug("%s/%s: mode change left to the store", op.model, op.path)
    else:
        raise ValueError(f"unknown store op {op.kind!r}")


def stage_closed(drafts: Drafts, model: str, file: Path) -> tuple[str, FileEntry] | None:
    """Store a closed staging file under whatever path its pending pointer has now.

    None when no pointer names it any more (the file was removed or replaced meanwhile,
    or ``modelfs commit`` stored it first): then there is nothing to store.
    """
    draft = drafts.get(model)
    paths = sorted(p for p, f in (draft.staged.items() if draft else ()) if f == file)
    if not paths:
        file.unlink(missing_ok=True)
        return None
    try:
        return paths[0], drafts.stage_file(model, paths[0], file, expect_staged=file)
    except FileNotFoundError:
        if file.exists():
            raise
        return None  # stored by another process (its recover) between our look and now


@dataclass
class Recovery:
    """What a mount finds at start: closed files a killed daemon left, drafts to commit."""

    dead: dict[str, list[Path]] = field(default_factory=dict)  # model -> staging files
    commit: list[str] = field(default_factory=list)  # models whose drafts commit at once
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> path -> why
    removed: list[Path] = field(default_factory=list)  # orphans: never closed, deleted


def plan_recovery(drafts: Drafts, staging: StagingArea) -> Recovery:
    """Find what a killed daemon left; delete the staging files it never closed.

    A model commits at start when it has pending file changes and no other running mount
    is storing files of it. Drafts made by ``modelfs derive`` without files wait, and so do
    held drafts (a save into them failed): their closed files are stored, not committed.
    """
    r = Recovery()
    keep: set[Path] = set()
    for model in drafts.models():
        d = drafts.get(model)
        if d is None:
            continue
        keep |= set(d.staged.values())
        live = {f for f in d.staged.values() if staging.owned_by_live_mount(f)}
        dead = sorted(f for f in d.staged.values() if f not in live)
        if dead:
            r.dead[model] = dead
        if d.held:
            r.held[model] = dict(d.held)
        if (d.changes or dead) and not live and not d.held:
            r.commit.append(model)
    r.removed = staging.sweep(keep)
    return r


@dataclass(frozen=True, slots=True)
class Committed:
    version: Version | None
    changed: tuple[str, ...]  # paths whose pending change went in (removals included)
    seconds: float
    made: tuple[Version, ...] = ()  # every version made, oldest first (one per checkpoint)


def commit_model(drafts: Drafts, model: str, message: str = "", own: Path | None = None,
                 exclude: tuple[str, ...] = ()) -> Committed:
    """Commit a model's draft (worker thread); what changed, for the log.

    ``exclude``: paths whose changes belong to the next save (see ``MountCore.cut_before_ops``).
    """
    t0 = time.monotonic()
    draft = drafts.get(model)
    changed = tuple(sorted((set(draft.changes) | set(draft.staged)) - set(exclude))) if draft else ()
    made = tuple(drafts.commit_versions(model, message=message, own=own, exclude=exclude))
    return Committed(made[-1] if made else None, changed, time.monotonic() - t0, made)


def with_mode(entry: FileEntry, mode: int) -> FileEntry:
    return dataclasses.replace(entry, mode=mode & 0o7777)
