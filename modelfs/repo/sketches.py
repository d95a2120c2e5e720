"""Tensor sketches: a fixed pseudo-random sample of each tensor's elements, kept at import.

Parent inference compares a new model with the stored ones in weight space. Reading every
candidate's chunks would cost a full decode per candidate, so each stored file keeps a sketch:
up to `SAMPLES` elements of every float tensor, widened to float32. The positions depend only
on the element count (splitmix64 of the sample index, seeded by the count), so two tensors of
the same shape are sampled at the same positions whatever their dtype or name, and a sketch's
first k samples are the sketch one would take with k: old sketches stay comparable if
`SAMPLES` changes. A cast child is compared in float32 with its parent.

Records in the ``sketch`` table (one table, a one-byte kind prefix):

- ``f`` + file blake3 -> the file's sketch (header JSON + float32 samples); written by the
  importer with the chunks, for imports and for a draft's pending files alike;
- ``v`` + version id -> JSON ``{"layout": hex, "files": [hex, ...]}``: the version's tensor
  layout and the file sketches it was assembled from (in path order);
- ``l`` + layout id -> JSON ``{"k": K, "tensors": [[name, dtype, shape], ...]}``;
- ``m`` + layout id + version id -> the version's digest: the first K samples of each tensor,
  so one cursor pass over a layout's members ranks them all before any full sketch is read;
- ``i`` + key(name suffix, shape) + layout id -> b"": which layouts have such a tensor;
- ``u`` + version id -> b"": a version recorded without any sketch; ``o`` -> the store's data
  version when the first version was indexed here (0: no version predates sketches).

The index is per layout, not per version: a lookup touches the few layouts sharing a child's
tensor shapes, then the members of those layouts.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import blake3
import numpy as np

from modelfs.formats import TensorPart
from modelfs.lineage import FileEntry
from modelfs.numerics import UINT, has_values, widen
from modelfs.store import ReadTxn, WriteTxn

TABLE = "sketch"
SAMPLES = 256  # elements kept per tensor
DIGEST_FLOATS = 1024  # floats per version in its digest (K per tensor, within the bounds below)
DIGEST_MIN, DIGEST_MAX = 4, 32
_MAGIC = b"MSK1"
_SEED = 0x6D6F64656C667331  # "modelfs1"
_M64 = (1 << 64) - 1


def positions(numel: int, count: int = SAMPLES) -> np.ndarray:
    """The element indices a sketch of a tensor with `numel` elements keeps, in sample order.

    Every element when there are at most `count`; otherwise splitmix64 of 0..count-1 seeded by
    `numel` (a few repeats are harmless: each sample stands for numel/count elements).
    """
    if numel <= count:
        return np.arange(numel, dtype=np.int64)
    i = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64((_SEED ^ (numel * 0xBF58476D1CE4E5B9)) & _M64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(numel)).astype(np.int64)


def name_suffixes(name: str) -> Iterator[str]:
    """`a.b.c`, `b.c`, `c`: how a renamed tensor (a task head's `bert.` prefix) is matched."""
    yield name
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[i:])


def index_key(name: str, shape: tuple[int, ...]) -> bytes:
    """Index key of a tensor: its last two name components and its shape (dtype-blind).

    Two components survive a renaming prefix and are shared by the same tensor of every
    layer, so a model's keys are few (about 20 for a BERT) and a renamed child finds its parent.
    """
    short = ".".join(name.split(".")[-2:])
    return blake3.blake3(f"{short}\0{list(shape)}".encode()).digest()[:16]


@dataclass(frozen=True, slots=True)
class TensorSketch:
    """One tensor's sampled elements (float32), with what matching needs: name, dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    samples: np.ndarray

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def sketch_part(mv: memoryview, part: TensorPart, count: int = SAMPLES) -> TensorSketch | None:
    """The sketch of one tensor of a mapped file, or None for tensors without float values."""
    dt = part.dtype
    numel = math.prod(part.shape)
    if not part.name or not has_values(dt) or numel == 0 or part.nbytes != numel * dt.itemsize:
        return None
    elems = np.frombuffer(mv, dtype=UINT[dt.itemsize], count=numel, offset=part.offset)
    picked = elems[positions(numel, count)]
    values = np.asarray(widen(picked.tobytes(), dt), dtype=np.float32)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)  # a NaN must not poison a distance
    return TensorSketch(part.name, dt.name, tuple(part.shape), values)


def sketch_parts(mv: memoryview, parts: Iterable[object]) -> list[TensorSketch]:
    return [s for p in parts if isinstance(p, TensorPart) and (s := sketch_part(mv, p)) is not None]


def unique(tensors: Iterable[TensorSketch]) -> list[TensorSketch]:
    seen: set[str] = set()
    out = []
    for t in tensors:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


# -- records ---------------------------------------------------------------------------------------
def encode(tensors: list[TensorSketch]) -> bytes:
    """A file sketch record: magic, header length, header JSON, float32 samples."""
    header = json.dumps({"tensors": [[t.name, t.dtype, list(t.shape), len(t.samples)] for t in tensors]},
                        separators=(",", ":")).encode()
    body = b"".join(np.ascontiguousarray(t.samples, dtype="<f4").tobytes() for t in tensors)
    return _MAGIC + struct.pack("<I", len(header)) + header + body


def decode(raw: bytes) -> list[TensorSketch]:
    if raw[:4] != _MAGIC:
        raise ValueError("not a modelfs tensor sketch record")
    (n,) = struct.unpack_from("<I", raw, 4)
    header = json.loads(raw[8:8 + n])
    values = np.frombuffer(raw, dtype="<f4", offset=8 + n)
    out, at = [], 0
    for name, dt, shape, count in header["tensors"]:
        out.append(TensorSketch(name, dt, tuple(shape), values[at:at + count]))
        at += count
    return out


def file_key(fkey: bytes) -> bytes:
    return b"f" + fkey


def has_file(txn: ReadTxn, fkey: bytes) -> bool:
    return txn.get(TABLE, file_key(fkey)) is not None


def digest_k(n_tensors: int) -> int:
    return max(DIGEST_MIN, min(DIGEST_MAX, DIGEST_FLOATS // max(1, n_tensors)))


@dataclass(frozen=True, slots=True)
class Layout:
    """A version's tensors (name, dtype, shape) in sketch order, and its digest's K."""

    id: bytes
    k: int
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]

    def digest_offsets(self) -> list[int]:
        """Start of each tensor's samples in a member digest (and the total, last)."""
        out = [0]
        for _, _, shape in self.tensors:
            out.append(out[-1] + min(self.k, math.prod(shape)))
        return out


def _layout_of(tensors: list[TensorSketch]) -> tuple[bytes, bytes]:
    body = json.dumps({"k": digest_k(len(tensors)),
                       "tensors": [[t.name, t.dtype, list(t.shape)] for t in tensors]},
                      separators=(",", ":")).encode()
    return blake3.blake3(body).digest()[:16], body


def index_version(txn: WriteTxn, vid: str, files: Mapping[str, FileEntry], data_version: int,
                  has_tensors: bool = True) -> bool:
    """Write a version's sketch records from its files' sketches; False if none has one.

    Files without a sketch (stored before sketches existed) are left out: the version is
    compared on the tensors it has sketches of. A version with tensors but no sketch of any
    (integer tensors only, say) is marked ``u``, and the
    store's data version when sketching began is kept (``o``), so `has_unsketched` is two
    lookups, not a count of every version.
    """
    if txn.get(TABLE, b"o") is None:
        txn.put(TABLE, b"o", str(data_version).encode())
    tensors: list[TensorSketch] = []
    used: list[str] = []
    for _, entry in sorted(files.items()):
        raw = txn.get(TABLE, file_key(entry.key))
        if raw is None:
            continue
        part = decode(raw)
        if part:
            tensors += part
            used.append(entry.key.hex())
    tensors = unique(tensors)
    if not tensors:
        if has_tensors:
            txn.put(TABLE, b"u" + vid.encode(), b"")
        return False
    lid, body = _layout_of(tensors)
    k = digest_k(len(tensors))
    txn.put(TABLE, b"l" + lid, body, overwrite=False)
    txn.put(TABLE, b"v" + vid.encode(), json.dumps({"layout": lid.hex(), "files": used}).encode())
    digest = np.concatenate([t.samples[:k] for t in tensors]).astype("<f4")
    txn.put(TABLE, b"m" + lid + vid.encode(), digest.tobytes())
    for key in {index_key(t.name, t.shape) for t in tensors}:
        txn.put(TABLE, b"i" + key + lid, b"", overwrite=False)
    return True


# -- reading -----------------------------------------------------------------------------------------
def layouts_sharing(txn: ReadTxn, keys: Iterable[bytes]) -> dict[bytes, int]:
    """Layout id -> how many of `keys` (a child's distinct tensor keys) it has."""
    counts: dict[bytes, int] = {}
    for key in set(keys):
        prefix = b"i" + key
        for k in txn.keys(TABLE, prefix):
            lid = bytes(k[len(prefix):])
            counts[lid] = counts.get(lid, 0) + 1
    return counts


def layout(txn: ReadTxn, lid: bytes) -> Layout | None:
    raw = txn.get(TABLE, b"l" + lid)
    if raw is None:
        return None
    d = json.loads(raw)
    return Layout(lid, int(d["k"]), tuple((n, dt, tuple(s)) for n, dt, s in d["tensors"]))


def members(txn: ReadTxn, lay: Layout) -> tuple[list[bytes], np.ndarray]:
    """Version ids (as bytes) and digests (one row each) of every version with this layout:
    one cursor pass and one array, the part of inference that grows with the store."""
    prefix = b"m" + lay.id
    size = 4 * lay.digest_offsets()[-1]
    vids, rows = [], []
    for k, v in txn.items(TABLE, prefix):
        if len(v) == size:
            vids.append(bytes(k[len(prefix):]))
            rows.append(v)
    return vids, np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), size // 4)


def version_sketch(txn: ReadTxn, vid: str) -> list[TensorSketch] | None:
    """A version's full sketch in layout order, or None for a version recorded without one."""
    raw = txn.get(TABLE, b"v" + vid.encode())
    if raw is None:
        return None
    tensors: list[TensorSketch] = []
    for hexkey in json.loads(raw)["files"]:
        rec = txn.get(TABLE, file_key(bytes.fromhex(hexkey)))
        if rec is not None:
            tensors += decode(rec)
    return unique(tensors)


def sketched(txn: ReadTxn, vid: str) -> bool:
    return txn.get(TABLE, b"v" + vid.encode()) is not None


def has_unsketched(txn: ReadTxn) -> bool:
    """Whether some version with tensors has no sketch (recorded before sketches existed, say)."""
    origin = txn.get(TABLE, b"o")
    if origin is None:
        return next(iter(txn.keys("versions")), None) is not None
    return int(origin) > 0 or next(iter(txn.keys(TABLE, b"u")), None) is not None


def unindex_version(txn: WriteTxn, vid: str) -> None:
    """Forget a removed version's sketch records (its layout and file sketches may be shared)."""
    raw = txn.get(TABLE, b"v" + vid.encode())
    if raw is not None:
        lid = bytes.fromhex(json.loads(bytes(raw))["layout"])
        txn.delete(TABLE, b"m" + lid + vid.encode())
        txn.delete(TABLE, b"v" + vid.encode())
    txn.delete(TABLE, b"u" + vid.encode())
