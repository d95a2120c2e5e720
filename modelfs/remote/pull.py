"""`modelfs pull`, `clone` and `fetch`: versions down from a remote, and only the chunks
the local store lacks.

A pull reads the refs and the indexes, downloads the metadata packs, works out which
versions are new here (a model's local versions must be the start of the remote's, or the
histories differ and nothing is pulled), fetches the chunks those versions reach that the
store lacks (ranged GETs of neighbouring records, each record checked against the blake3
its index gives before it is kept), then adopts the versions all at once. A lazy store
takes the metadata only: its chunks come on first read (`open_chunk_source`) or by `fetch`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelfs.errors import Conflict, NotFound
from modelfs.lineage import Version
from modelfs.remote.packs import coalesce, cut, pack_key
from modelfs.remote.push import is_prefix
from modelfs.remote.state import Holdings, Ref, Remote
from modelfs.remote.transport import Options
from modelfs.repo import Repo, Transfer, file_record_chunks

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
BATCH_BYTES = 64 << 20  # chunk bytes fetched before they are written to the store


def _closure(refs: dict[str, Ref], versions: dict[str, Version], names: Iterable[str]) -> list[str]:
    """These remote models and those their versions descend from, dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        ref = refs.get(name)
        if ref is None:
            raise NotFound(f"the remote has no model {name!r}")
        for vid in ref.versions:
            v = versions.get(vid)
            if v is None:
                raise NotFound(f"the remote's {name} lists version {vid}, which it does not hold (damaged remote)")
            for p in v.parents:
                if p in versions:
                    visit(versions[p].model)
        order.append(name)

    for n in names:
        visit(n)
    return order


class Puller:
    def __init__(self, repo: Repo, remote: Remote, progress: Progress | None = None, workers: int = 8) -> None:
        self.repo = repo
        self.remote = remote
        self.transfer = Transfer(repo)
        self.progress = progress or (lambda n: None)
        self.workers = workers

    def run(self, models: Iterable[str] = (), lazy: bool | None = None) -> dict[str, Any]:
        lazy = self.repo.lazy_remote() is not None if lazy is None else lazy
        self.remote.check()
        held = self.remote.holdings(self.repo, self.progress)
        refs = self.remote.refs()
        with self.repo.read_txn() as txn:
            local = {vid for r in refs.values() for vid in r.versions if txn.get("versions", vid.encode())}
        remote_new = [("versions", vid.encode()) for r in refs.values() for vid in r.versions if vid not in local]
        got = self.remote.records(held, remote_new, self.progress)
        versions = {k.decode(): Version.from_bytes(raw) for (_, k), raw in got.items()}
        versions.update({vid: self.repo.version(vid) for vid in local})
        names = _closure(refs, versions, list(models) or sorted(refs))
        new: list[Version] = []
        heads: dict[str, str] = {}
        for m in names:
            ref = refs[m]
            mine = tuple(v.id for v in self.repo.versions(m)) if self._has_model(m) else ()
            if not is_prefix(mine, ref.versions):
                if is_prefix(ref.versions, mine):
                    continue  # this store is ahead: nothing to pull (push it)
                raise Conflict(f"local {m} and the remote's differ from {m}@{_diverge(mine, ref.versions)} on; "
                               "nothing was pulled")
            new += [versions[vid] for vid in ref.versions[len(mine):]]
            heads[m] = ref.head
        with self.repo.read_txn() as txn:
            fkeys = {e.key for v in new for e in v.files.values() if txn.get("files", e.key) is None}
        meta = self.remote.records(held, [(t, k) for f in sorted(fkeys)
                                          for t, k in (("files", f), ("sketch", b"f" + f))], self.progress)
        files = {k: raw for (t, k), raw in meta.items() if t == "files"}
        sketch = {k: raw for (t, k), raw in meta.items() if t == "sketch"}
        fetched, chunk_bytes = (0, 0) if lazy else self._fetch_chunks(held, files)
        adopted = self.transfer.adopt(new, files, sketch, heads)
        return {"models": names, "versions": len(adopted), "files": len(files), "chunks": fetched,
                "chunk_bytes": chunk_bytes, "lazy": lazy, **self.remote.summary()}

    def _has_model(self, name: str) -> bool:
        try:
            self.repo.model(name)
        except NotFound:
            return False
        return True

    def _fetch_chunks(self, held: Holdings, files: dict[bytes, bytes]) -> tuple[int, int]:
        keys = {k for raw in files.values() for k in file_record_chunks(raw)}
        need = self.transfer.missing_chunks(held.chunk_closure(keys))
        return fetch_into(self.transfer, self.remote, held, need, self.progress, self.workers)


def _diverge(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n + 1


def fetch_into(transfer: Transfer, remote: Remote, held: Holdings, need: set[bytes], progress: Progress,
               workers: int = 8) -> tuple[int, int]:
    """Fetch these chunks into the store, a batch of spans at a time: how many were stored,
    and the bytes the ranged GETs moved."""
    absent = [k for k in need if k not in held.chunks]
    if absent:
        raise NotFound(f"{remote.where()} lacks chunk {absent[0].hex()} (damaged remote): nothing was pulled")
    spans = coalesce([held.chunks[k] for k in sorted(need, key=lambda k: (held.chunks[k].pack,
                                                                          held.chunks[k].offset))],
                     gap=64 << 10)

    def get(span: Any) -> dict[bytes, bytes]:
        data = remote.store.get_range(pack_key(span.pack), span.start, span.end - span.start)
        got = cut(span, data, remote.where())
        progress(len(data))
        return {k: v for k, v in got.items() if k in need}

    stored = moved = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        batch: list[Any] = []
        size = 0
        for span in [*spans, None]:
            if span is not None:
                batch.append(span)
                size += span.end - span.start
                moved += span.end - span.start
            if batch and (span is None or size >= BATCH_BYTES):
                records: dict[bytes, bytes] = {}
                for part in pool.map(get, batch):
                    records.update(part)
                stored += transfer.put_chunks(records)
                batch, size = [], 0
    return stored, moved


def pull(repo: Repo, remote: Remote, models: Iterable[str] = (), progress: Progress | None = None,
         lazy: bool | None = None) -> dict[str, Any]:
    return Puller(repo, remote, progress).run(models, lazy)


def clone(url: str, dest: str | Path, *, lazy: bool = False, options: Options | None = None,
          name: str = "origin", progress: Progress | None = None) -> dict[str, Any]:
    """A new store at `dest` holding everything the remote's refs reach (with `lazy`, the
    metadata and the pack indexes only). A failed clone leaves no store behind."""
    path = Path(dest)
    existed = path.exists()
    if existed and (not path.is_dir() or any(path.iterdir())):
        raise Conflict(f"clone target {path} exists and is not an empty directory")
    opts = options or Options()
    remote = Remote(name, url, opts)
    remote.check()  # before a store is made: a bad URL makes nothing
    repo = Repo.init(path)
    try:
        Transfer(repo).set_remote(name, {"url": url, "endpoint": opts.endpoint})
        if lazy:
            repo.set_lazy_remote(name)
        out = pull(repo, remote, progress=progress, lazy=lazy)
    except BaseException:
        repo.close()
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        else:  # it was empty: empty it again
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    repo.close()
    return {"store": str(path), **out}


def fetch(repo: Repo, ref: str, options: Options | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    """Every chunk of a version (with its delta bases) into a lazy store, for offline use."""
    name = repo.lazy_remote()
    if name is None:
        raise NotFound("this store is not lazy: it holds every chunk already")
    v = repo.resolve(ref)
    remote = Remote.of(repo, name, options)
    transfer = Transfer(repo)
    held = remote.kept_holdings(repo)
    keys = repo.chunk_keys(v)
    if any(k not in held.chunks for k in keys):  # pushed after the clone: read the indexes anew
        held = remote.holdings(repo)
    need = transfer.missing_chunks(held.chunk_closure(keys))
    stored, moved = fetch_into(transfer, remote, held, need, progress or (lambda n: None))
    return {"version": v.ref, "chunks": stored, "chunk_bytes": moved, **remote.summary()}
