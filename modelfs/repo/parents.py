"""The bases a new file is delta-coded against: given parent versions, or one inferred.

Imports (the facade) and closed files (drafts) find their parents this one way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from modelfs.formats import TensorPart, parse_file
from modelfs.lineage import LineageGraph, Version
from modelfs.repo.files import Files
from modelfs.repo.importer import ParentTensors, StoreSettings, chunk_keys_of, mapped
from modelfs.repo.reachability import chunk_keys
from modelfs.repo.recording import tensor_signature
from modelfs.store import Store

log = logging.getLogger(__name__)


class Parents:
    """Parent tensors of versions, and parent inference over the tensor-signature index."""

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
        """The version sharing the most tensors by name, dtype and shape (by name and shape
        alone when none matches, so a cast child finds its parent); ties go to the version
        sharing the most identical chunks (the smallest delta), then to the newest.

        Uses the signature index and chunk hashes: nothing is decoded, and of other versions
        only the file records of tied candidates are read.
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
        choice = tied[0]
        log.info("inferred parent %s (%d shared tensors)", choice.ref, top)
        return choice
