"""Packs and their indexes: how records lie in the remote's objects.

A pack is records back to back; its id is the blake3 of its bytes, so uploading it twice is
harmless and a whole-pack download is checked by its name. Its index (a separate, small
object, written after the pack) lists each record: the table it belongs to, its key, its
offset and length in the pack, the blake3 of the record bytes (so one ranged GET of one
record is checked without trusting the server), and for a chunk its delta bases (so gc and
fetch can follow a chunk's bases without reading the pack). An index ends with the blake3
of everything before it.

Chunk packs hold ``chunks`` records as the store holds them (already compressed by their
codec); metadata packs hold ``versions``, ``files`` and the files' ``sketch`` records, each
compressed with zstd (`pack_meta` / `unpack_meta`; the index's blake3 is of the compressed
bytes): a lazy clone downloads those records and the indexes, and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3
import zstandard

from modelfs.errors import CorruptData

MAGIC = b"MFPX1\n"
TABLE_CODES = {"chunks": 0, "files": 1, "versions": 2, "sketch": 3}
CODE_TABLES = {v: k for k, v in TABLE_CODES.items()}
KIND_CHUNKS = "c"
KIND_META = "m"
_ENTRY = struct.Struct("<BHQI")  # table code, key length, offset, length
_HASH = 32


def pack_meta(raw: bytes) -> bytes:
    """A metadata record as a metadata pack holds it (zstd: file records are hex and JSON)."""
    return zstandard.ZstdCompressor(level=9).compress(raw)


def unpack_meta(stored: bytes, what: str) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(stored)
    except zstandard.ZstdError as e:
        raise CorruptData(f"{what} cannot be decompressed ({e})") from None


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id}.pack"


def index_key(pack_id: str) -> str:
    return f"packs/{pack_id}.idx"


def record_hash(raw: bytes | memoryview) -> bytes:
    return blake3.blake3(raw).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one record lies: pack, table, key, byte range, its blake3, a chunk's bases."""

    pack: str
    table: str
    key: bytes
    offset: int
    length: int
    digest: bytes
    bases: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class PackIndex:
    pack: str
    kind: str
    size: int
    entries: tuple[Entry, ...]

    def to_bytes(self) -> bytes:
        parts = [MAGIC, self.kind.encode(), struct.pack("<QI", self.size, len(self.entries))]
        for e in self.entries:
            parts += [_ENTRY.pack(TABLE_CODES[e.table], len(e.key), e.offset, e.length), e.key, e.digest,
                      struct.pack("<B", len(e.bases)), *e.bases]
        body = b"".join(parts)
        return body + record_hash(body)

    @classmethod
    def from_bytes(cls, pack: str, raw: bytes) -> PackIndex:
        body, tail = raw[:-_HASH], raw[-_HASH:]
        if not raw.startswith(MAGIC) or record_hash(body) != tail:
            raise CorruptData(f"index of pack {pack} is damaged (its blake3 does not match)")
        mv = memoryview(body)
        pos = len(MAGIC)
        kind = bytes(mv[pos:pos + 1]).decode()
        size, n = struct.unpack_from("<QI", mv, pos + 1)
        pos += 13
        entries = []
        for _ in range(n):
            code, klen, off, length = _ENTRY.unpack_from(mv, pos)
            pos += _ENTRY.size
            key = bytes(mv[pos:pos + klen])
            digest = bytes(mv[pos + klen:pos + klen + _HASH])
            pos += klen + _HASH
            (nb,) = struct.unpack_from("<B", mv, pos)
            pos += 1
            bases = tuple(bytes(mv[pos + i * 32:pos + (i + 1) * 32]) for i in range(nb))
            pos += 32 * nb
            entries.append(Entry(pack, CODE_TABLES[code], key, off, length, digest, bases))
        return cls(pack, kind, size, tuple(entries))


@dataclass(frozen=True, slots=True)
class Record:
    """One record on its way into a pack."""

    table: str
    key: bytes
    value: bytes
    bases: tuple[bytes, ...] = ()


def build_pack(kind: str, records: Iterable[Record]) -> tuple[bytes, PackIndex]:
    """The pack bytes and the index that describes them."""
    parts: list[bytes] = []
    pos = 0
    pending = []
    for r in records:
        parts.append(r.value)
        pending.append((r, pos))
        pos += len(r.value)
    data = b"".join(parts)
    pack = blake3.blake3(data).hexdigest()[:40]
    entries = tuple(Entry(pack, r.table, r.key, off, len(r.value), record_hash(r.value), r.bases)
                    for r, off in pending)
    return data, PackIndex(pack, kind, len(data), entries)


def batches(records: Iterable[Record], target: int) -> Iterator[list[Record]]:
    """Records grouped into packs of about `target` bytes (a record is never split)."""
    batch: list[Record] = []
    size = 0
    for r in records:
        if batch and size + len(r.value) > target:
            yield batch
            batch, size = [], 0
        batch.append(r)
        size += len(r.value)
    if batch:
        yield batch


@dataclass(frozen=True, slots=True)
class Span:
    """One ranged GET: a byte range of a pack and the entries it covers."""

    pack: str
    start: int
    end: int
    entries: tuple[Entry, ...]


def coalesce(entries: Iterable[Entry], gap: int = 1 << 20, most: int = 64 << 20) -> list[Span]:
    """Ranged GETs for these entries: neighbours in one pack merge when the hole between
    them is under `gap` and the span stays under `most` bytes."""
    by_pack: dict[str, list[Entry]] = {}
    for e in entries:
        by_pack.setdefault(e.pack, []).append(e)
    spans = []
    for pack, es in sorted(by_pack.items()):
        es.sort(key=lambda e: e.offset)
        cur: list[Entry] = [es[0]]
        start, end = es[0].offset, es[0].offset + es[0].length
        for e in es[1:]:
            e_end = e.offset + e.length
            if e.offset - end <= gap and max(end, e_end) - start <= most:
                cur.append(e)
                end = max(end, e_end)
            else:
                spans.append(Span(pack, start, end, tuple(cur)))
                cur, start, end = [e], e.offset, e_end
        spans.append(Span(pack, start, end, tuple(cur)))
    return spans


def cut(span: Span, data: bytes, where: str) -> dict[bytes, bytes]:
    """Each entry's record from a span's bytes, checked against its blake3."""
    if len(data) != span.end - span.start:
        raise CorruptData(f"pack {span.pack} from {where} is short ({len(data)} of {span.end - span.start} "
                          "bytes asked for)")
    out = {}
    for e in span.entries:
        raw = data[e.offset - span.start:e.offset - span.start + e.length]
        if record_hash(raw) != e.digest:
            what = "chunk" if e.table == "chunks" else f"{e.table} record"
            raise CorruptData(f"{what} {e.key.hex()} from {where} is corrupted (its blake3 does not match "
                              f"pack {span.pack}'s index): nothing of it was stored")
        out[e.key] = raw
    return out
