"""The generated views: ``/.versions`` (a listable index) and ``/.lineage`` (the graph).

::

    /.versions/<model>/<n>         symlink -> ../../<model>@<n>
    /.versions/<model>/<tag>       symlink -> ../../<model>@<n> (the version the tag names)
    /.lineage/<model>@<n>/         version  -> ../../<model>@<n>
                                   parents/<ref>, children/<ref> -> ../../<ref>
                                   how, info.json

Every node here derives from immutable versions, except the lists that grow (the models,
a model's versions, a version's children), which get short kernel timeouts.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable
from typing import Protocol

from modelfs.fs.inodes import InodeTable
from modelfs.fs.nodes import (
    LONG_TIMEOUT,
    SHORT_TIMEOUT,
    Attr,
    Key,
    LineageKey,
    LineageNodeKey,
    LineageRelKey,
    LineageRelLinkKey,
    LineageTextKey,
    LineageVersionKey,
    ModelVersionsKey,
    Node,
    NodeKind,
    VersionLinkKey,
    VersionsKey,
    VersionsTagKey,
    dir_nlink,
    ns,
    split_ref,
)
from modelfs.lineage import ModelInfo, Version

VIEW_DIR = stat.S_IFDIR | 0o555


class ViewContext(Protocol):
    """What the views read of the tree."""

    inodes: InodeTable
    mounted_at: float

    def models(self) -> dict[str, ModelInfo]: ...

    def version(self, vid: str) -> Version: ...

    def resolve_ref(self, ref: str) -> Version | None: ...

    def versions_of(self, model: str) -> list[Version]: ...

    def related(self, vid: str, rel: str) -> list[Version]: ...

    def tags_of(self, model: str) -> list[tuple[str, Version]]: ...


class _View(NodeKind):
    def __init__(self, ctx: ViewContext) -> None:
        self.ctx = ctx

    def vtime(self, vid: str) -> int:
        return ns(self.ctx.version(vid).time)


class VersionsDir(_View):
    """``/.versions``: one directory per model."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        return Attr(n.ino, VIEW_DIR, dir_nlink(len(self.ctx.models())), 0,
                    ns(self.ctx.mounted_at), entry_timeout or LONG_TIMEOUT, SHORT_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        return sorted(self.ctx.models())

    def child(self, p: Node, name: str) -> Node | None:
        if name not in self.ctx.models():
            return None
        return self.ctx.inodes.get(ModelVersionsKey(name), p.ino)


class ModelVersionsDir(_View):
    """``/.versions/<model>``: a symlink per version number."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        return Attr(n.ino, VIEW_DIR, 2, 0, ns(self.ctx.mounted_at),
                    entry_timeout or SHORT_TIMEOUT, SHORT_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        assert isinstance(n.key, ModelVersionsKey)
        model = n.key.model
        return [str(v.number) for v in self.ctx.versions_of(model)] + [t for t, _ in self.ctx.tags_of(model)]

    def child(self, p: Node, name: str) -> Node | None:
        assert isinstance(p.key, ModelVersionsKey)
        model = p.key.model
        if not name.isdigit():  # a tag (tag names are never plain numbers: lineage/refs.py)
            v = self.ctx.resolve_ref(f"{model}:{name}") if ":" not in name else None
            if v is None:
                return None
            return self.ctx.inodes.get(VersionsTagKey(model, name, v.id), p.ino, vid=v.id,
                                       target=f"../../{v.ref}")
        if str(int(name)) != name:
            return None
        v = self.ctx.resolve_ref(f"{model}@{name}")
        if v is None or v.model != model:
            return None
        return self.ctx.inodes.get(VersionLinkKey(v.id), p.ino, vid=v.id,
                                   target=f"../../{v.ref}")


class LineageDir(_View):
    """``/.lineage``: a directory per version."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        count = sum(m.count for m in self.ctx.models().values())
        return Attr(n.ino, VIEW_DIR, dir_nlink(count), 0, ns(self.ctx.mounted_at),
                    entry_timeout or LONG_TIMEOUT, SHORT_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        return [v.ref for m in sorted(self.ctx.models()) for v in self.ctx.versions_of(m)]

    def child(self, p: Node, name: str) -> Node | None:
        if split_ref(name) is None:
            return None
        v = self.ctx.resolve_ref(name)
        if v is None or v.ref != name:
            return None
        return self.ctx.inodes.get(LineageNodeKey(v.id), p.ino, vid=v.id)


class LineageNodeDir(_View):
    """``/.lineage/<ref>``: version, parents, children, how, info.json."""

    NAMES = ("version", "parents", "children", "how", "info.json")

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.vid is not None
        return Attr(n.ino, VIEW_DIR, dir_nlink(2), 0, self.vtime(n.vid),
                    entry_timeout or LONG_TIMEOUT, LONG_TIMEOUT)

    def names(self, n: Node) -> Iterable[str]:
        return list(self.NAMES)

    def child(self, p: Node, name: str) -> Node | None:
        assert p.vid is not None
        vid, nodes, v = p.vid, self.ctx.inodes, self.ctx.version(p.vid)
        if name == "version":
            return nodes.get(LineageVersionKey(vid), p.ino, vid=vid, target=f"../../{v.ref}")
        if name in ("parents", "children"):
            return nodes.get(LineageRelKey(vid, name), p.ino, vid=vid)
        if name == "how":
            text = (v.how + "\n").encode() if v.how else b""
            return nodes.get(LineageTextKey(vid, name), p.ino, vid=vid, text=text)
        if name == "info.json":
            return nodes.get(LineageTextKey(vid, name), p.ino, vid=vid, text=self.info_json(v))
        return None

    def info_json(self, v: Version) -> bytes:
        refs = {pid: self.ctx.version(pid).ref for pid in v.parents}
        d = {
            "id": v.id, "ref": v.ref, "model": v.model, "number": v.number,
            "previous": v.previous, "previous_ref": refs.get(v.previous) if v.previous else None,
            "derived_from": list(v.derived_from),
            "derived_from_refs": [refs[p] for p in v.derived_from],
            "how": v.how, "message": v.message, "time": v.time,
            "provenance": dict(v.provenance),
            "lossy": isinstance(v.provenance.get("lossy"), dict),  # stored lossily (docs/lossy.md)
            "files": {p: {"size": e.size, "format": e.format, "blake3": e.blake3_hex}
                      for p, e in sorted(v.files.items())},
        }
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()


class LineageRelDir(_View):
    """``parents`` (fixed) or ``children`` (grows when a version is derived)."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert isinstance(n.key, LineageRelKey)
        grows = SHORT_TIMEOUT if n.key.rel == "children" else LONG_TIMEOUT
        return Attr(n.ino, VIEW_DIR, 2, 0, self.vtime(n.key.vid), entry_timeout or LONG_TIMEOUT,
                    grows)

    def names(self, n: Node) -> Iterable[str]:
        assert isinstance(n.key, LineageRelKey)
        return [v.ref for v in self.ctx.related(n.key.vid, n.key.rel)]

    def child(self, p: Node, name: str) -> Node | None:
        assert isinstance(p.key, LineageRelKey)
        vid, rel = p.key.vid, p.key.rel
        for other in self.ctx.related(vid, rel):
            if other.ref == name:
                return self.ctx.inodes.get(LineageRelLinkKey(vid, rel, other.id), p.ino,
                                           vid=vid, target=f"../../{other.ref}")
        return None


class ViewLink(_View):
    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        mtime = self.vtime(n.vid) if n.vid else ns(self.ctx.mounted_at)
        return Attr(n.ino, stat.S_IFLNK | 0o777, 1, len(n.target.encode()), mtime,
                    entry_timeout or LONG_TIMEOUT, LONG_TIMEOUT)


class TagViewLink(_View):
    """A tag under ``.versions/<model>``: it moves, so short timeouts."""

    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.vid is not None
        return Attr(n.ino, stat.S_IFLNK | 0o777, 1, len(n.target.encode()), self.vtime(n.vid),
                    SHORT_TIMEOUT, SHORT_TIMEOUT)


class ViewText(_View):
    def attr(self, n: Node, entry_timeout: float | None) -> Attr:
        assert n.vid is not None
        return Attr(n.ino, stat.S_IFREG | 0o444, 1, len(n.text), self.vtime(n.vid),
                    entry_timeout or LONG_TIMEOUT, LONG_TIMEOUT)


def view_kinds(ctx: ViewContext) -> dict[type[Key], NodeKind]:
    """The handler of every generated node, by key type."""
    link = ViewLink(ctx)
    return {
        VersionsKey: VersionsDir(ctx), ModelVersionsKey: ModelVersionsDir(ctx),
        VersionLinkKey: link, LineageKey: LineageDir(ctx), LineageNodeKey: LineageNodeDir(ctx),
        LineageVersionKey: link, LineageRelKey: LineageRelDir(ctx), LineageRelLinkKey: link,
        LineageTextKey: ViewText(ctx), VersionsTagKey: TagViewLink(ctx),
    }
