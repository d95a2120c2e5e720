"""What a store looks like as a filesystem: inodes, names, attributes, xattrs.

This is the synchronous core (borg's ``vfs.py`` next to its ``fuse.py``): it knows models,
versions and lineage and answers lookups, listings, attributes and extended attributes
with plain values. It never imports pyfuse3 or trio, so it is tested directly; the adapter
in ``ops.py`` turns its answers into FUSE replies and its ``FsError`` into ``FUSEError``.

Naming (documented in docs/mount.md)::

    /<model>/                      head of the model, writable (``heads.py``): the head
                                   version overlaid with the model's draft
    /<model>@<n>/                  version n, by lookup only (the root lists heads only)
    /.versions/<model>/<n>         symlink -> ../../<model>@<n>   (a listable index)
    /.lineage/<model>@<n>/         version  -> ../../<model>@<n>
                                   parents/<ref>, children/<ref> -> ../../<ref>
                                   how, info.json

Inode numbers are handed out on first sight of a node's identity and never reused, so
they are stable for the life of the mount. Everything under a version is immutable and
gets long kernel timeouts; only names that move (the model list, what a head shows, a
version's children) get short ones. A file in a head is one inode per path, as on a
local disk: a rename moves the inode, writes change it in place, and a file replaced or
changed from outside the mount (a commit by the CLI) keeps its inode for the handles
that have it open while the path gets a new one.

Writes change only memory here; each returns the ``StoreOp``s the draft in the store must
follow, which the adapter applies in a worker thread.
"""

from __future__ import annotations

import enum
import errno
import json
import stat
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelfs.errors import InvalidName, ModelfsError, NameTooLong, NotFound
from modelfs.fs.draftsync import StoreOp, with_mode
from modelfs.fs.heads import Content, Head, HeadError, join, parent_of, under
from modelfs.fs.staged import Staged
from modelfs.fs.staging import StagingArea
from modelfs.lineage import FileEntry, ModelInfo, Version
from modelfs.names import NAME_MAX, check_file_path, check_model_name, name_bytes
from modelfs.repo.drafts import Draft

ROOT_INO = 1
LONG_TIMEOUT = 24 * 3600.0  # versions never change: let the kernel keep them a day
SHORT_TIMEOUT = 1.0  # names that move when a commit lands
VERSIONS_DIR = ".versions"
LINEAGE_DIR = ".lineage"
XATTR_PREFIX = "user.modelfs."


class FsError(Exception):
    """An errno for the kernel (ENOENT, EROFS, ...); the adapter raises it as FUSEError."""

    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(err, what)
        self.errno = err
        self.what = what


class DraftsView(Protocol):
    """The part of ``modelfs.repo.drafts.Drafts`` the tree reads."""

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


class Kind(enum.Enum):
    ROOT = "root"
    HEAD = "head"  # /<model>: the head version's files and the draft, writable
    VDIR = "vdir"  # /<model>@<n>: a version's root directory
    SUBDIR = "subdir"  # a directory inside a version (key "v") or a head (key "hd")
    FILE = "file"  # a checkpoint file: in a version ("v"), a head ("hf"), or gone
    LINK = "link"  # a symlink of the .versions / .lineage views
    TEXT = "text"  # a small generated file (.lineage/<ref>/how, info.json)
    VIEW = "view"  # a generated directory (.versions, .lineage and below)


DIR_KINDS = frozenset({Kind.ROOT, Kind.HEAD, Kind.VDIR, Kind.SUBDIR, Kind.VIEW})


@dataclass(slots=True)
class Node:
    """What one inode stands for; ``key`` is its identity, so equal keys share an inode."""

    ino: int
    parent: int
    kind: Kind
    key: tuple[Any, ...]
    vid: str | None = None  # the version this node shows (or describes)
    path: str = ""  # path inside the version or head; "" for its root
    entry: FileEntry | None = None  # a version's file, or what a gone head file held
    model: str = ""  # for nodes inside a head
    rewritten: bool = False  # a head file opened for writing: pages the kernel has may be old
    gone: weakref.ref[Staged] | None = None  # a gone unstored file, while a handle has it
    target: str = ""  # symlink target
    text: bytes = b""


@dataclass(frozen=True, slots=True)
class Attr:
    """The attributes of one node, ready to be turned into a FUSE entry."""

    ino: int
    mode: int
    nlink: int
    size: int
    mtime_ns: int
    entry_timeout: float
    attr_timeout: float

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(slots=True)
class Invalidations:
    """Kernel cache entries made stale by a commit; the adapter sends them to the kernel."""

    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent inode, name)
    inodes: list[int] = field(default_factory=list)  # attributes only

    def __bool__(self) -> bool:
        return bool(self.entries or self.inodes)


# One directory of a version: name -> FileEntry, or None for a subdirectory.
DirIndex = dict[str, dict[str, FileEntry | None]]


def build_dir_index(files: Mapping[str, FileEntry]) -> DirIndex:
    """Directories of a version from its flat ``path -> entry`` manifest."""
    dirs: DirIndex = {"": {}}
    for path, entry in files.items():
        parts = path.split("/")
        for i in range(len(parts) - 1):
            parent, sub = "/".join(parts[:i]), "/".join(parts[: i + 1])
            dirs.setdefault(parent, {})[parts[i]] = None
            dirs.setdefault(sub, {})
        dirs.setdefault("/".join(parts[:-1]), {})[parts[-1]] = entry
    return {d: dict(sorted(names.items())) for d, names in dirs.items()}


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _ns(t: float) -> int:
    return int(t * 1e9)


def split_ref(name: str) -> tuple[str, int] | None:
    """``model@n`` with n in canonical decimal form, else None (one name per version dir)."""
    model, at, num = name.rpartition("@")
    if not at or not model or not num.isdigit() or str(int(num)) != num or int(num) < 1:
        return None
    return model, int(num)


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
        self._mounted_at = wall_clock()
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[Any, ...], int] = {}
        self._next_ino = ROOT_INO
        self._versions: OrderedDict[str, Version] = OrderedDict()
        self._indexes: OrderedDict[str, DirIndex] = OrderedDict()
        self._cache_versions = cache_versions
        self._models: dict[str, ModelInfo] = {}
        self._draft_models: set[str] = set()
        self._heads: dict[str, Head] = {}
        self._data_version: int | None = None
        self._checked_at = float("-inf")
        self.pending = Invalidations()
        self._node(("root",), ROOT_INO, Kind.ROOT)
        self.refresh(force=True)

    @property
    def writable(self) -> bool:
        return self.staging is not None

    # ---- inode table -------------------------------------------------------------------

    def _node(self, key: tuple[Any, ...], parent: int, kind: Kind, **kw: Any) -> Node:
        ino = self._by_key.get(key)
        if ino is not None:
            return self._nodes[ino]
        ino = self._next_ino
        self._next_ino += 1
        node = Node(ino, parent if kind is not Kind.ROOT else ino, kind, key, **kw)
        self._nodes[ino] = node
        self._by_key[key] = ino
        return node

    def node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT, f"inode {ino} unknown") from None

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

    def ino_of(self, key: tuple[Any, ...]) -> int | None:
        """The inode of an identity if one was handed out (for tests and invalidation)."""
        return self._by_key.get(key)

    def _retire(self, key: tuple[Any, ...], content: Content | None = None) -> int | None:
        """A head name no longer shows this inode: it keeps what it held for open handles."""
        ino = self._by_key.pop(key, None)
        if ino is None:
            return None
        n = self._nodes[ino]
        n.key = ("gone", ino)
        self._by_key[n.key] = ino
        if isinstance(content, Staged):  # keep its attributes, not its staging file
            if content.entry is not None:
                n.entry = content.entry
            else:
                n.gone = weakref.ref(content)
        elif isinstance(content, FileEntry):
            n.entry = content
        return ino

    def _rekey(self, old: tuple[Any, ...], new: tuple[Any, ...], parent: int | None = None) -> None:
        ino = self._by_key.pop(old, None)
        if ino is None:
            return
        n = self._nodes[ino]
        n.key, n.path = new, new[2]
        if parent is not None:
            n.parent = parent
        self._by_key[new] = ino

    # ---- repo views (cached: versions are immutable) -----------------------------------

    def version(self, vid: str) -> Version:
        v = self._versions.get(vid)
        if v is None:
            v = self.repo.version(vid)
            self._remember(v)
        else:
            self._versions.move_to_end(vid)
        return v

    def _remember(self, v: Version) -> None:
        self._versions[v.id] = v
        if len(self._versions) > self._cache_versions:
            self._versions.popitem(last=False)

    def _index(self, vid: str) -> DirIndex:
        idx = self._indexes.get(vid)
        if idx is None:
            idx = self._indexes[vid] = build_dir_index(self.version(vid).files)
            if len(self._indexes) > self._cache_versions:
                self._indexes.popitem(last=False)
        return idx

    def _resolve(self, ref: str) -> Version | None:
        try:
            v = self.repo.resolve(ref)
        except (NotFound, ModelfsError):
            return None
        self._remember(v)
        return v

    def models(self) -> dict[str, ModelInfo]:
        """Models with at least one version."""
        self.refresh()
        return self._models

    def head_names(self) -> list[str]:
        """Every directory at the root: models, drafts (``modelfs derive``), and new ones."""
        self.refresh()
        return sorted(set(self._models) | set(self._heads) | self._draft_models)

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
            self._draft_models = set(self.repo.drafts().models())
        dv = self.repo.data_version()
        if dv == self._data_version:
            return Invalidations()
        self._data_version = dv
        old = self._models
        new = {m.name: m for m in self.repo.models()}
        self._models = new
        inv = Invalidations()
        if set(old) != set(new):
            inv.inodes.append(ROOT_INO)
            vino = self.ino_of(("versions",))
            if vino is not None:
                inv.inodes.append(vino)
        for name, info in new.items():
            before = old.get(name)
            if before is not None and before.head == info.head:
                continue
            head_ino = self.ino_of(("head", name))
            if head_ino is not None:
                inv.inodes.append(head_ino)
            head = self._heads.get(name)
            if head is not None and head.version != info.head:
                if head.busy:
                    head.stale = True
                else:
                    inv.entries += self._reconcile(head, info.head)
            vm = self.ino_of(("versions", name))
            if vm is not None:
                inv.inodes.append(vm)
        self.pending.entries += inv.entries
        self.pending.inodes += inv.inodes
        return inv

    def take_pending(self) -> Invalidations:
        inv, self.pending = self.pending, Invalidations()
        return inv

    # ---- heads -------------------------------------------------------------------------

    def head(self, model: str) -> Head | None:
        """A model's writable directory, loaded on first use from its head and its draft."""
        h = self._heads.get(model)
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
        mtime = _ns(self.version(vid).time) if vid else _ns(self._mounted_at)
        h = self._heads[model] = Head(model, vid, files, mtime)
        return h

    def _need_head(self, model: str) -> Head:
        h = self.head(model)
        if h is None:
            raise FsError(errno.ENOENT, model)
        return h

    def loaded_heads(self) -> dict[str, Head]:
        return self._heads

    def _dir_ino(self, model: str, d: str) -> int | None:
        return self.ino_of(("head", model)) if d == "" else self.ino_of(("hd", model, d))

    def _reconcile(self, head: Head, vid: str | None) -> list[tuple[int, str]]:
        """Follow a commit from elsewhere; what the kernel must forget."""
        head.stale = False
        out = []
        for path, before in head.reconcile(self.repo.drafts().view(head.model), vid):
            self._retire(("hf", head.model, path), before)
            d = self._dir_ino(head.model, parent_of(path))
            if d is not None:
                out.append((d, path.rpartition("/")[2]))
        return out

    def settle(self, model: str) -> None:
        """The adapter finished a store operation on ``model``: catch up with what it missed."""
        head = self._heads.get(model)
        if head is not None and head.busy == 0 and head.stale:
            info = self.models().get(model)
            self.pending.entries += self._reconcile(head, info.head if info else None)

    def resync(self, model: str) -> None:
        """Show what the store holds for ``model`` now (its draft changed from elsewhere)."""
        head = self._heads.get(model)
        if head is None:
            return
        if head.busy:
            head.stale = True
            return
        info = self.models().get(model)
        self.pending.entries += self._reconcile(head, info.head if info else None)

    def committed(self, model: str, version: Version | None) -> None:
        """This mount committed ``model``: its head is that version now (nothing it shows moves)."""
        head = self._heads.get(model)
        if version is not None:
            self._remember(version)
            if head is not None:
                head.version = version.id
        self.refresh(force=True)

    # ---- attributes --------------------------------------------------------------------

    def _dir_nlink(self, subdirs: int) -> int:
        return 2 + subdirs

    def getattr(self, ino: int) -> Attr:
        return self._attr(self.node(ino))

    def head_content(self, n: Node) -> Content:
        """What a file inside a head shows now (a gone one: what it showed last)."""
        if n.key[0] == "hf":
            c = self._need_head(n.model).files.get(n.path)
            if c is None:
                raise FsError(errno.ENOENT, n.path)
            return c
        if n.entry is not None:
            return n.entry
        st = n.gone() if n.gone is not None else None
        if st is not None:
            return st
        raise FsError(errno.ESTALE, f"{n.path} was removed")

    def _file_mtime(self, n: Node) -> int:
        head = self._heads.get(n.model)
        if head is None:
            return _ns(self._mounted_at)
        mtime = head.mtimes.get(n.path)
        if mtime is not None:
            return mtime
        return _ns(self.version(head.version).time) if head.version else head.mtime_ns

    def _attr(self, n: Node, entry_timeout: float | None = None) -> Attr:
        k = n.kind
        long_ = LONG_TIMEOUT
        dmode = 0o755 if self.writable else 0o555
        if k is Kind.ROOT:
            names = self.head_names()
            times = [self.version(m.head).time for m in self._models.values() if m.head]
            mtime = max(times, default=self._mounted_at)
            return Attr(n.ino, stat.S_IFDIR | dmode, self._dir_nlink(len(names) + 2), 0,
                        _ns(mtime), SHORT_TIMEOUT, SHORT_TIMEOUT)
        if k is Kind.HEAD or n.key[0] == "hd":
            head = self._need_head(n.model)
            mode = head.dir_mode(n.path) if self.writable else 0o555
            return Attr(n.ino, stat.S_IFDIR | mode, self._dir_nlink(head.subdirs(n.path)), 0,
                        head.mtime_ns, SHORT_TIMEOUT, SHORT_TIMEOUT)
        if k is Kind.FILE and n.vid is None:  # in a head, or gone from one
            if n.gone is not None and n.entry is None:
                st = n.gone()
                if st is None:
                    raise FsError(errno.ESTALE, f"{n.path} was removed")
                return Attr(n.ino, stat.S_IFREG | st.mode, 1, st.size, st.mtime_ns,
                            SHORT_TIMEOUT, SHORT_TIMEOUT)
            c = self.head_content(n)
            if isinstance(c, Staged):  # being written: attributes move
                return Attr(n.ino, stat.S_IFREG | c.mode, 1, c.size, c.mtime_ns,
                            SHORT_TIMEOUT, SHORT_TIMEOUT)
            mtime = self._file_mtime(n)
            mode = c.mode if self.writable else _ro_mode(c.mode)
            return Attr(n.ino, stat.S_IFREG | mode, 1, c.size, mtime, SHORT_TIMEOUT, long_)
        if k in (Kind.VDIR, Kind.SUBDIR):
            assert n.vid is not None
            subdirs = sum(e is None for e in self._index(n.vid)[n.path].values())
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(subdirs), 0,
                        _ns(self.version(n.vid).time), entry_timeout or long_, long_)
        if k is Kind.FILE:
            assert n.entry is not None and n.vid is not None
            return Attr(n.ino, stat.S_IFREG | _ro_mode(n.entry.mode), 1, n.entry.size,
                        _ns(self.version(n.vid).time), entry_timeout or long_, long_)
        if k is Kind.LINK:
            mtime = self.version(n.vid).time if n.vid else self._mounted_at
            return Attr(n.ino, stat.S_IFLNK | 0o777, 1, len(n.target.encode()), _ns(mtime),
                        entry_timeout or long_, long_)
        if k is Kind.TEXT:
            assert n.vid is not None
            return Attr(n.ino, stat.S_IFREG | 0o444, 1, len(n.text), _ns(self.version(n.vid).time),
                        entry_timeout or long_, long_)
        # generated directories
        what = n.key[0]
        if what == "lnode":
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(2), 0,
                        _ns(self.version(n.key[1]).time), entry_timeout or long_, long_)
        if what == "lrel" and n.key[2] == "parents":
            return Attr(n.ino, stat.S_IFDIR | 0o555, 2, 0, _ns(self.version(n.key[1]).time),
                        entry_timeout or long_, long_)
        if what == "lrel":  # children: grows when a version is derived
            return Attr(n.ino, stat.S_IFDIR | 0o555, 2, 0, _ns(self.version(n.key[1]).time),
                        entry_timeout or long_, SHORT_TIMEOUT)
        if what == "versions" and len(n.key) == 1:
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(len(self.models())), 0,
                        _ns(self._mounted_at), entry_timeout or long_, SHORT_TIMEOUT)
        if what == "versions":  # one model's versions
            return Attr(n.ino, stat.S_IFDIR | 0o555, 2, 0, _ns(self._mounted_at),
                        entry_timeout or SHORT_TIMEOUT, SHORT_TIMEOUT)
        # .lineage: one subdirectory per version
        count = sum(m.count for m in self.models().values())
        return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(count), 0,
                    _ns(self._mounted_at), entry_timeout or long_, SHORT_TIMEOUT)

    # ---- lookups and listings ----------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Attr:
        """The attributes of ``name`` in directory ``parent``; FsError(ENOENT) if absent."""
        p = self.node(parent)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        if name == ".":
            return self._attr(p)
        if name == "..":
            return self._attr(self.node(p.parent))
        if name_bytes(name) > NAME_MAX:  # as a local filesystem answers (FUSE allows 1024)
            raise FsError(errno.ENAMETOOLONG, name[:40])
        child = self._child(p, name)
        if child is None:
            raise FsError(errno.ENOENT, name)
        return self._attr(child, SHORT_TIMEOUT if self._moving(p, child) else None)

    @staticmethod
    def _moving(p: Node, child: Node) -> bool:
        """Names under the root and in heads move (commits, writes); a version's never do."""
        return p.kind is Kind.ROOT and child.kind is Kind.HEAD or p.kind is Kind.HEAD \
            or p.key[0] == "hd"

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """The entries of a directory, in a stable order (no '.' and '..')."""
        p = self.node(ino)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        out = []
        for name in self._names(p):
            child = self._child(p, name)
            if child is not None:
                out.append((name, self._attr(child, SHORT_TIMEOUT if self._moving(p, child)
                                             else None)))
        return out

    def _names(self, p: Node) -> Iterable[str]:
        k = p.kind
        if k is Kind.ROOT:
            return self.head_names()
        if k is Kind.HEAD or p.key[0] == "hd":
            return self._need_head(p.model).listing(p.path)
        if k in (Kind.VDIR, Kind.SUBDIR):
            assert p.vid is not None
            return list(self._index(p.vid)[p.path])
        what = p.key[0]
        if what == "versions" and len(p.key) == 1:
            return sorted(self.models())
        if what == "versions":
            return [str(v.number) for v in self._versions_of(p.key[1])]
        if what == "lineage":
            return [v.ref for m in sorted(self.models()) for v in self._versions_of(m)]
        if what == "lnode":
            return ["version", "parents", "children", "how", "info.json"]
        if what == "lrel":
            return [v.ref for v in self._related(p.key[1], p.key[2])]
        return []

    def _versions_of(self, model: str) -> list[Version]:
        if model not in self.models():
            return []
        vs = self.repo.versions(model)
        for v in vs:
            self._remember(v)
        return vs

    def _related(self, vid: str, rel: str) -> list[Version]:
        if rel == "parents":
            seen: dict[str, Version] = {}
            for pid in self.version(vid).parents:
                if pid not in seen:
                    seen[pid] = self.version(pid)
            return list(seen.values())
        return list(self.repo.children(vid))

    def _is_head_name(self, name: str) -> bool:
        if name in self.models() or name in self._heads or name in self._draft_models:
            return True
        try:
            check_model_name(name)
        except InvalidName:
            return False
        return self.repo.drafts().get(name) is not None  # a `modelfs derive` just now

    def _child(self, p: Node, name: str) -> Node | None:
        """The node ``name`` names in directory ``p``, creating its inode on first sight."""
        k = p.kind
        if not name or "/" in name or "\0" in name:
            return None
        if k is Kind.ROOT:
            if name == VERSIONS_DIR:
                return self._node(("versions",), p.ino, Kind.VIEW)
            if name == LINEAGE_DIR:
                return self._node(("lineage",), p.ino, Kind.VIEW)
            ref = split_ref(name)
            if ref is not None:
                if ref[0] not in self.models():
                    return None
                v = self._resolve(name)
                if v is None or (v.model, v.number) != ref:
                    return None
                return self._node(("v", v.id, ""), p.ino, Kind.VDIR, vid=v.id)
            if self._is_head_name(name):
                return self._node(("head", name), p.ino, Kind.HEAD, model=name)
            return None
        if k is Kind.HEAD or p.key[0] == "hd":
            head = self._need_head(p.model)
            path = join(p.path, name)
            kind = head.kind(path)
            if kind == "file":
                return self._node(("hf", p.model, path), p.ino, Kind.FILE, path=path,
                                  model=p.model)
            if kind == "dir":
                return self._node(("hd", p.model, path), p.ino, Kind.SUBDIR, path=path,
                                  model=p.model)
            return None
        if k in (Kind.VDIR, Kind.SUBDIR):
            assert p.vid is not None
            return self._version_child(p, p.key[0], p.vid, p.path, name)
        what = p.key[0]
        if what == "versions" and len(p.key) == 1:
            if name in self.models():
                return self._node(("versions", name), p.ino, Kind.VIEW)
            return None
        if what == "versions":
            model = p.key[1]
            if not name.isdigit() or str(int(name)) != name:
                return None
            v = self._resolve(f"{model}@{name}")
            if v is None or v.model != model:
                return None
            return self._node(("vlink", v.id), p.ino, Kind.LINK, vid=v.id, target=f"../../{v.ref}")
        if what == "lineage":
            if split_ref(name) is None:
                return None
            v = self._resolve(name)
            if v is None or v.ref != name:
                return None
            return self._node(("lnode", v.id), p.ino, Kind.VIEW, vid=v.id)
        if what == "lnode":
            vid = p.key[1]
            v = self.version(vid)
            if name == "version":
                return self._node(("lver", vid), p.ino, Kind.LINK, vid=vid, target=f"../../{v.ref}")
            if name in ("parents", "children"):
                return self._node(("lrel", vid, name), p.ino, Kind.VIEW, vid=vid)
            if name == "how":
                text = (v.how + "\n").encode() if v.how else b""
                return self._node(("ltext", vid, name), p.ino, Kind.TEXT, vid=vid, text=text)
            if name == "info.json":
                return self._node(("ltext", vid, name), p.ino, Kind.TEXT, vid=vid,
                                  text=self._info_json(v))
            return None
        if what == "lrel":
            vid, rel = p.key[1], p.key[2]
            for other in self._related(vid, rel):
                if other.ref == name:
                    return self._node(("llink", vid, rel, other.id), p.ino, Kind.LINK,
                                      vid=vid, target=f"../../{other.ref}")
            return None
        return None

    def _version_child(self, p: Node, view: str, vid: str, path: str, name: str) -> Node | None:
        names = self._index(vid).get(path, {})
        if name not in names:
            return None
        entry = names[name]
        child_path = _join(path, name)
        key = (view, vid, child_path)
        if entry is None:
            return self._node(key, p.ino, Kind.SUBDIR, vid=vid, path=child_path)
        return self._node(key, p.ino, Kind.FILE, vid=vid, path=child_path, entry=entry)

    def _info_json(self, v: Version) -> bytes:
        refs = {pid: self.version(pid).ref for pid in v.parents}
        d = {
            "id": v.id, "ref": v.ref, "model": v.model, "number": v.number,
            "previous": v.previous, "previous_ref": refs.get(v.previous) if v.previous else None,
            "derived_from": list(v.derived_from),
            "derived_from_refs": [refs[p] for p in v.derived_from],
            "how": v.how, "message": v.message, "time": v.time,
            "provenance": dict(v.provenance),
            "files": {p: {"size": e.size, "format": e.format, "blake3": e.blake3_hex}
                      for p, e in sorted(v.files.items())},
        }
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    # ---- contents ----------------------------------------------------------------------

    def readlink(self, ino: int) -> str:
        n = self.node(ino)
        if n.kind is not Kind.LINK:
            raise FsError(errno.EINVAL)
        return n.target

    def content(self, ino: int) -> FileEntry | Staged | bytes:
        """What a read of ``ino`` returns: a stored file, a staging file, or generated bytes."""
        n = self.node(ino)
        if n.kind is Kind.FILE:
            if n.vid is None:
                return self.head_content(n)
            assert n.entry is not None
            return n.entry
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
        return self.writable and (n.kind in (Kind.ROOT, Kind.HEAD) or n.key[0] in ("hf", "hd"))

    # ---- writes (memory only: each returns what the draft in the store must follow) ----

    def where(self, parent: int) -> tuple[Head, str]:
        """The head and directory a new name in ``parent`` goes to; why not, as an errno."""
        p = self.node(parent)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        if not self.writable:
            raise FsError(errno.EROFS)
        if p.kind is Kind.HEAD or p.key[0] == "hd":
            return self._need_head(p.model), p.path
        if p.kind is Kind.ROOT:
            raise FsError(errno.EPERM, "only model directories can be made at the root")
        raise FsError(errno.EROFS, "versions are read-only")

    @staticmethod
    def _path(d: str, name: str) -> str:
        path = join(d, name)
        try:
            check_file_path(path)
        except InvalidName as e:
            raise FsError(_name_errno(e), str(e)) from None
        return path

    def _file_node(self, ino: int) -> tuple[Node, Head]:
        n = self.node(ino)
        if n.kind is Kind.FILE and n.key[0] == "hf":
            return n, self._need_head(n.model)
        if n.kind in DIR_KINDS:
            raise FsError(errno.EISDIR)
        if not self.writable or n.vid is not None or n.kind is not Kind.FILE:
            raise FsError(errno.EROFS)
        raise FsError(errno.ESTALE, "the file was removed or replaced")

    def create(self, parent: int, name: str, mode: int) -> tuple[Attr, Staged]:
        """A new, empty file open for writing."""
        head, d = self.where(parent)
        path = self._path(d, name)
        if head.kind(path) is not None:
            raise FsError(errno.EEXIST, path)
        assert self.staging is not None
        st = self.staging.new(head.model, path, mode)
        st.touch()  # an empty file is a change too
        try:
            head.put(path, st)
        except HeadError as e:
            st.close_fd()
            st.file.unlink(missing_ok=True)
            raise FsError(e.errno, path) from None
        node = self._node(("hf", head.model, path), parent, Kind.FILE, path=path,
                          model=head.model)
        return self._attr(node, SHORT_TIMEOUT), st

    def open_write(self, ino: int) -> Staged:
        """The staging file writes to ``ino`` go to: the one being written, or a new one.

        A new one starts as a lazy copy of what the file holds (copied at the first write,
        never when it is truncated first).
        """
        n, head = self._file_node(ino)
        n.rewritten = True
        c = head.files[n.path]
        if isinstance(c, Staged) and not c.frozen:
            return c
        assert self.staging is not None
        base: FileEntry | Staged = c  # a frozen Staged: copied with copy_file_range
        st = self.staging.new(head.model, n.path, c.mode, base=base, size=c.size)
        head.put(n.path, st)
        return st

    def mkdir(self, parent: int, name: str, mode: int) -> Attr:
        p = self.node(parent)
        if p.kind is Kind.ROOT and self.writable:
            try:
                check_model_name(name)
            except InvalidName as e:
                raise FsError(_name_errno(e), str(e)) from None
            if self._is_head_name(name):
                raise FsError(errno.EEXIST, name)
            self._heads[name] = Head(name, None, {})
            if mode & 0o7777 != 0o755:
                self._heads[name].dir_modes[""] = mode & 0o7777
            node = self._node(("head", name), ROOT_INO, Kind.HEAD, model=name)
            return self._attr(node, SHORT_TIMEOUT)
        head, d = self.where(parent)
        path = self._path(d, name)
        try:
            head.mkdir(path, mode)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        node = self._node(("hd", head.model, path), parent, Kind.SUBDIR, path=path,
                          model=head.model)
        return self._attr(node, SHORT_TIMEOUT)

    def unlink(self, parent: int, name: str) -> list[StoreOp]:
        head, d = self.where(parent)
        path = join(d, name)
        try:
            old = head.remove(path)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        self._retire(("hf", head.model, path), old)
        return [StoreOp("remove", head.model, path)]

    def rmdir(self, parent: int, name: str) -> None:
        p = self.node(parent)
        if p.kind is Kind.ROOT and self.writable:
            head = self._heads.get(name)
            if head is None or head.version is not None or name in self._models \
                    or name in self._draft_models or head.files or head.dirs:
                raise FsError(errno.EPERM, "models are not removed through the mount")
            del self._heads[name]
            self._retire(("head", name))
            return
        head, d = self.where(parent)
        path = join(d, name)
        try:
            head.rmdir(path)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        self._retire(("hd", head.model, path))

    def rename(self, parent_old: int, old: str, parent_new: int, new: str,
               noreplace: bool = False) -> list[StoreOp]:
        """Rename within one model's directory (another model is EXDEV: mv copies then)."""
        head, d_old = self.where(parent_old)
        head_new, d_new = self.where(parent_new)
        if head_new is not head:
            raise FsError(errno.EXDEV, "rename across models")
        src, dst = join(d_old, old), self._path(d_new, new)
        try:
            r = head.rename(src, dst, noreplace)
        except HeadError as e:
            raise FsError(e.errno, f"{src} -> {dst}") from None
        m = head.model
        if r.replaced is not None:
            self._retire(("hf", m, dst), r.replaced)
        if r.replaced_dir:
            self._retire(("hd", m, dst))
        for o, n in r.dirs:
            self._rekey(("hd", m, o), ("hd", m, n), parent_new if o == src else None)
        for o, n in r.files:
            self._rekey(("hf", m, o), ("hf", m, n), parent_new if o == src else None)
        return [StoreOp("rename", m, o, n) for o, n in r.files]

    def chmod(self, ino: int, mode: int) -> list[StoreOp]:
        n = self.node(ino)
        if n.kind is Kind.HEAD or n.key[0] == "hd":
            head = self._need_head(n.model)
            head.dir_modes[n.path] = mode & 0o7777
            return []
        n, head = self._file_node(ino)
        c = head.files[n.path]
        if isinstance(c, Staged):
            c.chmod(mode)  # a staged file is stored with its mode (fixed up if it raced)
            return []
        entry = with_mode(c, mode)
        head.files[n.path] = entry
        return [StoreOp("entry", head.model, n.path, entry=entry)] if entry != c else []

    def utime(self, ino: int, mtime_ns: int) -> None:
        """Shown while the mount runs; versions do not keep modification times."""
        n = self.node(ino)
        if n.kind is Kind.HEAD or n.key[0] == "hd":
            self._need_head(n.model).mtime_ns = mtime_ns
            return
        n, head = self._file_node(ino)
        c = head.files[n.path]
        if isinstance(c, Staged):
            c.mtime_ns = mtime_ns
        else:
            head.mtimes[n.path] = mtime_ns

    def stored(self, st: Staged, entry: FileEntry) -> bool:
        """A staged file was stored: its path shows the stored file now (same bytes)."""
        head = self._heads.get(st.model)
        return head is not None and head.stored(st, entry)

    def revert(self, st: Staged) -> None:
        """Drop a staged file that failed; the kernel must forget what it showed."""
        head = self._heads.get(st.model)
        if head is None or not head.revert(st):
            return
        ino = self.ino_of(("hf", st.model, st.path))
        if ino is None:
            return
        self.pending.inodes.append(ino)
        if st.path not in head.files:
            self._retire(("hf", st.model, st.path), st)
            d = self._dir_ino(st.model, parent_of(st.path))
            if d is not None:
                self.pending.entries.append((d, st.path.rpartition("/")[2]))

    def files_under(self, model: str, top: str) -> list[str]:
        head = self._heads.get(model)
        return [p for p in head.files if under(p, top)] if head else []

    # ---- extended attributes -----------------------------------------------------------

    def xattrs(self, ino: int) -> dict[str, bytes]:
        """Every extended attribute of a node (names with the ``user.modelfs.`` prefix)."""
        n = self.node(ino)
        if n.kind is Kind.ROOT:
            return dict(self._root_xattrs())
        vid = n.vid
        extra: dict[str, bytes] = {}
        entry = n.entry
        if n.kind is Kind.HEAD or n.key[0] in ("hf", "hd"):
            head = self._need_head(n.model)
            vid = head.version
            if n.kind is Kind.HEAD:
                extra = dict(self._head_xattrs(n.model))
            if n.kind is Kind.FILE:
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
        if n.kind is Kind.FILE and entry is not None:
            out[XATTR_PREFIX + "blake3"] = entry.blake3_hex.encode()
            out[XATTR_PREFIX + "format"] = entry.format.encode()
        out.update(extra)
        return out


def _name_errno(e: InvalidName) -> int:
    """ENAMETOOLONG for a name no local filesystem could hold (so `export` cannot fail on it)."""
    return errno.ENAMETOOLONG if isinstance(e, NameTooLong) else errno.EINVAL


def _ro_mode(mode: int) -> int:
    """A version's file: read-only, executable where it was stored executable."""
    return 0o444 | (0o111 if mode & 0o111 else 0)
