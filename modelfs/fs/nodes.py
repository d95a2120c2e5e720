"""What an inode stands for: one typed key per kind of node, and the values the tree answers.

A node's identity is its key: equal keys share an inode, and the key's type says what the
node is (its ``kind`` follows from the type, so a node is never tagged twice). The tree
dispatches on the key's type to the handler of that kind (``tree.py`` for the root,
heads and versions, ``views.py`` for the generated ``.versions`` and ``.lineage``).
"""

from __future__ import annotations

import enum
import stat
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from modelfs.lineage import FileEntry
from modelfs.lineage.refs import NumberRef, mount_ref

if TYPE_CHECKING:
    from modelfs.fs.staged import Staged

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


class Kind(enum.Enum):
    ROOT = "root"
    HEAD = "head"  # /<model>: the head version's files and the draft, writable
    VDIR = "vdir"  # /<model>@<n>: a version's root directory
    SUBDIR = "subdir"  # a directory inside a version or a head
    FILE = "file"  # a checkpoint file: in a version, a head, or gone from a head
    LINK = "link"  # a symlink of the .versions / .lineage views
    TEXT = "text"  # a small generated file (.lineage/<ref>/how, info.json)
    VIEW = "view"  # a generated directory (.versions, .lineage and below)


DIR_KINDS = frozenset({Kind.ROOT, Kind.HEAD, Kind.VDIR, Kind.SUBDIR, Kind.VIEW})


class Key:
    """The identity of a node; subclasses are frozen dataclasses, one per kind of node."""

    __slots__ = ()
    kind: ClassVar[Kind]
    in_head: ClassVar[bool] = False  # a head or a directory inside one: writable, names move


@dataclass(frozen=True, slots=True)
class RootKey(Key):
    kind = Kind.ROOT


@dataclass(frozen=True, slots=True)
class HeadKey(Key):
    model: str
    kind = Kind.HEAD
    in_head = True


@dataclass(frozen=True, slots=True)
class HeadDirKey(Key):
    model: str
    path: str
    kind = Kind.SUBDIR
    in_head = True


@dataclass(frozen=True, slots=True)
class HeadFileKey(Key):
    model: str
    path: str
    kind = Kind.FILE


@dataclass(frozen=True, slots=True)
class GoneKey(Key):
    """A head file replaced or removed while a handle has it: it keeps its last bytes."""

    ino: int
    kind = Kind.FILE


@dataclass(frozen=True, slots=True)
class VersionDirKey(Key):
    """A directory of a version; ``path`` "" is the version's root (``<model>@<n>``)."""

    vid: str
    path: str
    kind = Kind.SUBDIR

    @property
    def is_root(self) -> bool:
        return not self.path


@dataclass(frozen=True, slots=True)
class VersionFileKey(Key):
    vid: str
    path: str
    kind = Kind.FILE


@dataclass(frozen=True, slots=True)
class VersionsKey(Key):
    """``/.versions``: one directory per model."""

    kind = Kind.VIEW


@dataclass(frozen=True, slots=True)
class ModelVersionsKey(Key):
    """``/.versions/<model>``: one symlink per version."""

    model: str
    kind = Kind.VIEW


@dataclass(frozen=True, slots=True)
class VersionLinkKey(Key):
    vid: str
    kind = Kind.LINK


@dataclass(frozen=True, slots=True)
class TagLinkKey(Key):
    """``/<model>:<tag>``: a symlink to the version the tag names now (a moved tag is a new
    key, so a new inode: the kernel never serves the old target under the new name)."""

    model: str
    tag: str
    vid: str
    kind = Kind.LINK


@dataclass(frozen=True, slots=True)
class VersionsTagKey(Key):
    """``/.versions/<model>/<tag>``: a symlink to ``../../<model>@<n>``, keyed by what it names
    now, like ``TagLinkKey``."""

    model: str
    tag: str
    vid: str
    kind = Kind.LINK


@dataclass(frozen=True, slots=True)
class LineageKey(Key):
    """``/.lineage``: one directory per version."""

    kind = Kind.VIEW


@dataclass(frozen=True, slots=True)
class LineageNodeKey(Key):
    vid: str
    kind = Kind.VIEW


@dataclass(frozen=True, slots=True)
class LineageVersionKey(Key):
    """``/.lineage/<ref>/version``, a symlink to the version."""

    vid: str
    kind = Kind.LINK


@dataclass(frozen=True, slots=True)
class LineageRelKey(Key):
    """``/.lineage/<ref>/parents`` or ``children``."""

    vid: str
    rel: str
    kind = Kind.VIEW


@dataclass(frozen=True, slots=True)
class LineageRelLinkKey(Key):
    vid: str
    rel: str
    other: str
    kind = Kind.LINK


@dataclass(frozen=True, slots=True)
class LineageTextKey(Key):
    vid: str
    name: str
    kind = Kind.TEXT


def kind_of(key: Key) -> Kind:
    if isinstance(key, VersionDirKey) and key.is_root:
        return Kind.VDIR
    return key.kind


@dataclass(slots=True)
class Node:
    """What one inode stands for now (a head file that goes away is re-keyed ``GoneKey``)."""

    ino: int
    parent: int
    key: Key
    vid: str | None = None  # the version this node shows (or describes)
    path: str = ""  # path inside the version or head; "" for its root
    entry: FileEntry | None = None  # a version's file, or what a gone head file held
    model: str = ""  # for nodes inside a head
    rewritten: bool = False  # a head file opened for writing: pages the kernel has may be old
    gone: weakref.ref[Staged] | None = None  # a gone unstored file, while a handle has it
    target: str = ""  # symlink target
    text: bytes = b""

    @property
    def kind(self) -> Kind:
        return kind_of(self.key)

    @property
    def in_head(self) -> bool:
        """A head or a directory inside one (where names are written and move)."""
        return self.key.in_head


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


def split_ref(name: str) -> tuple[str, int] | None:
    """``model@n`` with n in canonical decimal form, else None (one name per version dir).

    The grammar is lineage/refs.py's, shared with the CLI; ``model@0`` is refused in both."""
    ref = mount_ref(name)
    return (ref.model, ref.number) if isinstance(ref, NumberRef) else None


def ns(t: float) -> int:
    return int(t * 1e9)


def dir_nlink(subdirs: int) -> int:
    return 2 + subdirs


def ro_mode(mode: int) -> int:
    """A version's file: read-only, executable where it was stored executable."""
    return 0o444 | (0o111 if mode & 0o111 else 0)


class NodeKind:
    """How one kind of node answers: its attributes, and for a directory its names and children.

    The tree keeps one handler per key type and dispatches on ``type(node.key)``.
    """

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        raise NotImplementedError

    def names(self, n: Node) -> Iterable[str]:
        return ()

    def child(self, p: Node, name: str) -> Node | None:
        return None
