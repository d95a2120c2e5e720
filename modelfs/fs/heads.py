"""A writable head: one model's directory as the mount shows it, between commits.

It is the head version (or the parent of a ``modelfs derive``) overlaid with the model's
draft: stored files (``FileEntry``), files whose bytes are in a staging file (``Staged``),
and directories made by ``mkdir``. It checks every namespace change as a local disk
would (ENOENT, EEXIST, ENOTEMPTY, ...) and applies it in memory; ``tree.py`` keeps the
inodes in step and turns each change into the ``StoreOp`` the draft must follow.

Empty directories live only here: a version holds files, so a directory with nothing in
it is not part of any version (it stays visible while the mount runs).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelfs.fs.staged import Staged
from modelfs.lineage import FileEntry

Content = FileEntry | Staged
DIR_MODE = 0o755


class HeadError(Exception):
    """A namespace change a local disk would refuse too; carries the errno."""

    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(err, what)
        self.errno = err


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


@dataclass(slots=True)
class Renamed:
    files: list[tuple[str, str]] = field(default_factory=list)  # (old, new) of every file moved
    dirs: list[tuple[str, str]] = field(default_factory=list)  # (old, new) of every dir moved
    replaced: Content | None = None  # the file the rename replaced
    replaced_dir: bool = False  # an empty directory was replaced


class Head:
    """One model's writable directory (see the module docstring)."""

    def __init__(self, model: str, version: str | None, files: Mapping[str, Content],
                 mtime_ns: int | None = None) -> None:
        self.model = model
        self.version = version  # the head version this overlays (None: no version yet)
        self.files: dict[str, Content] = dict(files)
        self.dirs: set[str] = set()  # directories kept without files in them
        self.dir_modes: dict[str, int] = {}  # directories whose mode is not 0755
        self.mtimes: dict[str, int] = {}  # utime and writes: shown, not versioned
        self.mtime_ns = mtime_ns if mtime_ns is not None else time.time_ns()
        self.busy = 0  # store operations in flight: a refresh must not reconcile meanwhile
        self.stale = False  # a commit from elsewhere landed while busy
        self._index: dict[str, dict[str, bool]] | None = None
        for c in self.files.values():
            if isinstance(c, Staged):
                c.model = model

    # -- reading --------------------------------------------------------------------------
    def index(self) -> dict[str, dict[str, bool]]:
        """directory -> {name: is_dir}, built from the files and the kept directories."""
        if self._index is None:
            idx: dict[str, dict[str, bool]] = {"": {}}

            def ensure(d: str) -> None:
                if d in idx:
                    return
                p = parent_of(d)
                ensure(p)
                idx[p][d.rpartition("/")[2]] = True
                idx[d] = {}

            for d in self.dirs:
                ensure(d)
            for path in self.files:
                p = parent_of(path)
                ensure(p)
                idx[p][path.rpartition("/")[2]] = False
            self._index = idx
        return self._index

    def _changed(self, path: str | None = None, is_dir: bool | None = None) -> None:
        """Keep the index in step: one name added (is_dir set) or removed, else rebuild."""
        self.mtime_ns = time.time_ns()
        if self._index is None:
            return
        if path is None:
            self._index = None
            return
        parent, name = parent_of(path), path.rpartition("/")[2]
        if is_dir is None:
            self._index[parent].pop(name, None)
            self._index.pop(path, None)
        else:
            self._index[parent][name] = is_dir
            if is_dir:
                self._index.setdefault(path, {})

    def kind(self, path: str) -> str | None:
        """"file", "dir" or None."""
        if path in self.files:
            return "file"
        if path == "" or path in self.index():
            return "dir"
        return None

    def listing(self, d: str) -> list[str]:
        return sorted(self.index().get(d, {}))

    def subdirs(self, d: str) -> int:
        return sum(self.index().get(d, {}).values())

    def dir_mode(self, d: str) -> int:
        return self.dir_modes.get(d, DIR_MODE)

    def staged(self) -> list[Staged]:
        return [c for c in self.files.values() if isinstance(c, Staged)]

    def _need_dir(self, d: str) -> None:
        k = self.kind(d)
        if k is None:
            raise HeadError(errno.ENOENT, d)
        if k != "dir":
            raise HeadError(errno.ENOTDIR, d)

    def _keep_parent(self, path: str) -> None:
        """A directory stays when its last file goes, as on a local disk."""
        p = parent_of(path)
        if p:
            self.dirs.add(p)

    # -- changes --------------------------------------------------------------------------
    def put(self, path: str, content: Content) -> Content | None:
        """Show ``content`` at ``path`` (new or replacing a file); returns what it replaced."""
        self._need_dir(parent_of(path))
        if self.kind(path) == "dir":
            raise HeadError(errno.EISDIR, path)
        old = self.files.get(path)
        self.files[path] = content
        if isinstance(content, Staged):
            content.model, content.path, content.present = self.model, path, True
        if isinstance(old, Staged) and old is not content:
            old.present = False
        if old is None:
            self._changed(path, False)
        return old

    def remove(self, path: str) -> Content:
        k = self.kind(path)
        if k is None:
            raise HeadError(errno.ENOENT, path)
        if k == "dir":
            raise HeadError(errno.EISDIR, path)
        old = self.files.pop(path)
        if isinstance(old, Staged):
            old.present = False
        self.mtimes.pop(path, None)
        self._keep_parent(path)
        self._changed(path)
        return old

    def mkdir(self, path: str, mode: int = DIR_MODE) -> None:
        self._need_dir(parent_of(path))
        if self.kind(path) is not None:
            raise HeadError(errno.EEXIST, path)
        self.dirs.add(path)
        if mode & 0o7777 != DIR_MODE:
            self.dir_modes[path] = mode & 0o7777
        self._changed(path, True)

    def rmdir(self, path: str) -> None:
        k = self.kind(path)
        if k is None:
            raise HeadError(errno.ENOENT, path)
        if k != "dir":
            raise HeadError(errno.ENOTDIR, path)
        if path == "":
            raise HeadError(errno.EBUSY, path)
        if self.listing(path):
            raise HeadError(errno.ENOTEMPTY, path)
        self.dirs.discard(path)
        self.dir_modes.pop(path, None)
        self._keep_parent(path)
        self._changed()

    def rename(self, old: str, new: str, noreplace: bool = False) -> Renamed:
        """Move a file or a directory (with everything under it), as rename(2) does."""
        k = self.kind(old)
        if k is None or old == "":
            raise HeadError(errno.ENOENT if k is None else errno.EBUSY, old)
        self._need_dir(parent_of(new))
        out = Renamed()
        if old == new:
            return out
        if k == "dir" and under(new, old):
            raise HeadError(errno.EINVAL, f"{old} into itself")
        target = self.kind(new)
        if target is not None and noreplace:
            raise HeadError(errno.EEXIST, new)
        if target == "dir":
            if k == "file":
                raise HeadError(errno.EISDIR, new)
            if self.listing(new):
                raise HeadError(errno.ENOTEMPTY, new)
            self.dirs.discard(new)
            self.dir_modes.pop(new, None)
            out.replaced_dir = True
        elif target == "file" and k == "dir":
            raise HeadError(errno.ENOTDIR, new)
        if k == "file":
            out.replaced = self.files.pop(new, None) if target == "file" else None
            if isinstance(out.replaced, Staged):
                out.replaced.present = False
            self._move_file(old, new)
            out.files.append((old, new))
        else:
            for d in sorted(d for d in self.index() if under(d, old)):
                out.dirs.append((d, new + d[len(old):]))
            for path in sorted(p for p in self.files if under(p, old)):
                dest = new + path[len(old):]
                self._move_file(path, dest)
                out.files.append((path, dest))
            self.dirs = {new + d[len(old):] if under(d, old) else d for d in self.dirs}
            self.dirs.add(new)
            self.dir_modes = {new + d[len(old):] if under(d, old) else d: m
                              for d, m in self.dir_modes.items()}
        self._keep_parent(old)
        self._changed()
        return out

    def _move_file(self, old: str, new: str) -> None:
        c = self.files.pop(old)
        self.files[new] = c
        if isinstance(c, Staged):
            c.path = new
        if old in self.mtimes:
            self.mtimes[new] = self.mtimes.pop(old)

    def stored(self, st: Staged, entry: FileEntry) -> bool:
        """A staged file was stored: show the stored file (same bytes) where it is now."""
        st.entry = entry
        if not st.present or self.files.get(st.path) is not st:
            return False
        self.files[st.path] = entry
        self.mtimes[st.path] = st.mtime_ns
        return True

    def revert(self, st: Staged) -> bool:
        """Drop a staged file that must not be committed; the path shows what it held before."""
        if not st.present or self.files.get(st.path) is not st:
            st.present = False
            return False
        st.present = False
        origin = st.origin
        if isinstance(origin, Staged) and origin.entry is not None:
            origin = origin.entry
        if origin is None:
            del self.files[st.path]
            self._keep_parent(st.path)
            self._changed()
        else:
            self.files[st.path] = origin
            if isinstance(origin, Staged):
                origin.path, origin.present = st.path, True
        return True

    def reconcile(self, view: Mapping[str, FileEntry], version: str | None
                  ) -> list[tuple[str, Content | None]]:
        """Follow a commit made elsewhere (the CLI, another process).

        Returns (path, what it showed before) for every file that changed. Files staged
        here win: they are newer than anything the store shows.
        """
        self.version = version
        changed: list[tuple[str, Content | None]] = []
        for path in sorted(set(self.files) | set(view)):
            mine = self.files.get(path)
            if isinstance(mine, Staged):
                continue
            theirs = view.get(path)
            if theirs == mine:
                continue
            if theirs is None:
                del self.files[path]
            elif self.kind(path) == "dir":
                continue  # a directory made here keeps the name
            else:
                self.files[path] = theirs
            self.mtimes.pop(path, None)
            changed.append((path, mine))
        if changed:
            self._changed()
        return changed
