"""Value objects of the lineage and their stored (JSON) form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class FileEntry:
    key: bytes  # blake3 of the file's bytes; also the key of its file record
    size: int
    format: str
    mode: int = 0o644

    @property
    def blake3_hex(self) -> str:
        return self.key.hex()

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.hex(), "size": self.size, "format": self.format, "mode": self.mode}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileEntry:
        return cls(bytes.fromhex(d["key"]), d["size"], d["format"], d.get("mode", 0o644))


@dataclass(frozen=True, slots=True)
class Version:
    """An immutable snapshot of one model's checkpoint directory."""

    id: str
    model: str
    number: int
    previous: str | None  # versioning edge: the previous version of the same model
    derived_from: tuple[str, ...]  # provenance edges
    how: str | None
    message: str
    time: float
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def parents(self) -> tuple[str, ...]:
        return ((self.previous,) if self.previous else ()) + self.derived_from

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"

    @property
    def logical_size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_bytes(self) -> bytes:
        d = {
            "id": self.id, "model": self.model, "number": self.number,
            "previous": self.previous, "derived_from": list(self.derived_from),
            "how": self.how, "message": self.message, "time": self.time,
            "files": {p: f.to_json() for p, f in sorted(self.files.items())},
            "provenance": dict(self.provenance),
        }
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Version:
        d = json.loads(raw)
        return cls(
            d["id"], d["model"], d["number"], d["previous"], tuple(d["derived_from"]),
            d["how"], d["message"], d["time"],
            MappingProxyType({p: FileEntry.from_json(f) for p, f in d["files"].items()}),
            MappingProxyType(d.get("provenance") or {}),
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    head: str | None  # version id
    count: int
    created: float

    def to_bytes(self) -> bytes:
        return json.dumps({"head": self.head, "count": self.count, "created": self.created}).encode()

    @classmethod
    def from_bytes(cls, name: str, raw: bytes) -> ModelInfo:
        d = json.loads(raw)
        return cls(name, d["head"], d["count"], d["created"])
