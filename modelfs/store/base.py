"""The store interface: named tables of bytes -> bytes, read and write transactions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

# Every table the upper layers use. Keys and values are opaque bytes here.
TABLES: tuple[str, ...] = (
    "meta",  # store-wide settings (format version, chunk sizes)
    "chunks",  # blake3(decoded chunk) -> chunk record
    "files",  # blake3(file) -> file record
    "versions",  # version id -> version record
    "models",  # model name -> model record (head, counters)
    "vnums",  # model name + NUL + big-endian number -> version id
    "children",  # parent version id + child version id -> b""
    "tsig",  # tensor signature (name, dtype, shape) + version id -> b""  (parent inference)
    "sketch",  # sampled tensor elements per file, version digests and their index (repo/sketches.py)
    "pending",  # staged-but-uncommitted work (mount snapshot-on-write)
    "recipes",  # model name -> recipe JSON: how its versions are made from its parents (ops/recipes.py)
    "cascades",  # cascade id (+ NUL + node) -> plan / finished-node JSON (ops/cascade.py, resumable)
    "tests",  # test name -> test definition JSON (ops/checks.py: tests run over the lineage)
    "config",  # model name -> JSON of its settings (repo/settings.py: settle, lossy)
    "results",  # test definition hash + NUL + version id -> test result JSON (ops/results.py)
    "tags",  # model name + NUL + tag -> version id (repo/history.py; refs MODEL:TAG)
    "annotations",  # version id -> JSON list of timed edits read over the record (lineage/overlay.py)
    "locs",  # chunk key -> where its record lies in the store's file, and its bases (repo/locations.py)
    "remotes",  # remote name -> JSON {"url", "endpoint"}; name + NUL + pack id -> its index (repo/transfer.py)
)


class ReadTxn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...

    def keys(self, table: str, prefix: bytes = b"") -> Iterator[bytes]: ...


class WriteTxn(ReadTxn, Protocol):
    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool: ...

    def delete(self, table: str, key: bytes) -> bool: ...


class Store(Protocol):
    """A store is a set of tables; a write transaction is all-or-nothing."""

    readonly: bool  # opened read-only (its disk is): write() raises StoreReadOnly

    def read(self, views: bool = False) -> AbstractContextManager[ReadTxn]:
        """A read snapshot. With ``views``, ``get`` returns memoryviews into the store's own
        pages (no copy: the read path decodes chunk records in place); they are valid only
        until the transaction ends, so nothing may keep them."""
        ...

    def write(self) -> AbstractContextManager[WriteTxn]: ...

    def stored_bytes(self) -> int:
        """Bytes the store occupies (pages in use), for `du`."""
        ...

    # Paging hints (store/filemap.py): a store without a file answers None and ignores them.
    def offset_of(self, view: memoryview | bytes) -> int | None:
        """Where a view from ``read(views=True)`` lies in the store's file, if it has one."""
        ...

    def will_need(self, spans: Iterable[tuple[int, int]]) -> None:
        """Start reading these (file offset, length) ranges now; a hint, never an error."""
        ...

    def random_access(self, on: bool = True) -> bool:
        """Stop reading around each page fault (the reader asks for its records itself);
        ``on=False`` starts again."""
        ...

    def map_in(self, offset: int, length: int) -> None:
        """Map this range of the file in before it is touched (one call, not a fault a page)."""
        ...

    def close(self) -> None: ...
