"""Annotations: edits of a version's lineage recorded beside its immutable record.

A version record never changes (its id is derived from it). What a user learns later (the
real parent of an import, how a model was made, a key, a new model name after `mv`, the
version before it after a `prune`) is recorded as a timed edit in the ``annotations``
table, keyed by version id. Every read of a version goes through `LineageGraph.version`,
which applies the edits here, in order: every reader (log, show, lineage, find, the
mount) sees the effective lineage, and the record and its edits stay apart.

Edit keys (each optional): ``parents`` (provenance parents, replacing them: ``reparent``),
``how``, ``message``, ``set`` (provenance keys), ``model`` (a rename), ``previous`` (the
versioning parent, after a prune removed the one before), ``note`` (what the edit was).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from modelfs.lineage.records import Version

TABLE = "annotations"
EDIT_KEYS = frozenset({"time", "note", "parents", "how", "message", "set", "model", "previous"})


def decode(raw: bytes | None) -> list[dict[str, Any]]:
    return list(json.loads(bytes(raw))) if raw else []


def encode(edits: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps(list(edits), sort_keys=True).encode()


def apply(v: Version, edits: Sequence[Mapping[str, Any]]) -> Version:
    """The effective version: the record with every edit applied in order. User-visible edits
    are listed under provenance ``annotations``; a rename or a splice changes names only."""
    if not edits:
        return v
    changes: dict[str, Any] = {}
    prov = dict(v.provenance)
    shown = []
    for e in edits:
        if "parents" in e:
            changes["derived_from"] = tuple(e["parents"])
        if "how" in e:
            changes["how"] = e["how"]
        if "message" in e:
            changes["message"] = e["message"]
        if "model" in e:
            changes["model"] = e["model"]
        if "previous" in e:
            changes["previous"] = e["previous"]
        prov.update(e.get("set") or {})
        if not {"model", "previous"} >= set(e) - {"time", "note"}:
            shown.append({k: e[k] for k in sorted(e) if k not in ("model", "previous")})
    if shown:
        prov["annotations"] = shown
    return dataclasses.replace(v, provenance=MappingProxyType(prov), **changes)
