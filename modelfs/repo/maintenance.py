"""Space accounting (du), integrity checks (fsck) and garbage collection (gc)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3

from modelfs.errors import ModelfsError
from modelfs.lineage import FileEntry
from modelfs.repo.chunks import ChunkRecord, chunk_key
from modelfs.repo.drafts import Draft
from modelfs.repo.files import FileRecord

if TYPE_CHECKING:
    from modelfs.repo.repo import Repo


@dataclass
class FsckReport:
    errors: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    files_checked: int = 0
    versions_checked: int = 0
    unreferenced_chunks: int = 0
    unreferenced_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "chunks_checked": self.chunks_checked,
                "files_checked": self.files_checked, "versions_checked": self.versions_checked,
                "unreferenced_chunks": self.unreferenced_chunks,
                "unreferenced_files": self.unreferenced_files}


class Maintenance:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    # -- reachability ------------------------------------------------------------------------
    def _reachable(self) -> tuple[set[bytes], set[bytes], list[str]]:
        """File keys and chunk keys some version reaches (chunk bases included), and dangling refs."""
        repo = self.repo
        files: set[bytes] = set()
        chunks: set[bytes] = set()
        missing: list[str] = []
        with repo.store.read() as txn:
            pending = repo.drafts()
            sources: list[tuple[str, dict[str, FileEntry]]] = [
                (v.ref, dict(v.files)) for v in repo.graph.all_versions(txn)]
            sources += [(f"draft {m}", {p: e for p, e in (pending._draft(txn, m) or Draft(m)).changes.items() if e})
                        for m in pending.models()]
            for ref, entries in sources:
                for path, e in entries.items():
                    if e.key in files:
                        continue
                    raw = txn.get("files", e.key)
                    if raw is None:
                        missing.append(f"{ref}: file record for {path} is missing")
                        continue
                    files.add(e.key)
                    for t in FileRecord.from_bytes(raw).tensors():
                        stack = list(t.chunks)
                        while stack:
                            k = stack.pop()
                            if k in chunks:
                                continue
                            craw = txn.get("chunks", k)
                            if craw is None:
                                missing.append(f"{ref}:{path}: chunk {k.hex()} is missing")
                                continue
                            chunks.add(k)
                            stack += [b for b, _ in ChunkRecord.from_bytes(craw).bases]
        return files, chunks, missing

    # -- du ------------------------------------------------------------------------------------
    def du(self) -> dict[str, Any]:
        """Logical bytes (as full copies) and stored bytes; each chunk counts for the first version that used it."""
        repo = self.repo
        seen_chunks: set[bytes] = set()
        seen_files: set[bytes] = set()
        models: dict[str, dict[str, int]] = {}
        with repo.store.read() as txn:
            versions = sorted(repo.graph.all_versions(txn), key=lambda v: v.time)
            for v in versions:
                m = models.setdefault(v.model, {"logical": 0, "stored": 0, "versions": 0})
                m["versions"] += 1
                for e in v.files.values():
                    m["logical"] += e.size
                    if e.key in seen_files:
                        continue
                    seen_files.add(e.key)
                    raw = txn.get("files", e.key)
                    if raw is None:
                        continue
                    m["stored"] += len(raw)
                    for t in FileRecord.from_bytes(raw).tensors():
                        for k in t.chunks:
                            if k not in seen_chunks:
                                seen_chunks.add(k)
                                craw = txn.get("chunks", k)
                                m["stored"] += len(craw) if craw else 0
        logical = sum(m["logical"] for m in models.values())
        stored = sum(m["stored"] for m in models.values())
        for m in models.values():
            m["ratio"] = m["logical"] / m["stored"] if m["stored"] else 0.0  # type: ignore[assignment]
        return {"models": models,
                "total": {"logical": logical, "stored": stored,
                          "ratio": logical / stored if stored else 0.0,
                          "store_file_bytes": repo.store.stored_bytes(),
                          "versions": len(versions)}}

    # -- fsck ----------------------------------------------------------------------------------
    def fsck(self, progress: Callable[[int], None] | None = None) -> FsckReport:
        """Decode every chunk and check its blake3; rebuild every file and check its blake3; check refs."""
        repo = self.repo
        report = FsckReport()
        files, chunks, missing = self._reachable()
        report.errors += missing
        with repo.store.read() as txn:
            all_chunks = list(txn.keys("chunks"))
            all_files = list(txn.keys("files"))
            models = repo.graph.models(txn)
            for m in models:
                if m.head is None or txn.get("versions", m.head.encode()) is None:
                    report.errors.append(f"model {m.name}: head {m.head} is missing")
            for v in repo.graph.all_versions(txn):
                report.versions_checked += 1
                for p in v.parents:
                    if txn.get("versions", p.encode()) is None:
                        report.errors.append(f"{v.ref}: parent {p} is missing")
        report.unreferenced_chunks = len(set(all_chunks) - chunks)
        report.unreferenced_files = len(set(all_files) - files)

        def check_chunk(k: bytes) -> str | None:
            try:
                data = repo.cache.decode(k, verify=False)
            except Exception as e:  # noqa: BLE001  damaged bytes fail anywhere (zstd, struct): report, go on
                return f"chunk {k.hex()}: cannot decode: {type(e).__name__}: {e}"
            if chunk_key(data) != k:
                return f"chunk {k.hex()}: content does not match its blake3"
            return None

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for err in pool.map(check_chunk, sorted(chunks)):
                report.chunks_checked += 1
                if err:
                    report.errors.append(err)
                if progress:
                    progress(1)
            for key in sorted(files):
                report.files_checked += 1
                h = blake3.blake3()
                try:
                    rec = repo.file_record(key)
                    for data in repo.iter_file(FileEntry(key, rec.size, rec.format), pool):
                        h.update(data)
                except Exception as e:  # noqa: BLE001  as above: a damaged store is reported, not raised
                    report.errors.append(f"file {key.hex()}: {type(e).__name__}: {e}")
                    continue
                if h.digest() != key:
                    report.errors.append(f"file {key.hex()}: rebuilt bytes do not match its blake3")
        return report

    # -- gc --------------------------------------------------------------------------------------
    def gc(self, dry_run: bool = False) -> dict[str, int]:
        """Delete chunks and file records no version reaches (e.g. left by a killed import)."""
        repo = self.repo
        with repo._writer_lock(exclusive=True):
            files, chunks, missing = self._reachable()
            if missing:
                raise ModelfsError("store has dangling references; run `modelfs fsck` before gc: " + missing[0])
            with repo.store.read() as txn:
                dead_chunks = [(k, len(v)) for k, v in txn.items("chunks") if k not in chunks]
                dead_files = [k for k in txn.keys("files") if k not in files]
            if not dry_run:
                with repo.store.write() as txn:
                    for k, _ in dead_chunks:
                        txn.delete("chunks", k)
                    for k in dead_files:
                        txn.delete("files", k)
        return {"chunks_removed": len(dead_chunks), "files_removed": len(dead_files),
                "bytes_freed": sum(n for _, n in dead_chunks)}
