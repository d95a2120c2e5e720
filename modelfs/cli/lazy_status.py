"""What `modelfs status` says about chunk fetching: a lazy store's remote and what it holds,
and each running mount of the store's fetch counters and decoded-cache hit rate.

Cheap by design: one count of the chunks table and one xattr read per mount of the store;
no walk of the lineage and nothing fetched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modelfs.fs import control
from modelfs.fs.handle import COUNTERS_XATTR
from modelfs.repo import Repo


def _mount_counters(store: Path) -> list[dict[str, Any]]:
    """Counters of the modelfs mounts serving `store` (writable or read-only)."""
    out = []
    try:
        entries = control.mounts()
    except OSError:
        return out
    for m in entries:
        if m.fstype != control.FSTYPE:
            continue
        try:
            served = Path(os.fsdecode(os.getxattr(m.mountpoint, control.STORE_XATTR)))
            counters = json.loads(os.getxattr(m.mountpoint, COUNTERS_XATTR))
        except (OSError, ValueError):
            continue
        if served.resolve() != store.resolve():
            continue
        hits, decodes = counters.get("cache_hits", 0), counters.get("chunks_decoded", 0)
        row = {"mountpoint": m.mountpoint,
               "cache_hit_rate": hits / (hits + decodes) if hits + decodes else None}
        row.update({k: v for k, v in counters.items() if k.startswith("lazy_")})
        out.append(row)
    return out


def fetch_status(repo: Repo) -> dict[str, Any]:
    """The lazy remote (None for a full store), chunks held here, and the mounts' counters."""
    held = repo.chunk_count()
    mounts = _mount_counters(repo.path) if repo.path is not None else []
    return {"lazy_remote": repo.lazy_remote(), "chunks_here": held, "mounts": mounts}


def fetch_lines(st: dict[str, Any]) -> list[str]:
    lines = []
    if st["lazy_remote"]:
        lines.append(f"lazy store: chunks not here come from remote {st['lazy_remote']} on first "
                     f"read ({st['chunks_here']} chunks here so far)")
    for m in st["mounts"]:
        rate = m["cache_hit_rate"]
        line = (f"mount {m['mountpoint']}: decoded-cache hit rate "
                f"{'-' if rate is None else f'{rate:.0%}'}")
        if "lazy_fetch_calls" in m:
            line += (f", fetched {m['lazy_chunks_fetched']} chunks ({m['lazy_bytes_fetched']} bytes)"
                     f" in {m['lazy_fetch_calls']} calls, {m['lazy_failures']} failed, "
                     f"{m['lazy_rejected']} refused")
        lines.append(line)
    return lines
