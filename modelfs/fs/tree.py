"""What a store looks like as a filesystem: inodes, names, attributes, xattrs.

This is the synchronous core (borg's ``vfs.py`` next to its ``fuse.py``): it knows models,
versions and lineage and answers lookups, listings, attributes and extended attributes
with plain values. It never imports pyfuse3 or trio, so it is tested directly; the
adapter turns its answers into FUSE replies and its ``FsError`` into ``FUSEError``.

Naming (documented in docs/mount.md)::

    /<model>/                      head of the model, writable (``heads.py``): the head
                                   version overlaid with the model's draft
    /<model>@<n>/                  version n, by lookup only (the root lists heads only)
    /.versions/, /.lineage/        generated views (``views.py``)

Each node's key type (``nodes.py``) says what it is; the tree keeps one handler per key
type: the root, heads and versions here, the views in ``views.py``. Inode numbers
(``inodes.py``) are handed out on first sight and never reused while mounted. Everything
under a version is immutable and gets long kernel timeouts; only names that move (the
model list, what a head shows, a version's children) get short ones. Writes to heads are
``headwrites.py``'s.
"""

from __future__ import annotations

import errno
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

from modelfs.errors import InvalidName, ModelfsError, NotFound
from modelfs.fs.heads import Content, Head, parent_of
from modelfs.fs.inodes import InodeTable
from modelfs.fs.kinds import tree_kinds
from modelfs.fs.nodes import (
    DIR_KINDS,
    LONG_TIMEOUT,
    ROOT_INO,
    SHORT_TIMEOUT,
    XATTR_PREFIX,
    Attr,
    DirIndex,
    FsError,
    HeadDirKey,
    HeadFileKey,
    HeadKey,
    Invalidations,
    Key,
    Kind,
    ModelVersionsKey,
    Node,
    NodeKind,
    RootKey,
    VersionFileKey,
    VersionsKey,
    build_dir_index,
    ns,
    split_ref,
)
from modelfs.fs.staged import Staged
from modelfs.fs.staging import StagingArea
from modelfs.fs.views import view_kinds
from modelfs.lineage import FileEntry, ModelInfo, Version
from modelfs.names import NAME_MAX, check_model_name, name_bytes
from modelfs.repo import Draft

__all__ = ["LONG_TIMEOUT", "ROOT_INO", "SHORT_TIMEOUT", "Attr", "FsError", "Kind", "Tree",
           "build_dir_index", "split_ref"]


class DraftsView(Protocol):
    """The part of ``modelfs.repo.Drafts`` the tree reads."""

    def get(self, model: str) -> Draft | None: ...

    def view(self, model: str) -> dict[str, FileEntry]: ...

    def models(self) -> list[str]: ...


class RepoView(Protocol):
    """The part of ``modelfs.repo.Repo`` the tree reads."""

    def models(self) -> list[ModelInfo]: ...

    def versions(self, model: str) -> list[Version]: ...

    def version(self, version_id: str) -> Version: ...

    def resolve(self, ref: str) -> Version: ...

    def children(self, version_id: str) -> list[Version]: ...

    def data_version(self) -> int: ...

    def drafts(self) -> DraftsView: ...

    def tags(self, model: str | None = None) -> list[tuple[str, str, Version]]: ...

    def lineage_edits(self) -> int: ...


class Tree:
    """The inode table and the naming rules of the mount, over a ``RepoView``.

    Without a ``StagingArea`` the mount is read-only (every write is EROFS); with one, heads
    are writable.
    """

    def __init__(
        self,
        repo: RepoView,
        *,
        root_xattrs: Callable[[], Mapping[str, bytes]] | None = None,
        head_xattrs: Callable[[str], Mapping[str, bytes]] | None = None,
        staging: StagingArea | None = None,
        refresh_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cache_versions: int = 4096,
    ) -> None:
        self.repo = repo
        self.staging = staging
        self._root_xattrs = root_xattrs or (lambda: {})
        self._head_xattrs = head_xattrs or (lambda model: {})
        self._refresh_interval = refresh_interval
        self._clock = clock
        self.mounted_at = wall_clock()
        self.inodes = InodeTable()
        self._versions: OrderedDict[str, Version] = OrderedDict()
        self._indexes: OrderedDict[str, DirIndex] = OrderedDict()
        self._cache_versions = cache_versions
        self._models: dict[str, ModelInfo] = {}
        self.draft_models: set[str] = set()
        self.heads: dict[str, Head] = {}
        self._data_version: int | None = None
        self._edits: int | None = None  # repo.lineage_edits() when the version cache was filled
        self._checked_at = float("-inf")
        self.pending = Invalidations()
        self._kinds: dict[type[Key], NodeKind] = {**tree_kinds(self), **view_kinds(self)}
        self.inodes.get(RootKey(), ROOT_INO)
        self.refresh(force=True)

    @property
    def writable(self) -> bool:
        return self.staging is not None

    def node(self, ino: int) -> Node:
        return self.inodes.node(ino)

    @property
    def inode_count(self) -> int:
        return len(self.inodes)

    def ino_of(self, key: Key) -> int | None:
        """The inode of an identity if one was handed out (for tests and invalidation)."""
        return self.inodes.ino_of(key)

    # ---- repo views (cached: versions are immutable) -----------------------------------

    def version(self, vid: str) -> Version:
        v = self._versions.get(vid)
        if v is None:
            v = self.repo.version(vid)
            self.remember(v)
        else:
            self._versions.move_to_end(vid)
        return v

    def remember(self, v: Version) -> None:
        self._versions[v.id] = v
        if len(self._versions) > self._cache_versions:
            self._versions.popitem(last=False)

    def index(self, vid: str) -> DirIndex:
        idx = self._indexes.get(vid)
        if idx is None:
            idx = self._indexes[vid] = build_dir_index(self.version(vid).files)
            if len(self._indexes) > self._cache_versions:
                self._indexes.popitem(last=False)
        return idx

    def resolve_ref(self, ref: str) -> Version | None:
        try:
            v = self.repo.resolve(ref)
        except (NotFound, ModelfsError):
            return None
        self.remember(v)
        return v

    def models(self) -> dict[str, ModelInfo]:
        """Models with at least one version."""
        self.refresh()
        return self._models

    def head_names(self) -> list[str]:
        """Every directory at the root: models, drafts (``modelfs derive``), and new ones."""
        self.refresh()
        return sorted(set(self._models) | set(self.heads) | self.draft_models)

    def versions_of(self, model: str) -> list[Version]:
        if model not in self.models():
            return []
        vs = self.repo.versions(model)
        for v in vs:
            self.remember(v)
        return vs

    def related(self, vid: str, rel: str) -> list[Version]:
        if rel == "parents":
            seen: dict[str, Version] = {}
            for pid in self.version(vid).parents:
                if pid not in seen:
                    seen[pid] = self.version(pid)
            return list(seen.values())
        return list(self.repo.children(vid))

    def tags_of(self, model: str) -> list[tuple[str, Version]]:
        """A model's tags and what they name now (`modelfs tag`), for ``.versions/<model>``."""
        return [(t, v) for _, t, v in self.repo.tags(model)]

    def is_head_name(self, name: str) -> bool:
        if name in self.models() or name in self.heads or name in self.draft_models:
            return True
        try:
            check_model_name(name)
        except InvalidName:
            return False
        return self.repo.drafts().get(name) is not None  # a `modelfs derive` just now

    def refresh(self, force: bool = False) -> Invalidations:
        """Reload the model list when a commit has landed; queue what the kernel must forget.

        Checked at most every ``refresh_interval`` seconds (the adapter also polls), so a
        burst of lookups costs one ``data_version()`` read.
        """
        now = self._clock()
        if not force and now - self._checked_at < self._refresh_interval:
            return Invalidations()
        self._checked_at = now
        if self.writable:
            self.draft_models = set(self.repo.drafts().models())
        dv = self.repo.data_version()
        if dv == self._data_version:
            return Invalidations()
        self._data_version = dv
        old = self._models
        new = {m.name: m for m in self.repo.models()}
        self._models = new
        inv = Invalidations()
        inv.entries += self._forget_gone(old, new)
        if set(old) != set(new):
            inv.inodes.append(ROOT_INO)
            vino = self.ino_of(VersionsKey())
            if vino is not None:
                inv.inodes.append(vino)
        for name, info in new.items():
            before = old.get(name)
            if before is not None and before.head == info.head:
                continue
            head_ino = self.ino_of(HeadKey(name))
            if head_ino is not None:
                inv.inodes.append(head_ino)
            head = self.heads.get(name)
            if head is not None and head.version != info.head:
                if head.busy:
                    head.stale = True
                else:
                    inv.entries += self._reconcile(head, info.head)
            vm = self.ino_of(ModelVersionsKey(name))
            if vm is not None:
                inv.inodes.append(vm)
        self.pending.entries += inv.entries
        self.pending.inodes += inv.inodes
        return inv

    def _forget_gone(self, old: Mapping[str, ModelInfo], new: Mapping[str, ModelInfo]
                     ) -> list[tuple[int, str]]:
        """After `modelfs rm`, `mv` or `prune` (or an annotation): names the kernel must forget.

        Cached versions are re-read (an annotation or a rename changes what they say); the
        names of versions that are gone, and the heads of models that are gone, are dropped.
        """
        out: list[tuple[int, str]] = []
        edits = self.repo.lineage_edits()
        if edits == self._edits:  # a commit: every cached version still reads the same
            cached = []
        else:
            self._edits = edits
            cached, self._versions = list(self._versions.values()), OrderedDict()
        for v in cached:
            try:
                now = self.repo.version(v.id)
            except NotFound:
                out.append((ROOT_INO, v.ref))
                continue
            if now.ref != v.ref or v.model not in new:
                out.append((ROOT_INO, v.ref))
        for name in set(old) - set(new):
            head = self.heads.get(name)
            if head is not None and not head.busy:
                del self.heads[name]
            out.append((ROOT_INO, name))
        return out

    def take_pending(self) -> Invalidations:
        inv, self.pending = self.pending, Invalidations()
        return inv

    # ---- heads -------------------------------------------------------------------------

    def head(self, model: str) -> Head | None:
        """A model's writable directory, loaded on first use from its head and its draft."""
        h = self.heads.get(model)
        if h is not None:
            return h
        info = self.models().get(model)
        vid = info.head if info else None
        files: dict[str, Content] = {}
        if self.staging is None:  # read-only: the head version, nothing pending
            if vid is None:
                return None
            files.update(self.version(vid).files)
        else:
            drafts = self.repo.drafts()
            draft = drafts.get(model)
            if info is None and draft is None:
                return None
            files.update(drafts.view(model))
            for path, file in (draft.staged if draft else {}).items():
                st = self.staging.adopt(model, path, file)
                if st is not None:
                    files[path] = st
        mtime = ns(self.version(vid).time) if vid else ns(self.mounted_at)
        h = self.heads[model] = Head(model, vid, files, mtime)
        return h

    def need_head(self, model: str) -> Head:
        h = self.head(model)
        if h is None:
            raise FsError(errno.ENOENT, model)
        return h

    def loaded_heads(self) -> dict[str, Head]:
        return self.heads

    def dir_ino(self, model: str, d: str) -> int | None:
        return self.ino_of(HeadKey(model)) if d == "" else self.ino_of(HeadDirKey(model, d))

    def _reconcile(self, head: Head, vid: str | None) -> list[tuple[int, str]]:
        """Follow a commit from elsewhere; what the kernel must forget."""
        head.stale = False
        out = []
        for path, before in head.reconcile(self.repo.drafts().view(head.model), vid):
            self.inodes.retire(HeadFileKey(head.model, path), before)
            d = self.dir_ino(head.model, parent_of(path))
            if d is not None:
                out.append((d, path.rpartition("/")[2]))
        return out

    def settle(self, model: str) -> None:
        """The adapter finished a store operation on ``model``: catch up with what it missed."""
        head = self.heads.get(model)
        if head is not None and head.busy == 0 and head.stale:
            info = self.models().get(model)
            self.pending.entries += self._reconcile(head, info.head if info else None)

    def resync(self, model: str) -> None:
        """Show what the store holds for ``model`` now (its draft changed from elsewhere)."""
        head = self.heads.get(model)
        if head is None:
            return
        if head.busy:
            head.stale = True
            return
        info = self.models().get(model)
        self.pending.entries += self._reconcile(head, info.head if info else None)

    def follow_checkpoints(self, model: str, before: str | None, version: Version) -> None:
        """This mount committed trainer checkpoints as versions of ``model``: the head's top
        shows the newest one's files now (``repo/checkpoints.py``). What the head shows
        otherwise (the checkpoint directories, files written or removed meanwhile) stays: the
        view is built from the head itself, never from a store a removal has not reached yet.
        """
        head = self.heads.get(model)
        if head is None:
            return
        old = self.version(before).files if before else {}
        view = {p: c for p, c in head.files.items()
                if isinstance(c, FileEntry) and old.get(p) != c}
        view.update(version.files)
        for path, was in head.reconcile(view, version.id):
            self.inodes.retire(HeadFileKey(model, path), was)
            d = self.dir_ino(model, parent_of(path))
            if d is not None:
                self.pending.entries.append((d, path.rpartition("/")[2]))

    def committed(self, model: str, version: Version | None) -> None:
        """This mount committed ``model``: its head is that version now (nothing it shows moves)."""
        head = self.heads.get(model)
        if version is not None:
            self.remember(version)
            if head is not None:
                head.version = version.id
        self.refresh(force=True)

    # ---- answers -------------------------------------------------------------------------

    def attr(self, n: Node, entry_timeout: float | None = None) -> Attr:
        return self._kinds[type(n.key)].attr(n, entry_timeout)

    def getattr(self, ino: int) -> Attr:
        return self.attr(self.node(ino))

    def lookup(self, parent: int, name: str) -> Attr:
        """The attributes of ``name`` in directory ``parent``; FsError(ENOENT) if absent."""
        p = self.node(parent)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        if name == ".":
            return self.attr(p)
        if name == "..":
            return self.attr(self.node(p.parent))
        if name_bytes(name) > NAME_MAX:  # as a local filesystem answers (FUSE allows 1024)
            raise FsError(errno.ENAMETOOLONG, name[:40])
        child = self._child(p, name)
        if child is None:
            raise FsError(errno.ENOENT, name)
        return self.attr(child, SHORT_TIMEOUT if self._moving(p, child) else None)

    @staticmethod
    def _moving(p: Node, child: Node) -> bool:
        """Names under the root and in heads move (commits, writes); a version's never do."""
        return p.kind is Kind.ROOT and child.kind is Kind.HEAD or p.in_head

    def _child(self, p: Node, name: str) -> Node | None:
        """The node ``name`` names in directory ``p``, creating its inode on first sight."""
        if not name or "/" in name or "\0" in name:
            return None
        return self._kinds[type(p.key)].child(p, name)

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """The entries of a directory, in a stable order (no '.' and '..')."""
        p = self.node(ino)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        out = []
        for name in self._kinds[type(p.key)].names(p):
            try:
                child = self._child(p, name)
                if child is None:
                    continue
                out.append((name, self.attr(child, SHORT_TIMEOUT if self._moving(p, child)
                                            else None)))
            except NotFound:  # its version removed while listed (`modelfs rm`, `prune`)
                continue
            except FsError as e:  # gone while listed (`modelfs rm` from elsewhere): leave it out
                if e.errno != errno.ENOENT:
                    raise
        return out

    def readlink(self, ino: int) -> str:
        n = self.node(ino)
        if n.kind is not Kind.LINK:
            raise FsError(errno.EINVAL)
        return n.target

    def head_content(self, n: Node) -> Content:
        """What a file inside a head shows now (a gone one: what it showed last)."""
        if isinstance(n.key, HeadFileKey):
            c = self.need_head(n.model).files.get(n.path)
            if c is None:
                raise FsError(errno.ENOENT, n.path)
            return c
        if n.entry is not None:
            return n.entry
        st = n.gone() if n.gone is not None else None
        if st is not None:
            return st
        raise FsError(errno.ESTALE, f"{n.path} was removed")

    def content(self, ino: int) -> FileEntry | Staged | bytes:
        """What a read of ``ino`` returns: a stored file, a staging file, or generated bytes."""
        n = self.node(ino)
        if isinstance(n.key, VersionFileKey):
            assert n.entry is not None
            return n.entry
        if n.kind is Kind.FILE:
            return self.head_content(n)
        if n.kind is Kind.TEXT:
            return n.text
        if n.kind in DIR_KINDS:
            raise FsError(errno.EISDIR)
        raise FsError(errno.EINVAL)

    def keep_cache(self, ino: int) -> bool:
        """Whether pages the kernel cached for ``ino`` on an earlier open are still right.

        Versions never change. A head's file keeps its inode when it is rewritten in place
        (O_TRUNC, r+), and a reader that opened it before may have cached the old bytes.
        """
        return not self.node(ino).rewritten

    def is_writable(self, ino: int) -> bool:
        """The root (mkdir makes a model), heads and what is in them; never a version."""
        n = self.node(ino)
        return self.writable and (isinstance(n.key, (RootKey, HeadFileKey)) or n.in_head)

    def model_dir(self, ino: int) -> str | None:
        """The model whose head (or a directory in it) ``ino`` is; None for anything else."""
        n = self.node(ino)
        return n.model if n.in_head else None

    # ---- extended attributes -----------------------------------------------------------

    def xattrs(self, ino: int) -> dict[str, bytes]:
        """Every extended attribute of a node (names with the ``user.modelfs.`` prefix)."""
        n = self.node(ino)
        if n.kind is Kind.ROOT:
            return dict(self._root_xattrs())
        vid = n.vid
        extra: dict[str, bytes] = {}
        entry = n.entry
        if n.in_head or isinstance(n.key, HeadFileKey):
            head = self.need_head(n.model)
            vid = head.version
            if isinstance(n.key, HeadKey):
                extra = dict(self._head_xattrs(n.model))
            if isinstance(n.key, HeadFileKey):
                c = head.files.get(n.path)
                entry = c if isinstance(c, FileEntry) else None
        out = {}
        if vid is not None:
            v = self.version(vid)
            out = {
                XATTR_PREFIX + "version": v.id.encode(),
                XATTR_PREFIX + "ref": v.ref.encode(),
                XATTR_PREFIX + "parents": ",".join(v.parents).encode(),
                XATTR_PREFIX + "parent_refs": ",".join(self.version(p).ref
                                                       for p in v.parents).encode(),
                XATTR_PREFIX + "how": (v.how or "").encode(),
            }
            lossy = v.provenance.get("lossy")
            if isinstance(lossy, dict):  # a lossy version (docs/lossy.md): its error figures
                out[XATTR_PREFIX + "lossy"] = json.dumps(
                    {k: lossy.get(k) for k in ("scheme", "max_error_ratio", "error_ratio", "worst_tensor",
                                               "step_min", "step_max")}, sort_keys=True).encode()
        if n.kind is Kind.FILE and entry is not None:
            out[XATTR_PREFIX + "blake3"] = entry.blake3_hex.encode()
            out[XATTR_PREFIX + "format"] = entry.format.encode()
        out.update(extra)
        return out
