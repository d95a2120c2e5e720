"""Writes to heads: namespace changes in memory, each returning what the store must follow.

The head (``heads.py``) checks each change as a local disk would; this keeps the inode
table in step (a rename moves the inode, an unlink retires it) and turns the change into
the ``StoreOp``s the draft in the store must follow, which the adapter applies in a worker
thread. Nothing here touches the store.
"""

from __future__ import annotations

import errno

from modelfs.errors import InvalidName, NameTooLong
from modelfs.fs.draftsync import StoreOp, with_mode
from modelfs.fs.heads import Head, HeadError, join, parent_of
from modelfs.fs.nodes import (
    DIR_KINDS,
    ROOT_INO,
    SHORT_TIMEOUT,
    Attr,
    FsError,
    HeadDirKey,
    HeadFileKey,
    HeadKey,
    Kind,
    Node,
    RootKey,
)
from modelfs.fs.staged import Staged
from modelfs.fs.tree import Tree
from modelfs.lineage import FileEntry
from modelfs.names import check_file_path, check_model_name


def _name_errno(e: InvalidName) -> int:
    """ENAMETOOLONG for a name no local filesystem could hold (so `export` cannot fail on it)."""
    return errno.ENAMETOOLONG if isinstance(e, NameTooLong) else errno.EINVAL


class HeadWrites:
    """The write side of a ``Tree``: create, open for writing, mkdir, unlink, rename, chmod."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.inodes = tree.inodes

    def where(self, parent: int) -> tuple[Head, str]:
        """The head and directory a new name in ``parent`` goes to; why not, as an errno."""
        t = self.tree
        p = t.node(parent)
        if p.kind not in DIR_KINDS:
            raise FsError(errno.ENOTDIR)
        if not t.writable:
            raise FsError(errno.EROFS)
        if p.in_head:
            return t.need_head(p.model), p.path
        if p.kind is Kind.ROOT:
            raise FsError(errno.EPERM, "only model directories can be made at the root")
        raise FsError(errno.EROFS, "versions are read-only")

    def refused(self, parent: int, why: str) -> FsError:
        """EPERM for what a head cannot store (links, devices), after ``where``'s checks."""
        self.where(parent)
        return FsError(errno.EPERM, why)

    @staticmethod
    def _path(d: str, name: str) -> str:
        path = join(d, name)
        try:
            check_file_path(path)
        except InvalidName as e:
            raise FsError(_name_errno(e), str(e)) from None
        return path

    def _file_node(self, ino: int) -> tuple[Node, Head]:
        t = self.tree
        n = t.node(ino)
        if isinstance(n.key, HeadFileKey):
            return n, t.need_head(n.model)
        if n.kind in DIR_KINDS:
            raise FsError(errno.EISDIR)
        if not t.writable or n.vid is not None or n.kind is not Kind.FILE:
            raise FsError(errno.EROFS)
        raise FsError(errno.ESTALE, "the file was removed or replaced")

    def create(self, parent: int, name: str, mode: int) -> tuple[Attr, Staged]:
        """A new, empty file open for writing."""
        head, d = self.where(parent)
        path = self._path(d, name)
        if head.kind(path) is not None:
            raise FsError(errno.EEXIST, path)
        staging = self.tree.staging
        assert staging is not None
        st = staging.new(head.model, path, mode)
        st.touch()  # an empty file is a change too
        try:
            head.put(path, st)
        except HeadError as e:
            st.close_fd()
            st.file.unlink(missing_ok=True)
            raise FsError(e.errno, path) from None
        node = self.inodes.get(HeadFileKey(head.model, path), parent, path=path,
                               model=head.model)
        return self.tree.attr(node, SHORT_TIMEOUT), st

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
        staging = self.tree.staging
        assert staging is not None
        base: FileEntry | Staged = c  # a frozen Staged: copied with copy_file_range
        st = staging.new(head.model, n.path, c.mode, base=base, size=c.size)
        head.put(n.path, st)
        return st

    def mkdir(self, parent: int, name: str, mode: int) -> Attr:
        t = self.tree
        p = t.node(parent)
        if isinstance(p.key, RootKey) and t.writable:
            try:
                check_model_name(name)
            except InvalidName as e:
                raise FsError(_name_errno(e), str(e)) from None
            if t.is_head_name(name):
                raise FsError(errno.EEXIST, name)
            head = t.heads[name] = Head(name, None, {})
            if mode & 0o7777 != 0o755:
                head.dir_modes[""] = mode & 0o7777
            node = self.inodes.get(HeadKey(name), ROOT_INO, model=name)
            return t.attr(node, SHORT_TIMEOUT)
        head, d = self.where(parent)
        path = self._path(d, name)
        try:
            head.mkdir(path, mode)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        node = self.inodes.get(HeadDirKey(head.model, path), parent, path=path,
                               model=head.model)
        return t.attr(node, SHORT_TIMEOUT)

    def unlink(self, parent: int, name: str) -> list[StoreOp]:
        head, d = self.where(parent)
        path = join(d, name)
        try:
            old = head.remove(path)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        self.inodes.retire(HeadFileKey(head.model, path), old)
        return [StoreOp("remove", head.model, path)]

    def rmdir(self, parent: int, name: str) -> None:
        t = self.tree
        p = t.node(parent)
        if isinstance(p.key, RootKey) and t.writable:
            head = t.heads.get(name)
            if head is None or head.version is not None or name in t.models() \
                    or name in t.draft_models or head.files or head.dirs:
                raise FsError(errno.EPERM, "models are not removed through the mount")
            del t.heads[name]
            self.inodes.retire(HeadKey(name))
            return
        head, d = self.where(parent)
        path = join(d, name)
        try:
            head.rmdir(path)
        except HeadError as e:
            raise FsError(e.errno, path) from None
        self.inodes.retire(HeadDirKey(head.model, path))

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
            self.inodes.retire(HeadFileKey(m, dst), r.replaced)
        if r.replaced_dir:
            self.inodes.retire(HeadDirKey(m, dst))
        for o, n in r.dirs:
            self.inodes.rekey(HeadDirKey(m, o), HeadDirKey(m, n), n,
                              parent_new if o == src else None)
        for o, n in r.files:
            self.inodes.rekey(HeadFileKey(m, o), HeadFileKey(m, n), n,
                              parent_new if o == src else None)
        return [StoreOp("rename", m, o, n) for o, n in r.files]

    def chmod(self, ino: int, mode: int) -> list[StoreOp]:
        n = self.tree.node(ino)
        if n.in_head:
            self.tree.need_head(n.model).dir_modes[n.path] = mode & 0o7777
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
        n = self.tree.node(ino)
        if n.in_head:
            self.tree.need_head(n.model).mtime_ns = mtime_ns
            return
        n, head = self._file_node(ino)
        c = head.files[n.path]
        if isinstance(c, Staged):
            c.mtime_ns = mtime_ns
        else:
            head.mtimes[n.path] = mtime_ns

    def stored(self, st: Staged, entry: FileEntry) -> bool:
        """A staged file was stored: its path shows the stored file now (same bytes)."""
        head = self.tree.heads.get(st.model)
        return head is not None and head.stored(st, entry)

    def revert(self, st: Staged) -> None:
        """Drop a staged file that failed; the kernel must forget what it showed."""
        t = self.tree
        head = t.heads.get(st.model)
        if head is None or not head.revert(st):
            return
        key = HeadFileKey(st.model, st.path)
        ino = self.inodes.ino_of(key)
        if ino is None:
            return
        t.pending.inodes.append(ino)
        if st.path not in head.files:
            self.inodes.retire(key, st)
            d = t.dir_ino(st.model, parent_of(st.path))
            if d is not None:
                t.pending.entries.append((d, st.path.rpartition("/")[2]))
