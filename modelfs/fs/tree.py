"""What a store looks like as a filesystem: inodes, names, attributes, xattrs.

This is the synchronous core (borg's ``vfs.py`` next to its ``fuse.py``): it knows models,
versions and lineage and answers lookups, listings, attributes and extended attributes
with plain values. It never imports pyfuse3 or trio, so it is tested directly; the adapter
in ``ops.py`` turns its answers into FUSE replies and its ``FsError`` into ``FUSEError``.

Naming (documented in docs/mount.md)::

    /<model>/                      head of the model (moves when a version commits)
    /<model>@<n>/                  version n, by lookup only (the root lists heads only)
    /.versions/<model>/<n>         symlink -> ../../<model>@<n>   (a listable index)
    /.lineage/<model>@<n>/         version  -> ../../<model>@<n>
                                   parents/<ref>, children/<ref> -> ../../<ref>
                                   how, info.json

Inode numbers are handed out on first sight of a node's identity and never reused, so
they are stable for the life of the mount. Everything under a version is immutable and
gets long kernel timeouts; only names that move (the model list, what a head points at,
a version's children) get short ones.
"""

from __future__ import annotations

import enum
import errno
import json
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelfs.errors import ModelfsError, NotFound
from modelfs.lineage import FileEntry, ModelInfo, Version

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


class RepoView(Protocol):
    """The part of ``modelfs.repo.Repo`` the tree reads (a fake implements it in tests)."""

    def models(self) -> list[ModelInfo]: ...

    def versions(self, model: str) -> list[Version]: ...

    def version(self, version_id: str) -> Version: ...

    def resolve(self, ref: str) -> Version: ...

    def children(self, version_id: str) -> list[Version]: ...

    def data_version(self) -> int: ...


class Kind(enum.Enum):
    ROOT = "root"
    HEAD = "head"  # /<model>: the head version's files, under names that move
    VDIR = "vdir"  # /<model>@<n>: a version's root directory
    SUBDIR = "subdir"  # a directory inside a version (or inside a head)
    FILE = "file"  # a checkpoint file
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
    path: str = ""  # path inside the version; "" for its root
    entry: FileEntry | None = None
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
    """The inode table and the naming rules of the mount, over a ``RepoView``."""

    def __init__(
        self,
        repo: RepoView,
        *,
        root_xattrs: Callable[[], Mapping[str, bytes]] | None = None,
        refresh_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cache_versions: int = 4096,
    ) -> None:
        self.repo = repo
        self._root_xattrs = root_xattrs or (lambda: {})
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
        self._data_version: int | None = None
        self._checked_at = float("-inf")
        self.pending = Invalidations()
        self._node(("root",), ROOT_INO, Kind.ROOT)
        self.refresh(force=True)

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
        self.refresh()
        return self._models

    def refresh(self, force: bool = False) -> Invalidations:
        """Reload the model list when a commit has landed; queue what the kernel must forget.

        Checked at most every ``refresh_interval`` seconds (the adapter also polls), so a
        burst of lookups costs one ``data_version()`` read.
        """
        now = self._clock()
        if not force and now - self._checked_at < self._refresh_interval:
            return Invalidations()
        self._checked_at = now
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
            inv.entries += [(ROOT_INO, name) for name in old.keys() - new.keys()]
            vino = self.ino_of(("versions",))
            if vino is not None:
                inv.inodes.append(vino)
                inv.entries += [(vino, name) for name in old.keys() - new.keys()]
        for name, info in new.items():
            before = old.get(name)
            if before is None or before.head == info.head:
                continue
            head_ino = self.ino_of(("head", name))
            if head_ino is not None:
                inv.inodes.append(head_ino)
                if before.head is not None:
                    inv.entries += [(head_ino, n) for n in self._index(before.head)[""]]
            vm = self.ino_of(("versions", name))
            if vm is not None:
                inv.inodes.append(vm)
        self.pending.entries += inv.entries
        self.pending.inodes += inv.inodes
        return inv

    def take_pending(self) -> Invalidations:
        inv, self.pending = self.pending, Invalidations()
        return inv

    # ---- attributes --------------------------------------------------------------------

    def _dir_nlink(self, subdirs: int) -> int:
        return 2 + subdirs

    def getattr(self, ino: int) -> Attr:
        return self._attr(self.node(ino))

    def _attr(self, n: Node, entry_timeout: float | None = None) -> Attr:
        k = n.kind
        long_ = LONG_TIMEOUT
        if k is Kind.ROOT:
            models = self.models()
            times = [self.version(m.head).time for m in models.values() if m.head]
            mtime = max(times, default=self._mounted_at)
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(len(models) + 2), 0,
                        _ns(mtime), SHORT_TIMEOUT, SHORT_TIMEOUT)
        if k is Kind.HEAD:
            info = self._models.get(n.key[1])
            if info is None or info.head is None:
                mtime = info.created if info else self._mounted_at
                return Attr(n.ino, stat.S_IFDIR | 0o555, 2, 0, _ns(mtime), SHORT_TIMEOUT,
                            SHORT_TIMEOUT)
            subdirs = sum(e is None for e in self._index(info.head)[""].values())
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(subdirs), 0,
                        _ns(self.version(info.head).time), SHORT_TIMEOUT, SHORT_TIMEOUT)
        if k in (Kind.VDIR, Kind.SUBDIR):
            assert n.vid is not None
            subdirs = sum(e is None for e in self._index(n.vid)[n.path].values())
            return Attr(n.ino, stat.S_IFDIR | 0o555, self._dir_nlink(subdirs), 0,
                        _ns(self.version(n.vid).time), entry_timeout or long_, long_)
        if k is Kind.FILE:
            assert n.entry is not None and n.vid is not None
            mode = 0o444 | (0o111 if getattr(n.entry, "mode", 0o644) & 0o111 else 0)
            return Attr(n.ino, stat.S_IFREG | mode, 1, n.entry.size,
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
        child = self._child(p, name)
        if child is None:
            raise FsError(errno.ENOENT, name)
        # a name directly under the root or a head moves when a commit lands
        moving = p.kind is Kind.HEAD or (p.kind is Kind.ROOT and child.kind is Kind.HEAD)
        return self._attr(child, SHORT_TIMEOUT if moving else None)

    def readdir(self, ino: int) -> list[tuple[str, Attr]]:
        """The entries of a directory, in a stable order (no '.' and '..')."""
        p = self.node(ino)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        out = []
        for name in self._names(p):
            child = self._child(p, name)
            if child is not None:
                moving = p.kind is Kind.HEAD or (p.kind is Kind.ROOT and child.kind is Kind.HEAD)
                out.append((name, self._attr(child, SHORT_TIMEOUT if moving else None)))
        return out

    def _names(self, p: Node) -> Iterable[str]:
        k = p.kind
        if k is Kind.ROOT:
            return sorted(self.models())
        if k is Kind.HEAD:
            info = self.models().get(p.key[1])
            return list(self._index(info.head)[""]) if info and info.head else []
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
            if name in self.models():
                return self._node(("head", name), p.ino, Kind.HEAD)
            return None
        if k is Kind.HEAD:
            info = self.models().get(p.key[1])
            if info is None or info.head is None:
                return None
            return self._version_child(p, "h", info.head, "", name)
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

    def content(self, ino: int) -> FileEntry | bytes:
        """What a read of ``ino`` returns: a stored file, or the bytes of a generated one."""
        n = self.node(ino)
        if n.kind is Kind.FILE:
            assert n.entry is not None
            return n.entry
        if n.kind is Kind.TEXT:
            return n.text
        if n.kind in DIR_KINDS:
            raise FsError(errno.EISDIR)
        raise FsError(errno.EINVAL)

    def is_writable(self, ino: int) -> bool:
        """Nothing is writable yet; a head becomes writable with snapshot-on-write (issue 4)."""
        self.node(ino)
        return False

    # ---- extended attributes -----------------------------------------------------------

    def xattrs(self, ino: int) -> dict[str, bytes]:
        """Every extended attribute of a node (names with the ``user.modelfs.`` prefix)."""
        n = self.node(ino)
        if n.kind is Kind.ROOT:
            return dict(self._root_xattrs())
        vid = n.vid
        if n.kind is Kind.HEAD:
            info = self.models().get(n.key[1])
            vid = info.head if info else None
        if vid is None:  # .versions, .versions/<model>, .lineage
            return {}
        v = self.version(vid)
        out = {
            XATTR_PREFIX + "version": v.id.encode(),
            XATTR_PREFIX + "ref": v.ref.encode(),
            XATTR_PREFIX + "parents": ",".join(v.parents).encode(),
            XATTR_PREFIX + "parent_refs": ",".join(self.version(p).ref for p in v.parents).encode(),
            XATTR_PREFIX + "how": (v.how or "").encode(),
        }
        if n.kind is Kind.FILE:
            assert n.entry is not None
            out[XATTR_PREFIX + "blake3"] = n.entry.blake3_hex.encode()
            out[XATTR_PREFIX + "format"] = n.entry.format.encode()
        return out
