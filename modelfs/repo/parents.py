"""The bases a new file is delta-coded against: given parent versions, or inferred ones.

Imports (the facade) and closed files (drafts) find their parents this one way. Inference is
from the weights (repo/nearest.py over the sketches of repo/sketches.py): the nearest version,
or both parents of a merge. Versions recorded before sketches existed are ranked by the older
rule, tensor overlap, which still decides when no sketched version is a candidate.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfs.errors import NotFound
from modelfs.formats import TensorPart, parse_file
from modelfs.lineage import LineageGraph, Version
from modelfs.repo import nearest, sketches
from modelfs.repo.files import Files
from modelfs.repo.importer import ParentTensors, StoreSettings, chunk_keys_of, mapped
from modelfs.repo.reachability import chunk_keys
from modelfs.repo.recording import tensor_signature
from modelfs.repo.sketches import TensorSketch
from modelfs.store import ReadTxn, Store

log = logging.getLogger(__name__)

SHOWN = 5  # candidates recorded in the provenance


@dataclass(frozen=True)
class Inference:
    """Inferred parents (two for a merge), with the evidence: what the CLI prints and provenance keeps."""

    parents: tuple[Version, ...]  # empty: the nearest candidate is too far to be a parent
    method: str  # "weights" or "tensor overlap"
    distance: float | None = None  # child to its parent (to the combination, for a merge)
    candidates: tuple[tuple[Version, float], ...] = ()  # nearest first
    merge: nearest.MergeFit | None = None
    overlap: int = 0  # tensors shared by signature ("tensor overlap")

    @property
    def parent(self) -> Version | None:
        return self.parents[0] if self.parents else None

    def provenance(self) -> dict[str, Any]:
        """``inferred_parent`` (the nearest; absent when none is near) and ``inference``."""
        info: dict[str, Any] = {"method": self.method}
        if self.method == "weights":
            info["distance"] = self.distance if self.parents else None
            info["candidates"] = [[v.ref, d] for v, d in self.candidates[:SHOWN]]
            info["merge"] = None if self.merge is None else {
                "parents": [p.ref for p in self.parents], "alpha": round(self.merge.alpha, 4),
                "distance": self.merge.distance, "nearest_single": self.merge.nearest}
        else:
            info["shared_tensors"] = self.overlap
        out: dict[str, Any] = {"inference": info}
        if self.parent is not None:
            out["inferred_parent"] = self.parent.ref
        return out

    def describe(self) -> str:
        """One line: the choice and the distances that made it."""
        if self.parent is None:
            v, d = self.candidates[0]
            return (f"no parent inferred: the nearest, {v.ref}, is at distance {d:.3g} "
                    f"(unrelated beyond {nearest.MAX_DISTANCE:g})")
        if self.method != "weights":
            return f"parent inferred from tensor overlap: {self.parent.ref}"
        if self.merge is not None:
            return (f"parents inferred from the weights: {' + '.join(p.ref for p in self.parents)} "
                    f"(merge, alpha {self.merge.alpha:.2f}, distance {self.merge.distance:.3g}; "
                    f"nearest single {self.merge.nearest:.3g})")
        nxt = next(((v, d) for v, d in self.candidates if v.id != self.parent.id), None)
        tail = f"; next {nxt[0].ref} {nxt[1]:.3g}" if nxt else ""
        return f"parent inferred from the weights: {self.parent.ref} (distance {self.distance:.3g}{tail})"


def sketch_files(files: Mapping[str, Path]) -> list[TensorSketch]:
    """The sketch of a set of files taken as one model (path order; the first tensor of a name)."""
    out: list[TensorSketch] = []
    for path, src in sorted(files.items()):
        with mapped(src) as mv:
            layout, _ = parse_file(path, mv)
            out += sketches.sketch_parts(mv, layout.parts)
    return sketches.unique(out)


class Parents:
    """Parent tensors of versions, and parent inference: the sketch index, then the old rule."""

    def __init__(self, store: Store, graph: LineageGraph, files: Files, settings: StoreSettings) -> None:
        self._store = store
        self._graph = graph
        self._files = files
        self._settings = settings

    def tensors(self, versions: list[Version]) -> list[ParentTensors]:
        """Each version's tensors, looked up by the importer to find a chunk's bases."""
        out = []
        for v in versions:
            pt = ParentTensors()
            for path, entry in v.files.items():
                pt.add(path, self._files.record(entry))
            out.append(pt)
        return out

    def infer(self, files: Mapping[str, Path]) -> Version | None:
        """The nearest version (see `inference`), or None."""
        found = self.inference(files)
        return found.parent if found else None

    def inference(self, files: Mapping[str, Path]) -> Inference | None:
        """The version nearest the files in weight space, both parents of a merge, or None
        where nothing shares their tensors (an Inference without parents where something does
        but all of it is too far to be a parent).

        Reads the new files and the sketch records only: no other version's chunks.
        """
        child = sketch_files(files)
        with self._store.read() as txn:
            found = self._by_weights(txn, child) if child else None
            unsketched = found is None or sketches.has_unsketched(txn)
        if unsketched:
            older = self._by_overlap(files, found)
            if older is not None:
                found = older
        if found is not None:
            log.info("%s", found.describe())
        return found

    def _by_weights(self, txn: ReadTxn, child: list[TensorSketch]) -> Inference | None:
        short = nearest.shortlist(txn, child)
        scored: list[tuple[float, float, Version]] = []
        aligned: dict[str, nearest.Aligned] = {}
        dtype_share: dict[str, float] = {}
        for s in short:
            full = sketches.version_sketch(txn, s.vid)
            try:
                v = self._graph.version(txn, s.vid)
            except NotFound:
                continue
            if not full:
                continue
            aligned[s.vid] = nearest.align(child, full)
            dtype_share[s.vid] = nearest.same_dtype_share(child, full)
            if aligned[s.vid]:
                scored.append((nearest.distance(child, aligned[s.vid]), v.time, v))
        if not scored:
            return None
        scored.sort(key=lambda t: (t[0], t[1]))  # equal weights: the older is the original
        ranked = tuple((v, d) for d, _, v in scored)
        d0 = ranked[0][1]
        merge = nearest.best_merge(child, aligned, [v.id for v, _ in ranked], d0)
        if merge is not None:
            by_id = {v.id: v for v, _ in ranked}
            return Inference((by_id[merge.a], by_id[merge.b]), "weights", merge.distance, ranked, merge)
        if d0 > nearest.MAX_DISTANCE:
            return Inference((), "weights", None, ranked)
        near = [(v, d) for v, d in ranked if d <= d0 * (1 + nearest.NEAR_TIE)]
        parent, dist = max(near, key=lambda t: dtype_share[t[0].id])  # max keeps the nearest on ties
        return Inference((parent,), "weights", dist, ranked)

    def _by_overlap(self, files: Mapping[str, Path], found: Inference | None) -> Inference | None:
        """The older rule, for versions without sketches: the most tensors shared by name, dtype
        and shape (by name and shape alone when none matches, so a cast child finds its parent);
        ties to the most identical chunks, then the newest. With `found` (the weights' choice)
        it decides only for an unsketched version sharing more tensors than `found`'s parent.
        """
        tensors: list[TensorPart] = []
        for path, src in files.items():
            with mapped(src) as mv:
                layout, _ = parse_file(path, mv)
            tensors += [t for t in layout.parts if isinstance(t, TensorPart) and t.name]
        if not tensors:
            return None
        with self._store.read() as txn:
            for exact in (True, False):
                counts: Counter[str] = Counter()
                sigs = {tensor_signature(t.name, t.dtype.name if exact else "*", t.shape) for t in tensors}
                for s in sigs:
                    for k in txn.keys("tsig", s):
                        counts[k[16:].decode()] += 1
                if counts:
                    break
            if found is not None:
                beat = counts.get(found.parent.id, 0) if found.parent else 0
                counts = Counter({vid: c for vid, c in counts.items()
                                  if c > beat and not sketches.sketched(txn, vid)})
            if not counts:
                return None
            top = max(counts.values())
            tied = [self._graph.version(txn, vid) for vid, c in counts.items() if c == top]
        if len(tied) > 1:
            new_keys: set[bytes] = set()
            for path, src in files.items():  # hashing, outside any transaction
                new_keys |= chunk_keys_of(path, src, self._settings)
            with self._store.read() as txn:
                shared = {v.id: len(new_keys & chunk_keys(txn, [v.files])) for v in tied}
            tied.sort(key=lambda v: (shared[v.id], v.time), reverse=True)
        else:
            tied.sort(key=lambda v: v.time, reverse=True)
        return Inference((tied[0],), "tensor overlap", overlap=top)
