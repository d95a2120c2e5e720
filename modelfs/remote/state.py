"""One remote as the layers above see it: its object store, its indexes, its refs.

A ref is one small JSON object per model, ``refs/<model>.json``:
``{"model": M, "head": id, "versions": [id of M@1, id of M@2, ...]}``; it is created with a
create-only PUT and moved with a PUT conditional on the ETag it was read at, so two pushers
never lose each other's versions. The indexes of all packs, read once per operation (and
kept in the local store, so a second read of the same remote fetches only new ones), say
what the remote holds: a push uploads only what they lack, a pull and a lazy read find
each record's byte range through them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from modelfs.errors import Conflict, CorruptData, ModelfsError, NotFound
from modelfs.remote.packs import (
    KIND_META,
    Entry,
    PackIndex,
    Span,
    coalesce,
    cut,
    index_key,
    pack_key,
    unpack_meta,
)
from modelfs.remote.transport import (
    Counting,
    Options,
    PreconditionFailed,
    open_object_store,
)
from modelfs.repo import Repo, Transfer

log = logging.getLogger(__name__)

FORMAT_KEY = "modelfs-remote.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class Ref:
    model: str
    head: str
    versions: tuple[str, ...]
    etag: str | None = None  # what it was read at; None for a ref not on the remote yet

    def to_bytes(self) -> bytes:
        return json.dumps({"model": self.model, "head": self.head, "versions": list(self.versions)},
                          indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, etag: str | None, where: str = "the remote") -> Ref:
        try:
            d = json.loads(raw)
            ref = cls(str(d["model"]), str(d["head"]), tuple(str(v) for v in d["versions"]), etag)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptData(f"a ref on {where} is damaged ({type(e).__name__}: {e})") from None
        if not ref.versions or ref.head not in ref.versions:
            raise CorruptData(f"ref of {ref.model} on {where} is damaged (its head is not one of its versions)")
        return ref


def ref_key(model: str) -> str:
    return f"refs/{model}.json"


@dataclass
class Holdings:
    """What the remote holds, from its indexes: records by (table, key), and the packs."""

    indexes: dict[str, PackIndex] = field(default_factory=dict)
    chunks: dict[bytes, Entry] = field(default_factory=dict)
    meta: dict[tuple[str, bytes], Entry] = field(default_factory=dict)

    def add(self, idx: PackIndex) -> None:
        self.indexes[idx.pack] = idx
        for e in idx.entries:
            if e.table == "chunks":
                self.chunks.setdefault(e.key, e)
            else:
                self.meta.setdefault((e.table, e.key), e)

    def chunk_closure(self, keys: set[bytes]) -> set[bytes]:
        """These chunks and their delta bases, as far as the indexes know them."""
        out: set[bytes] = set()
        stack = list(keys)
        while stack:
            k = stack.pop()
            if k in out:
                continue
            out.add(k)
            e = self.chunks.get(k)
            if e is not None:
                stack.extend(e.bases)
        return out


class Remote:
    """A named remote, opened for one operation; `store.summary()` is what moved."""

    def __init__(self, name: str, url: str, options: Options | None = None) -> None:
        self.name = name
        self.url = url
        self.store = Counting(open_object_store(url, options))

    @classmethod
    def of(cls, repo: Repo, name: str, options: Options | None = None) -> Remote:
        """The remote `name` as configured in this store (``modelfs remote add``)."""
        config = Transfer(repo).remotes().get(name)
        if config is None:
            raise NotFound(f"no remote {name!r} in this store (add it: modelfs remote add {name} URL)")
        opts = options or Options()
        if config.get("endpoint") and opts.endpoint is None:
            opts = Options(config["endpoint"], opts.connect_timeout, opts.read_timeout, opts.attempts,
                           opts.access_key, opts.secret_key)
        return cls(name, config["url"], opts)

    def where(self) -> str:
        return f"remote {self.name} ({self.url})"

    # -- the format marker ------------------------------------------------------------------
    def check(self, create: bool = False) -> None:
        """The bucket/directory answers and holds a modelfs remote (or, with `create`, becomes one)."""
        self.store.check()
        raw = self.store.get(FORMAT_KEY)
        if raw is None:
            if not create:
                raise NotFound(f"{self.where()} holds no modelfs remote (push to it first)")
            with contextlib.suppress(PreconditionFailed):  # another pusher made it first
                self.store.put_if(FORMAT_KEY, json.dumps({"format": FORMAT}).encode(), None)
            return
        fmt = json.loads(raw).get("format")
        if fmt != FORMAT:
            raise ModelfsError(f"{self.where()} is in remote format {fmt}; this modelfs reads {FORMAT}")

    # -- indexes ---------------------------------------------------------------------------
    def holdings(self, repo: Repo | None = None, progress: Callable[[int], None] | None = None) -> Holdings:
        """Every pack index on the remote (those kept in `repo` are not downloaded again)."""
        listed = {o.key[len("packs/"):-len(".idx")] for o in self.store.list("packs/") if o.key.endswith(".idx")}
        transfer = Transfer(repo) if repo is not None else None
        cached = transfer.cached_indexes(self.name) if transfer else {}
        held = Holdings()
        fresh: dict[str, bytes] = {}

        def load(pack: str) -> tuple[str, bytes]:
            raw = self.store.get(index_key(pack))
            if raw is None:
                raise NotFound(f"{self.where()}: index of pack {pack} vanished while read (a gc?): try again")
            return pack, raw

        with ThreadPoolExecutor(max_workers=8) as pool:
            for pack, raw in pool.map(load, sorted(listed - set(cached))):
                fresh[pack] = raw
                if progress:
                    progress(len(raw))
        for pack in sorted(listed):
            raw = fresh.get(pack) or cached[pack]
            try:
                held.add(PackIndex.from_bytes(pack, raw))
            except CorruptData as e:
                raise CorruptData(f"{self.where()}: {e}") from None
        if transfer is not None:
            transfer.cache_indexes(self.name, fresh, set(cached) - listed)
        return held

    def kept_holdings(self, repo: Repo) -> Holdings:
        """What the indexes kept in `repo` say (no request: may miss what was pushed since)."""
        held = Holdings()
        for pack, raw in Transfer(repo).cached_indexes(self.name).items():
            held.add(PackIndex.from_bytes(pack, raw))
        return held

    def meta_records(self, held: Holdings, packs: set[str] | None = None,
                     progress: Callable[[int], None] | None = None) -> dict[tuple[str, bytes], bytes]:
        """Every record of the metadata packs (or of `packs`), each checked against its index."""
        wanted = [i for i in held.indexes.values() if i.kind == KIND_META and (packs is None or i.pack in packs)]

        def whole(span: Span) -> bytes:
            data = self.store.get(pack_key(span.pack))
            if data is None:
                raise NotFound(f"{self.where()}: pack {span.pack} is missing though its index is there")
            return data

        return self._unpacked([Span(i.pack, 0, i.size, i.entries) for i in wanted], whole, progress)

    def records(self, held: Holdings, wanted: list[tuple[str, bytes]],
                progress: Callable[[int], None] | None = None) -> dict[tuple[str, bytes], bytes]:
        """These metadata records (those the indexes know), by ranged GETs of their packs,
        each checked against its index: a pull downloads only the versions it lacks."""
        entries = [held.meta[w] for w in dict.fromkeys(wanted) if w in held.meta]
        if not entries:
            return {}

        def ranged(span: Span) -> bytes:
            return self.store.get_range(pack_key(span.pack), span.start, span.end - span.start)

        return self._unpacked(coalesce(entries, gap=64 << 10), ranged, progress)

    def _unpacked(self, spans: Iterable[Span], fetch: Callable[[Span], bytes],
                  progress: Callable[[int], None] | None) -> dict[tuple[str, bytes], bytes]:
        """The metadata records of these spans, fetched 8 at a time, each checked against its index."""
        def load(span: Span) -> dict[tuple[str, bytes], bytes]:
            data = fetch(span)
            got = cut(span, data, self.where())
            if progress:
                progress(len(data))
            return {(e.table, e.key): unpack_meta(got[e.key], f"{e.table} record {e.key.hex()}")
                    for e in span.entries}

        out: dict[tuple[str, bytes], bytes] = {}
        with ThreadPoolExecutor(max_workers=8) as pool:
            for part in pool.map(load, spans):
                out.update(part)
        return out

    # -- refs --------------------------------------------------------------------------------
    def refs(self) -> dict[str, Ref]:
        keys = [o.key for o in self.store.list("refs/") if o.key.endswith(".json")]

        def load(key: str) -> Ref | None:
            got = self.store.get_tagged(key)
            return None if got is None else Ref.from_bytes(got[0], got[1], self.where())

        with ThreadPoolExecutor(max_workers=8) as pool:
            return {r.model: r for r in pool.map(load, keys) if r is not None}

    def ref(self, model: str) -> Ref | None:
        got = self.store.get_tagged(ref_key(model))
        return None if got is None else Ref.from_bytes(got[0], got[1], self.where())

    def move_ref(self, new: Ref, old: Ref | None) -> None:
        """Create or move a model's ref, only if it is still what `old` read (else Conflict)."""
        try:
            self.store.put_if(ref_key(new.model), new.to_bytes(), None if old is None else old.etag)
        except PreconditionFailed:
            raise Conflict(f"remote has newer versions of {new.model}; pull first") from None

    def summary(self) -> dict[str, Any]:
        return {"remote": self.name, "url": self.url, **self.store.summary()}
