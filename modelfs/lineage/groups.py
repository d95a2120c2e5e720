"""The lineage by model: each model's versions on one node, derivation edges between models.

A training run that checkpoints 50 times is one model with 50 versions: shown version by
version it is 50 levels of a tree, which hides the few edges that matter (what was
fine-tuned, merged or cast from what). ``group`` folds the versions of each model into one
``ModelNode`` and keeps the derivation edges between versions of different models
(``DerivedEdge``), so the tree and the picture show models and how they came to be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from modelfs.lineage.records import Version


@dataclass(frozen=True, slots=True)
class DerivedEdge:
    """A version of ``child`` derived (``how``) from ``parent``, another model's version."""

    parent: Version
    child: Version
    how: str


@dataclass(slots=True)
class ModelNode:
    model: str
    versions: list[Version] = field(default_factory=list)  # oldest first
    incoming: list[DerivedEdge] = field(default_factory=list)  # from other models' versions

    @property
    def numbers(self) -> str:
        """``@1..@3``, ``@1..@3,@5``: the version numbers as ranges."""
        return number_ranges([v.number for v in self.versions])

    @property
    def first_parent(self) -> str | None:
        """The model this one is drawn under: its oldest derivation edge's parent model."""
        return self.incoming[0].parent.model if self.incoming else None


def number_ranges(numbers: Iterable[int]) -> str:
    ns = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(ns):
        j = i
        while j + 1 < len(ns) and ns[j + 1] == ns[j] + 1:
            j += 1
        parts.append(f"@{ns[i]}" if i == j else f"@{ns[i]}..@{ns[j]}")
        i = j + 1
    return ",".join(parts)


def group(versions: Iterable[Version]) -> dict[str, ModelNode]:
    """Models in the order their first versions were made, each with its derivation edges.

    Edges whose parent is a version of the same model (a model re-derived from its own
    older version) are versioning, not derivation: they stay inside the node.
    """
    vs = sorted(versions, key=lambda v: (v.time, v.model, v.number))
    by_id = {v.id: v for v in vs}
    nodes: dict[str, ModelNode] = {}
    for v in vs:
        node = nodes.setdefault(v.model, ModelNode(v.model))
        node.versions.append(v)
        for p in v.derived_from:
            parent = by_id.get(p)
            if parent is not None and parent.model != v.model:
                node.incoming.append(DerivedEdge(parent, v, v.how or "derived"))
    for node in nodes.values():
        node.versions.sort(key=lambda v: v.number)
    return nodes


def children(nodes: Mapping[str, ModelNode]) -> dict[str | None, list[ModelNode]]:
    """Each model under the model of its first derivation parent (None: a root)."""
    out: dict[str | None, list[ModelNode]] = {}
    for n in nodes.values():
        parent = n.first_parent
        out.setdefault(parent if parent in nodes and parent != n.model else None, []).append(n)
    return out
