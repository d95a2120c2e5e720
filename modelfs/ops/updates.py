"""Update types: how a derived tensor was made from its parent's, so it can be stored as such.

A registry (entry point group `modelfs.updates`) of detectors. Each looks at a child tensor
and the parent tensor of the same name, dtype and shape and may recognise the change:

- `sparse`: few elements changed; stored as positions + values (`sparse` codec).
- `lowrank`: a 2-D tensor whose change is exactly low rank up to rounding (a merged LoRA);
  the factors come from a randomized SVD and are stored with the residual (`lowrank` codec).
- `dense`: anything else; the default codecs (XOR against the parent, ...) handle it.

Detection only proposes: every proposal becomes a chunk hint, and the importer keeps it
only where it is smaller than what it would store anyway. Storage stays lossless whatever
a detector gets wrong, because every update codec stores the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelfs import numerics
from modelfs.codecs.lowrank import chunk_hint
from modelfs.codecs.sparse import MAX_FRACTION, changed_positions
from modelfs.dtypes import DType
from modelfs.formats import TensorPart, parse_file
from modelfs.lineage import Version
from modelfs.ops.commit import ChunkHint
from modelfs.registry import Registry
from modelfs.repo import Repo, StoredTensor, mapped


@dataclass(frozen=True)
class TensorPair:
    """A child tensor (bytes being imported) and its parent (bytes in the store)."""

    path: str
    name: str
    dtype: DType
    shape: tuple[int, ...]
    parent: bytes
    child: bytes | memoryview


class Update(Protocol):
    @property
    def kind(self) -> str: ...

    def hints(self, elem_start: int, n_elems: int, parent_key: bytes) -> list[ChunkHint]:
        """Hints for the chunk covering these elements, whose parent chunk is `parent_key`."""
        ...

    def describe(self) -> dict[str, Any]: ...


class UpdateType(Protocol):
    @property
    def name(self) -> str: ...

    def detect(self, pair: TensorPair) -> Update | None:
        """The update that turns the parent into the child, or None if it is not of this type."""
        ...


@dataclass(frozen=True)
class SparseUpdate:
    changed: int
    total: int
    kind: str = "sparse"

    def hints(self, elem_start: int, n_elems: int, parent_key: bytes) -> list[ChunkHint]:
        return [ChunkHint("sparse", (parent_key,))]

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "changed": self.changed, "elements": self.total}


@dataclass(frozen=True)
class SparseType:
    name: str = "sparse"
    max_fraction: float = MAX_FRACTION

    def detect(self, pair: TensorPair) -> Update | None:
        if pair.dtype.itemsize not in (1, 2, 4, 8):
            return None
        n = len(pair.child) // pair.dtype.itemsize
        changed = len(changed_positions(pair.child, pair.parent, pair.dtype.itemsize))
        if 0 < changed <= n * self.max_fraction:
            return SparseUpdate(changed, n)
        return None


@dataclass(frozen=True)
class LowRankUpdate:
    b: np.ndarray  # rows x rank
    a: np.ndarray  # rank x cols
    scale: float = 1.0
    variant: str | None = None
    source: str = "detected"
    kind: str = "lowrank"

    def hints(self, elem_start: int, n_elems: int, parent_key: bytes) -> list[ChunkHint]:
        h = chunk_hint(self.b, self.a, self.scale, elem_start, n_elems, self.variant)
        return [ChunkHint("lowrank", (parent_key,), h)]

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "rank": int(self.a.shape[0]), "source": self.source}


@dataclass(frozen=True)
class LowRankType:
    """Finds W' - W of rank <= max_rank (up to rounding) with a randomized SVD (seeded)."""

    name: str = "lowrank"
    max_rank: int = 64
    min_gap: float = 1e3  # sigma_r / sigma_(r+1) that separates the update from rounding noise

    def detect(self, pair: TensorPair) -> Update | None:
        if len(pair.shape) != 2 or pair.dtype.name not in ("F32", "F16", "BF16", "F64"):
            return None
        m, n = pair.shape
        k = min(self.max_rank + 8, m, n)
        if k >= min(m, n) // 2 or k < 2:
            return None  # too small for factors to pay
        child = numerics.as_float64(pair.child, pair.dtype)
        parent = numerics.as_float64(pair.parent, pair.dtype)
        if child is None or parent is None:
            return None
        d = (child - parent).reshape(m, n)
        if not np.isfinite(d).all() or not d.any():
            return None
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(d @ rng.standard_normal((n, k)))
        u, s, vt = np.linalg.svd(q.T @ d, full_matrices=False)
        if s[0] == 0:
            return None
        gaps = s[:-1] / np.maximum(s[1:], s[0] * 1e-300)
        r = int(np.argmax(gaps[:self.max_rank])) + 1
        if gaps[r - 1] < self.min_gap:
            return None
        b = (q @ u[:, :r]) * s[:r]
        return LowRankUpdate(b.astype(np.float32), vt[:r].astype(np.float32))


@dataclass(frozen=True)
class DenseType:
    """The fallback: no hint; XOR (or cast, prune, avg) against the parent does the work."""

    name: str = "dense"

    def detect(self, pair: TensorPair) -> Update | None:
        return None


UPDATES: Registry[UpdateType] = Registry("modelfs.updates", "update type", lambda u: u.name)
register_update = UPDATES.register
get_update = UPDATES.get
registered_updates = UPDATES.all


for _u in (SparseType(), LowRankType(), DenseType()):
    register_update(_u)


# ---------------------------------------------------------------- hints for a commit


@dataclass
class UpdatePlan:
    """Per (path, tensor): the recognised update and the parent tensor it applies to."""

    chunk_elems: int
    updates: dict[tuple[str, str], tuple[Update, StoredTensor]] = field(default_factory=dict)

    def add(self, path: str, name: str, update: Update, parent: StoredTensor) -> None:
        self.updates[(path, name)] = (update, parent)

    def hint(self, path: str, name: str, chunk: int) -> list[ChunkHint]:
        """The importer hook's callback: hints for chunk `chunk` of tensor `name` in `path`."""
        found = self.updates.get((path, name))
        if found is None:
            return []
        update, parent = found
        if chunk >= len(parent.chunks):
            return []
        n = math.prod(parent.shape)
        start = chunk * self.chunk_elems
        return update.hints(start, min(self.chunk_elems, n - start), parent.chunks[chunk])

    def report(self) -> dict[str, dict[str, Any]]:
        return {f"{p}:{n}": u.describe() for (p, n), (u, _) in sorted(self.updates.items())}


def parent_tensor(repo: Repo, parent: Version, path: str, part: TensorPart) -> StoredTensor | None:
    """The parent's tensor of the same name, dtype and shape in the same file (chunked alike)."""
    entry = parent.files.get(path)
    if entry is None or not part.name:
        return None
    for t in repo.file_record(entry).tensors():
        if t.name == part.name and t.dtype.name == part.dtype.name and t.shape == part.shape:
            if t.chunk_bytes // t.dtype.itemsize == repo.settings.chunk_elems:
                return t
            return None
    return None


def detect_updates(repo: Repo, files: Mapping[str, Path], parent: Version,
                   types: list[str] | None = None) -> UpdatePlan:
    """Run the update detectors on every tensor that has a same-shaped tensor in `parent`.

    One tensor at a time: memory is bounded by the largest tensor (twice, plus float64 work).
    """
    detectors = [get_update(t) for t in (types or ["sparse", "lowrank"])]
    plan = UpdatePlan(repo.settings.chunk_elems)
    for path, src in sorted(files.items()):
        entry = parent.files.get(path)
        if entry is None:
            continue
        rec = repo.file_record(entry)
        reader = repo.reader(rec)
        with mapped(src) as mv:
            layout, _ = parse_file(path, mv)
            for part in layout.parts:
                if not isinstance(part, TensorPart):
                    continue
                pt = parent_tensor(repo, parent, path, part)
                if pt is None:
                    continue
                child = bytes(mv[part.offset:part.offset + part.nbytes])  # no view may outlive the map
                pbytes = reader.read(pt.offset, pt.nbytes)
                if pbytes == child:
                    continue
                pair = TensorPair(path, part.name, part.dtype, part.shape, pbytes, child)
                for det in detectors:
                    update = det.detect(pair)
                    if update is not None:
                        plan.add(path, part.name, update, pt)
                        break
    return plan
