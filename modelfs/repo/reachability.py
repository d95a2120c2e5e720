"""What a set of file manifests reaches: file records, chunks, and the references that dangle.

The one walk over versions' and drafts' files: fsck checks what it reaches, gc deletes what
it does not, du sizes it, parent inference and diffs compare the chunk keys of versions.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelfs.errors import NotFound
from modelfs.lineage import FileEntry
from modelfs.repo.files import FileRecord
from modelfs.repo.locations import chunk_stat
from modelfs.store import ReadTxn


class Reachability:
    """Accumulates what the manifests `add`ed so far reach, each record read once.

    With ``bases`` (fsck, gc) every chunk record is read, a delta's base chunks are reached
    too, and absent chunks are reported. Without, the chunks are those the file records
    list, read only when ``sizes`` asks for their stored bytes (du); otherwise no chunk
    record is read at all (a cheap chunk-key set).
    """

    def __init__(self, txn: ReadTxn, *, bases: bool = True, sizes: bool = False,
                 lazy: bool = False) -> None:
        self._txn = txn
        self._bases = bases
        self._sizes = sizes
        self._lazy = lazy
        self.files: set[bytes] = set()
        self.chunks: set[bytes] = set()
        self.missing: list[str] = []
        # a lazy store: chunks its remote holds and it has not fetched yet, and the files
        # (keys) and chunks whose bytes need one of them
        self.not_fetched: set[bytes] = set()
        self.incomplete_files: set[bytes] = set()
        self._bases_of: dict[bytes, list[bytes]] = {}

    def add(self, ref: str, entries: Mapping[str, FileEntry]) -> int:
        """Reach `entries` (labelled `ref` in messages); returns the stored bytes newly reached
        (file records always, chunks when reading them)."""
        new = 0
        for path, e in entries.items():
            if e.key in self.files:
                continue
            raw = self._txn.get("files", e.key)
            if raw is None:
                self.missing.append(f"{ref}: file record for {path} is missing")
                continue
            self.files.add(e.key)
            new += len(raw)
            keys: list[bytes] = []
            for t in FileRecord.from_bytes(raw).tensors():
                new += self._reach_chunks(f"{ref}:{path}", list(t.chunks))
                keys += t.chunks
            if self._lazy and not all(self.complete(k) for k in keys):
                self.incomplete_files.add(e.key)
        return new

    def complete(self, key: bytes) -> bool:
        """On a lazy store: whether a reached chunk and its whole base chain are local."""
        stack, seen = [key], set()
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            if k in self.not_fetched:
                return False
            stack += self._bases_of.get(k, [])
        return True

    def _reach_chunks(self, where: str, stack: list[bytes]) -> int:
        new = 0
        read = self._bases or self._sizes
        while stack:
            k = stack.pop()
            if k in self.chunks:
                continue
            if not read:
                self.chunks.add(k)
                continue
            # fsck and gc (bases) must see each record itself; du's sizes come from locations
            st = chunk_stat(self._txn, k, located=not self._bases)
            if st is None:
                if self._lazy:
                    self.not_fetched.add(k)
                else:
                    self.missing.append(f"{where}: chunk {k.hex()} is missing")
                continue
            self.chunks.add(k)
            new += st[0]
            if self._bases:
                bases = list(st[1])
                stack += bases
                if self._lazy and bases:
                    self._bases_of[k] = bases
        return new


def chunk_keys(txn: ReadTxn, manifests: list[Mapping[str, FileEntry]]) -> set[bytes]:
    """The chunk keys the files of these manifests list; a missing file record is an error."""
    reach = Reachability(txn, bases=False)
    for files in manifests:
        reach.add("", files)
    if reach.missing:
        key = next(e.key for files in manifests for e in files.values() if e.key not in reach.files)
        raise NotFound(f"file record {key.hex()} is missing from the store")
    return reach.chunks
