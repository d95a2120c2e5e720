"""`modelfs gc --remote`: remove the packs no ref reaches, never one younger than the grace.

Reachable is what the refs name: their versions (and the versions those descend from), the
file records and sketches of their files, the chunks those list, and the chunks' delta
bases (read from the indexes, not the packs). A pack with any reachable record stays whole
(packs are never rewritten). A pack, or an index without a pack, that nothing reaches is
removed only when it is older than the grace period by the server's clock: a push uploads
its packs before it moves a ref, so a push that takes less than the grace is never robbed.
An index goes before its pack, so no reader finds an index whose pack is gone for long.
"""

from __future__ import annotations

import time
from typing import Any

from modelfs.lineage import Version
from modelfs.remote.state import Remote
from modelfs.repo import file_record_chunks

GRACE = 3600.0  # seconds: longer than any push


def gc_remote(remote: Remote, grace: float = GRACE, dry_run: bool = False,
              now: float | None = None) -> dict[str, Any]:
    remote.check()
    now = time.time() if now is None else now
    held = remote.holdings()
    refs = remote.refs()
    meta = remote.meta_records(held)
    versions = {k.decode(): Version.from_bytes(v) for (t, k), v in meta.items() if t == "versions"}
    live_versions: set[str] = set()
    stack = [vid for r in refs.values() for vid in (*r.versions, r.head)]
    while stack:
        vid = stack.pop()
        if vid in live_versions or vid not in versions:
            continue
        live_versions.add(vid)
        stack += versions[vid].parents
    live_files = {e.key for vid in live_versions for e in versions[vid].files.values()}
    roots = {k for f in live_files if ("files", f) in meta for k in file_record_chunks(meta[("files", f)])}
    live_chunks = held.chunk_closure(roots)
    live: set[tuple[str, bytes]] = {("versions", v.encode()) for v in live_versions}
    live |= {("files", f) for f in live_files} | {("sketch", b"f" + f) for f in live_files}
    live |= {("chunks", k) for k in live_chunks}

    objects = {o.key: o for o in remote.store.list("packs/")}
    kept_packs = {p for p, idx in held.indexes.items() if any((e.table, e.key) in live for e in idx.entries)}
    by_pack: dict[str, list[str]] = {}
    for key in objects:
        by_pack.setdefault(key[len("packs/"):].rsplit(".", 1)[0], []).append(key)
    doomed: list[str] = []
    young = 0
    for pack, keys in sorted(by_pack.items()):
        if pack in kept_packs:
            continue
        if any(now - objects[k].modified < grace for k in keys):  # a pack and its index go together
            young += 1
            continue
        doomed += keys
    doomed.sort(key=lambda k: not k.endswith(".idx"))  # every index before any pack
    freed = sum(objects[k].size for k in doomed)
    if not dry_run:
        for key in doomed:
            remote.store.delete(key)
    return {"deleted": len(doomed), "bytes_freed": freed, "packs_kept": len(kept_packs),
            "too_young": young, "dry_run": dry_run, **remote.summary()}
