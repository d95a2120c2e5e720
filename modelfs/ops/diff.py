"""Meaningful diffs between any two versions: per file, per tensor, with numbers.

Streaming: tensors are compared a window of chunks at a time, so memory is bounded by a
few chunks, not by a tensor or a checkpoint. "Unchanged" is answered from hashes: equal
file keys mean an unchanged file and equal chunk keys an unchanged tensor, with nothing
decoded. A changed tensor is decoded chunk by chunk on a thread pool and compared in
float64 (`modelfs.numerics`: bf16 by a bit shift, fp8 through torch).

"Changed elements" are elements whose bit patterns differ (the store's notion of change;
-0.0 vs 0.0 counts); across a dtype change, elements whose values differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfs import numerics
from modelfs.dtypes import DType
from modelfs.lineage import FileEntry, Version
from modelfs.repo import FileReader, FileRecord, Repo, StoredTensor

WINDOW_ELEMS = 1 << 19  # elements compared per job (one chunk at the default chunk size)


@dataclass(slots=True)
class Stats:
    """Sums over a tensor's elements; combined window by window."""

    n: int = 0
    changed: int = 0
    sq_delta: float = 0.0
    sq_a: float = 0.0
    max_abs: float = 0.0
    numeric: bool = True

    def add(self, o: Stats) -> None:
        self.n += o.n
        self.changed += o.changed
        self.sq_delta += o.sq_delta
        self.sq_a += o.sq_a
        if math.isnan(o.max_abs) or math.isnan(self.max_abs):
            self.max_abs = math.nan
        else:
            self.max_abs = max(self.max_abs, o.max_abs)
        self.numeric = self.numeric and o.numeric

    @property
    def l2(self) -> float:
        return math.sqrt(self.sq_delta)

    @property
    def rel(self) -> float | None:
        return self.l2 / math.sqrt(self.sq_a) if self.sq_a > 0 else None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"elements": self.n, "changed": self.changed,
                             "changed_fraction": self.changed / self.n if self.n else 0.0}
        if self.numeric:
            d.update(l2=_finite(self.l2), rel=_finite(self.rel), max_abs=_finite(self.max_abs),
                     a_norm=_finite(math.sqrt(self.sq_a)))
        return d


def _finite(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity: they are written as strings."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def compare_window(a: bytes, b: bytes, adt: DType, bdt: DType, numeric: bool = True) -> Stats:
    """Stats of one window of elements (the same elements of A and B); bits only if not numeric."""
    n = len(a) // adt.itemsize
    same_type = adt.name == bdt.name and adt.itemsize in numerics.UINT
    if same_type:
        changed = int(np.count_nonzero(numerics.bits(a, adt.itemsize)
                                       != numerics.bits(b, adt.itemsize)))
        if not numeric:
            return Stats(n, changed, numeric=False)
    elif not numeric:
        return Stats(n, n if a != b else 0, numeric=False)
    va, vb = _values(a, adt), _values(b, bdt)
    if va is None or vb is None:
        return Stats(n, changed if same_type else (n if a != b else 0), numeric=False)
    with np.errstate(invalid="ignore", over="ignore"):
        sq_a = float(np.square(va, dtype=np.float64).sum())  # not np.dot: threaded BLAS is slow here
        if same_type and changed == 0:
            return Stats(n, 0, 0.0, sq_a, 0.0)
        d = np.subtract(vb, va, dtype=np.float64)  # one pass; float32 inputs widen exactly
        if not same_type:
            changed = int(np.count_nonzero((d != 0) & ~(np.isnan(d) & np.isnan(va) & np.isnan(vb))))
        sq = float(np.square(d).sum())
        mx = float(max(d.max(), -d.min())) if len(d) else 0.0
        if math.isnan(sq) and same_type:  # NaN in both with equal bits is no change: mask it out
            keep = numerics.bits(a, adt.itemsize) != numerics.bits(b, adt.itemsize)
            d = d[keep]
            sq = float(np.square(d).sum())
            mx = float(np.nanmax(np.abs(d))) if len(d) else 0.0
    return Stats(n, changed, sq, sq_a, mx)


def _values(buf: bytes | memoryview, dtype: DType) -> np.ndarray | None:
    """The elements in a numpy type that widens to float64 on the fly (bf16, fp8: converted)."""
    np_t = numerics.NUMPY.get(dtype.name)
    if np_t is not None:
        return np.frombuffer(buf, dtype=np_t)
    return numerics.as_float64(buf, dtype)


@dataclass(slots=True)
class TensorDiff:
    path: str
    name: str  # "" for the bytes of a non-tensor file
    status: str  # added | removed | changed | unchanged
    a: StoredTensor | None
    b: StoredTensor | None
    stats: Stats | None = None
    decoded: bool = False

    @property
    def retyped(self) -> bool:
        return (self.a is not None and self.b is not None
                and (self.a.dtype.name != self.b.dtype.name or self.a.shape != self.b.shape))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "status": self.status}
        for side, t in (("a", self.a), ("b", self.b)):
            if t is not None:
                d[side] = {"dtype": t.dtype.name, "shape": list(t.shape), "nbytes": t.nbytes}
        if self.stats is not None:
            d["stats"] = self.stats.to_json()
        return d


@dataclass(slots=True)
class FileDiff:
    path: str
    status: str  # added | removed | changed | unchanged
    a: FileEntry | None
    b: FileEntry | None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("changed", "unchanged", "added", "removed"), 0))
    stats: Stats = field(default_factory=Stats)
    delta_bytes: int = 0  # what B's copy of this file adds to a store holding A
    elements: int = 0  # elements of every tensor in the file (B's; A's for a removed one)
    differing: int = 0  # of those, elements that differ (changed, added or removed)
    holds_tensors: bool = False  # a checkpoint file, not a config or tokenizer

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "status": self.status, "tensors": dict(self.counts),
                             "delta_stored_bytes": self.delta_bytes, "holds_tensors": self.holds_tensors,
                             "element_count": self.elements, "differing_elements": self.differing}
        for side, e in (("a", self.a), ("b", self.b)):
            if e is not None:
                d[side] = {"size": e.size, "format": e.format, "blake3": e.blake3_hex}
        if self.stats.n:
            d["elements"] = self.stats.to_json()
        return d


@dataclass(slots=True)
class DiffTotal:
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("changed", "unchanged", "added", "removed"), 0))
    tensors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("changed", "unchanged", "added", "removed"), 0))
    stats: Stats = field(default_factory=Stats)
    delta_bytes: int = 0
    b_logical: int = 0
    elements: int = 0  # over every tensor of both versions (B's, plus A's removed ones)
    differing: int = 0
    tensor_files: int = 0  # files holding tensors; the others (configs, tokenizers) apart
    other_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"files": dict(self.files), "tensors": dict(self.tensors),
                "elements": self.stats.to_json(), "delta_stored_bytes": self.delta_bytes,
                "b_logical_bytes": self.b_logical, "element_count": self.elements,
                "differing_elements": self.differing, "tensor_files": self.tensor_files,
                "other_files": self.other_files}


DiffEvent = TensorDiff | FileDiff | DiffTotal


class Differ:
    """Compares version A with version B; `run()` yields events as they are known."""

    def __init__(self, repo: Repo, a: Version, b: Version, *, numbers: bool = True,
                 workers: int = 2, window: int = 4, progress: Callable[[int], None] | None = None) -> None:
        self.repo, self.a, self.b = repo, a, b
        self.numbers = numbers
        self.progress = progress or (lambda n: None)  # bytes of B's differing files compared
        self._compared = 0  # of the current file, bytes the progress callback was given
        self.workers = max(1, workers)
        self.window = max(1, window)
        self._a_chunks: set[bytes] | None = None

    # -- the delta size ------------------------------------------------------------------------
    def _a_chunk_set(self) -> set[bytes]:
        if self._a_chunks is None:
            self._a_chunks = self.repo.chunk_keys(self.a)
        return self._a_chunks

    def _delta_bytes(self, rec: FileRecord, a_file_keys: set[bytes]) -> int:
        """Stored bytes of B's chunks (and file record) that a store holding only A lacks."""
        if rec.key in a_file_keys:
            return 0
        have = self._a_chunk_set()
        new = rec.chunk_keys() - have
        return self.repo.stored_size_of(new) + len(rec.to_bytes())

    # -- tensors -------------------------------------------------------------------------------
    def _jobs(self, ta: StoredTensor, tb: StoredTensor, ra: FileReader, rb: FileReader
              ) -> Iterator[tuple[bool, int, int, int, int]]:
        """(same chunk keys?, a offset, a size, b offset, b size) per window of elements."""
        n = math.prod(ta.shape)
        aligned = ta.chunk_bytes // ta.dtype.itemsize == tb.chunk_bytes // tb.dtype.itemsize
        w = ta.chunk_bytes // ta.dtype.itemsize if aligned and ta.chunk_bytes else WINDOW_ELEMS
        for i, e0 in enumerate(range(0, n, w)):
            m = min(w, n - e0)
            same = aligned and ta.dtype.name == tb.dtype.name and i < len(ta.chunks) \
                and i < len(tb.chunks) and ta.chunks[i] == tb.chunks[i]
            yield (same, ta.offset + e0 * ta.dtype.itemsize, m * ta.dtype.itemsize,
                   tb.offset + e0 * tb.dtype.itemsize, m * tb.dtype.itemsize)

    def _window(self, job: tuple[bool, int, int, int, int], ta: StoredTensor, tb: StoredTensor,
                ra: FileReader, rb: FileReader) -> Stats:
        same, ao, an, bo, bn = job
        a = ra.read(ao, an)
        numeric = ta.name != ""  # a non-tensor file's bytes: count them, no norms
        if same:
            return compare_window(a, a, ta.dtype, ta.dtype, numeric)
        return compare_window(a, rb.read(bo, bn), ta.dtype, tb.dtype, numeric)

    def _counted(self, f: Future[Stats], nbytes: int) -> Stats:
        stats = f.result()
        self._compared += nbytes
        self.progress(nbytes)
        return stats

    def _compare(self, pool: ThreadPoolExecutor, ta: StoredTensor, tb: StoredTensor,
                 ra: FileReader, rb: FileReader) -> Stats:
        total = Stats()
        pending: list[Future[Stats]] = []
        sizes: list[int] = []
        for job in self._jobs(ta, tb, ra, rb):
            pending.append(pool.submit(self._window, job, ta, tb, ra, rb))
            sizes.append(job[4])
            if len(pending) >= self.workers * self.window:
                total.add(self._counted(pending.pop(0), sizes.pop(0)))
        for f, n in zip(pending, sizes, strict=True):
            total.add(self._counted(f, n))
        return total

    def _tensor_diff(self, pool: ThreadPoolExecutor, path: str, ta: StoredTensor | None,
                     tb: StoredTensor | None, ra: FileReader | None, rb: FileReader | None) -> TensorDiff:
        name = (tb or ta).name  # type: ignore[union-attr]
        if ta is None:
            return TensorDiff(path, name, "added", None, tb)
        if tb is None:
            return TensorDiff(path, name, "removed", ta, None)
        same_type = ta.dtype.name == tb.dtype.name and ta.shape == tb.shape
        if same_type and ta.chunks == tb.chunks and ta.chunk_bytes == tb.chunk_bytes:
            return TensorDiff(path, name, "unchanged", ta, tb)
        td = TensorDiff(path, name, "changed", ta, tb)
        if self.numbers and ra is not None and rb is not None and math.prod(ta.shape) == math.prod(tb.shape):
            td.stats = self._compare(pool, ta, tb, ra, rb)
            td.decoded = True
            if same_type and td.stats.changed == 0:
                td.status = "unchanged"  # same bytes, another chunking: still unchanged
        return td

    # -- files ---------------------------------------------------------------------------------
    def run(self) -> Iterator[DiffEvent]:
        total = DiffTotal()
        a_file_keys = {e.key for e in self.a.files.values()}
        paths = sorted(set(self.a.files) | set(self.b.files))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="modelfs-diff") as pool:
            for path in paths:
                ea, eb = self.a.files.get(path), self.b.files.get(path)
                fd = FileDiff(path, "changed", ea, eb)
                if eb is not None:
                    total.b_logical += eb.size
                if ea is not None and eb is not None and ea.key == eb.key:
                    fd.status = "unchanged"
                    named = [t for t in self.repo.file_record(ea).tensors() if t.name]
                    fd.counts["unchanged"] = len(named)
                    fd.holds_tensors = bool(named)
                    fd.elements = sum(math.prod(t.shape) for t in named)
                else:
                    self._compared = 0
                    yield from self._file_tensors(pool, path, ea, eb, fd, a_file_keys)
                    self.progress(max(0, (eb.size if eb else 0) - self._compared))  # what needed no decode
                    if ea is None:
                        fd.status = "added"
                    elif eb is None:
                        fd.status = "removed"
                total.files[fd.status] += 1
                for k, v in fd.counts.items():
                    total.tensors[k] += v
                total.stats.add(fd.stats)
                total.delta_bytes += fd.delta_bytes
                total.elements += fd.elements
                total.differing += fd.differing
                if fd.holds_tensors:
                    total.tensor_files += 1
                else:
                    total.other_files += 1
                yield fd
        yield total

    def _file_tensors(self, pool: ThreadPoolExecutor, path: str, ea: FileEntry | None,
                      eb: FileEntry | None, fd: FileDiff, a_file_keys: set[bytes]) -> Iterator[TensorDiff]:
        rec_a = self.repo.file_record(ea) if ea else None
        rec_b = self.repo.file_record(eb) if eb else None
        ra = self.repo.reader(rec_a) if rec_a else None
        rb = self.repo.reader(rec_b) if rec_b else None
        if rec_b is not None:
            fd.delta_bytes = self._delta_bytes(rec_b, a_file_keys)
        ta_by = {t.name: t for t in rec_a.tensors()} if rec_a else {}
        tb_list = list(rec_b.tensors()) if rec_b else []
        names = [t.name for t in tb_list] + [n for n in ta_by if n not in {t.name for t in tb_list}]
        tb_by = {t.name: t for t in tb_list}
        for name in names:
            td = self._tensor_diff(pool, path, ta_by.get(name), tb_by.get(name), ra, rb)
            yield td
            if not name:  # the bytes of a file that is not a checkpoint: no tensor to count
                continue
            fd.holds_tensors = True
            fd.counts[td.status] += 1
            t = td.b or td.a
            assert t is not None
            n = math.prod(t.shape)
            fd.elements += n
            if td.status in ("added", "removed"):
                fd.differing += n
            elif td.status == "changed":
                fd.differing += td.stats.changed if td.stats is not None else n
            if td.stats is not None and td.stats.numeric:
                fd.stats.add(td.stats)


def diff_versions(repo: Repo, a: Version, b: Version, **kw: Any) -> Iterator[DiffEvent]:
    """Shorthand for `Differ(repo, a, b, **kw).run()`."""
    return Differ(repo, a, b, **kw).run()


def summarize(events: Sequence[DiffEvent]) -> dict[str, Any]:
    """The whole diff as one JSON-able document (what `modelfs diff --json` prints)."""
    files: list[dict[str, Any]] = []
    tensors: list[dict[str, Any]] = []
    out: dict[str, Any] = {"files": files}
    for ev in events:
        if isinstance(ev, TensorDiff):
            tensors.append(ev.to_json())
        elif isinstance(ev, FileDiff):
            d = ev.to_json()
            d["tensor_diffs"] = tensors
            tensors = []
            files.append(d)
        else:
            out["total"] = ev.to_json()
    return out
