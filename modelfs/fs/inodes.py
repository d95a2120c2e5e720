"""The inode table: numbers handed out on first sight of a key, never reused while mounted."""

from __future__ import annotations

import errno
import weakref
from typing import Any

from modelfs.fs.nodes import ROOT_INO, FsError, GoneKey, Key, Node
from modelfs.fs.staged import Staged
from modelfs.lineage import FileEntry


class InodeTable:
    """Key <-> inode, and what each inode stands for.

    A head name that stops showing a node (a rename over it, an unlink, a commit from
    outside) re-keys it ``GoneKey``: handles that have it open keep reading what it held.
    """

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[Key, int] = {}
        self._next = ROOT_INO

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, key: Key, parent: int, **kw: Any) -> Node:
        """The node of ``key``, made (with the next inode number) on first sight."""
        ino = self._by_key.get(key)
        if ino is not None:
            return self._nodes[ino]
        ino = self._next
        self._next += 1
        n = Node(ino, parent, key, **kw)
        self._nodes[ino] = n
        self._by_key[key] = ino
        return n

    def node(self, ino: int) -> Node:
        n = self._nodes.get(ino)
        if n is None:
            raise FsError(errno.ENOENT, f"inode {ino} unknown")
        return n

    def ino_of(self, key: Key) -> int | None:
        return self._by_key.get(key)

    def retire(self, key: Key, content: FileEntry | Staged | None = None) -> int | None:
        """A head name no longer shows this inode: it keeps what it held for open handles."""
        ino = self._by_key.pop(key, None)
        if ino is None:
            return None
        n = self._nodes[ino]
        n.key = GoneKey(ino)
        self._by_key[n.key] = ino
        if isinstance(content, Staged):  # keep its attributes, not its staging file
            if content.entry is not None:
                n.entry = content.entry
            else:
                n.gone = weakref.ref(content)
        elif isinstance(content, FileEntry):
            n.entry = content
        return ino

    def rekey(self, old: Key, new: Key, path: str, parent: int | None = None) -> None:
        """A rename: the inode moves with the name."""
        ino = self._by_key.pop(old, None)
        if ino is None:
            return
        n = self._nodes[ino]
        n.key, n.path = new, path
        if parent is not None:
            n.parent = parent
        self._by_key[new] = ino
