"""Resolving a reference (lineage/refs.py's grammar) to a version, and reading tags.

One function for every front end: `Repo.resolve` (the CLI, ops) and the mount (through
`Repo.resolve_mount`, which accepts only the refs that name a version for good or by the
user's choice) both end here, so ``M@0``, ``M@3`` and ``M:best`` mean one thing everywhere.
"""

from __future__ import annotations

from modelfs.errors import InvalidName, NotFound
from modelfs.lineage import LineageGraph, Version
from modelfs.lineage.refs import BackRef, HeadRef, IdRef, NumberRef, Ref, TagRef, parse_ref
from modelfs.store import ReadTxn

TAGS = "tags"


def tag_key(model: str, tag: str) -> bytes:
    return model.encode() + b"\0" + tag.encode()


def tags_of(txn: ReadTxn, model: str | None = None) -> list[tuple[str, str, str]]:
    """(model, tag, version id) of every tag (of one model), in name order."""
    prefix = model.encode() + b"\0" if model is not None else b""
    out = []
    for k, v in txn.items(TAGS, prefix):
        m, _, t = bytes(k).partition(b"\0")
        out.append((m.decode(), t.decode(), bytes(v).decode()))
    return out


def resolve(txn: ReadTxn, graph: LineageGraph, text: str | Ref) -> Version:
    """The version a reference names; NotFound or InvalidName (one line) otherwise."""
    ref = parse_ref(text) if isinstance(text, str) else text
    shown = text if isinstance(text, str) else repr(text)
    if isinstance(ref, IdRef):
        info = graph.model(txn, ref.prefix)
        if info is not None:  # a model whose name looks like hex: the model wins, as before
            ref = HeadRef(ref.prefix)
        else:
            hits = [bytes(k).decode() for k in txn.keys("versions", ref.prefix.encode())]
            if len(hits) == 1:
                return graph.version(txn, hits[0])
            if len(hits) > 1:
                raise InvalidName(f"version id prefix {ref.prefix!r} is ambiguous")
            raise NotFound(f"unknown model or version {shown!r}")
    info = graph.model(txn, ref.model)
    if info is None:
        raise NotFound(f"unknown model {ref.model!r}" + (f" (in {shown!r})" if shown != ref.model else ""))
    if isinstance(ref, HeadRef):
        if info.head is None:
            raise NotFound(f"model {ref.model!r} has no versions")
        return graph.version(txn, info.head)
    if isinstance(ref, NumberRef):
        return graph.version_by_number(txn, ref.model, ref.number)
    if isinstance(ref, BackRef):
        if info.head is None:
            raise NotFound(f"model {ref.model!r} has no versions")
        head = graph.version(txn, info.head)
        return graph.version_by_number(txn, ref.model, head.number - ref.back)
    assert isinstance(ref, TagRef)
    vid = txn.get(TAGS, tag_key(ref.model, ref.tag))
    if vid is None:
        raise NotFound(f"model {ref.model!r} has no tag {ref.tag!r} (`modelfs tag -l {ref.model}` lists them)")
    return graph.version(txn, bytes(vid).decode())
