"""The kinds of node the tree answers for itself: the root, heads and versions.

Each is a small handler (attributes; for a directory its names and children) that the
``Tree`` looks up by the node's key type; the generated views have theirs in ``views.py``.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING

from modelfs.errors import NotFound
from modelfs.fs.nodes import (
    LINEAGE_DIR,
    LONG_TIMEOUT,
    SHORT_TIMEOUT,
    VERSIONS_DIR,
    Attr,
    FsError,
    GoneKey,
    HeadDirKey,
    HeadFileKey,
    HeadKey,
    Key,
    LineageKey,
    Node,
    NodeKind,
    RootKey,
    TagLinkKey,
    VersionDirKey,
    VersionFileKey,
    VersionsKey,
    dir_nlink,
    ns,
    ro_mode,
)
from modelfs.fs.staged import Staged
from modelfs.lineage.refs import TagRef, mount_ref

if TYPE_CHECKING:
    from modelfs.fs.tree import Tree


class _Kind(NodeKind):
    def __init__(self, tree: Tree) -> None:
        self.tree = tree


class Root(_Kind):
    """``/``: the heads, ``<model>@<n>`` by lookup, and the two views."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        t = self.tree
        names = t.head_names()
        times = []
        for m in t.models().values():
            if m.head:
                try:
                    times.append(t.version(m.head).time)
                except NotFound:  # removed (`modelfs rm`) since the model list was read
                    t.refresh(force=True)
        mode = 0o755 if t.writable else 0o555
        return Attr(n.ino, stat.S_IFDIR | mode, dir_nlink(len(names) + 2), 0,
                    ns(max(times, default=t.mounted_at)), SHORT_TIMEOUT, SHORT_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        """The two views first (dot names: ``ls -a`` shows them, plain ``ls`` does not)."""
        return [VERSIONS_DIR, LINEAGE_DIR, *self.tree.head_names()]

    def child(self, p: Node, name: str) -> Node | None:
        t = self.tree
        if name == VERSIONS_DIR:
            return t.inodes.get(VersionsKey(), p.ino)
        if name == LINEAGE_DIR:
            return t.inodes.get(LineageKey(), p.ino)
        ref = mount_ref(name)  # MODEL@N or MODEL:TAG (lineage/refs.py, the CLI's grammar)
        if ref is not None:
            if ref.model not in t.models():
                return None
            v = t.resolve_ref(name)
            if v is None or v.model != ref.model:
                return None
            if isinstance(ref, TagRef):
                return t.inodes.get(TagLinkKey(ref.model, ref.tag, v.id), p.ino, vid=v.id,
                                    target=v.ref)
            if v.number != ref.number:
                return None
            return t.inodes.get(VersionDirKey(v.id, ""), p.ino, vid=v.id)
        if t.is_head_name(name):
            return t.inodes.get(HeadKey(name), p.ino, model=name)
        return None


class HeadDir(_Kind):
    """A head (``/<model>``) or a directory in it: what the head's namespace shows."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        t = self.tree
        head = t.need_head(n.model)
        mode = head.dir_mode(n.path) if t.writable else 0o555
        return Attr(n.ino, stat.S_IFDIR | mode, dir_nlink(head.subdirs(n.path)), 0,
                    head.mtime_ns, SHORT_TIMEOUT, SHORT_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        return self.tree.need_head(n.model).listing(n.path)

    def child(self, p: Node, name: str) -> Node | None:
        head = self.tree.need_head(p.model)
        path = f"{p.path}/{name}" if p.path else name
        kind = head.kind(path)
        if kind == "file":
            return self.tree.inodes.get(HeadFileKey(p.model, path), p.ino, path=path,
                                        model=p.model)
        if kind == "dir":
            return self.tree.inodes.get(HeadDirKey(p.model, path), p.ino, path=path,
                                        model=p.model)
        return None


class HeadFile(_Kind):
    """A file in a head, or gone from one while a handle has it."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        t = self.tree
        if n.gone is not None and n.entry is None:
            st = n.gone()
            if st is None:
                raise FsError(errno.ESTALE, f"{n.path} was removed")
            return Attr(n.ino, stat.S_IFREG | st.mode, 1, st.size, st.mtime_ns,
                        SHORT_TIMEOUT, SHORT_TIMEOUT)
        c = t.head_content(n)
        if isinstance(c, Staged):  # being written: attributes move
            return Attr(n.ino, stat.S_IFREG | c.mode, 1, c.size, c.mtime_ns,
                        SHORT_TIMEOUT, SHORT_TIMEOUT)
        mode = c.mode if t.writable else ro_mode(c.mode)
        return Attr(n.ino, stat.S_IFREG | mode, 1, c.size, self._mtime(n), SHORT_TIMEOUT,
                    LONG_TIMEOUT)

    def _mtime(self, n: Node) -> int:
        t = self.tree
        head = t.heads.get(n.model)
        if head is None:
            return ns(t.mounted_at)
        mtime = head.mtimes.get(n.path)
        if mtime is not None:
            return mtime
        return ns(t.version(head.version).time) if head.version else head.mtime_ns


class VersionDir(_Kind):
    """``/<model>@<n>`` and the directories inside it."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.vid is not None
        t = self.tree
        subdirs = sum(e is None for e in t.index(n.vid)[n.path].values())
        return Attr(n.ino, stat.S_IFDIR | 0o555, dir_nlink(subdirs), 0,
                    ns(t.version(n.vid).time), entry_timeout or LONG_TIMEOUT, LONG_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        assert n.vid is not None
        return list(self.tree.index(n.vid)[n.path])

    def child(self, p: Node, name: str) -> Node | None:
        assert p.vid is not None
        vid = p.vid
        names = self.tree.index(vid).get(p.path, {})
        if name not in names:
            return None
        entry = names[name]
        path = f"{p.path}/{name}" if p.path else name
        if entry is None:
            return self.tree.inodes.get(VersionDirKey(vid, path), p.ino, vid=vid, path=path)
        return self.tree.inodes.get(VersionFileKey(vid, path), p.ino, vid=vid, path=path,
                                    entry=entry)


class VersionFile(_Kind):
    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.entry is not None and n.vid is not None
        return Attr(n.ino, stat.S_IFREG | ro_mode(n.entry.mode), 1, n.entry.size,
                    ns(self.tree.version(n.vid).time), entry_timeout or LONG_TIMEOUT,
                    LONG_TIMEOUT)


class TagLink(_Kind):
    """``/<model>:<tag>`` -> ``<model>@<n>``: tags move, so the name gets short timeouts."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.vid is not None
        return Attr(n.ino, stat.S_IFLNK | 0o777, 1, len(n.target.encode()),
                    ns(self.tree.version(n.vid).time), SHORT_TIMEOUT, SHORT_TIMEOUT)


def tree_kinds(tree: Tree) -> dict[type[Key], NodeKind]:
    """The handler of every node kind the tree answers for itself, by key type."""
    head_dir, head_file = HeadDir(tree), HeadFile(tree)
    return {RootKey: Root(tree), HeadKey: head_dir, HeadDirKey: head_dir,
            HeadFileKey: head_file, GoneKey: head_file, VersionDirKey: VersionDir(tree),
            VersionFileKey: VersionFile(tree), TagLinkKey: TagLink(tree)}
