"""Reading and extending the lineage graph inside store transactions."""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator

from modelfs.errors import NotFound
from modelfs.lineage import overlay
from modelfs.lineage.records import ModelInfo, Version
from modelfs.store import ReadTxn, WriteTxn


def _vnum_key(model: str, number: int) -> bytes:
    return model.encode() + b"\0" + struct.pack(">Q", number)


class LineageGraph:
    """Stateless helpers: every method takes the transaction it runs in."""

    @staticmethod
    def model(txn: ReadTxn, name: str) -> ModelInfo | None:
        raw = txn.get("models", name.encode())
        return ModelInfo.from_bytes(name, raw) if raw is not None else None

    @staticmethod
    def models(txn: ReadTxn) -> list[ModelInfo]:
        return [ModelInfo.from_bytes(k.decode(), v) for k, v in txn.items("models")]

    @staticmethod
    def version(txn: ReadTxn, version_id: str) -> Version:
        """The effective version: its immutable record with its annotations applied."""
        raw = txn.get("versions", version_id.encode())
        if raw is None:
            raise NotFound(f"unknown version {version_id!r}")
        return overlay.apply(Version.from_bytes(raw), overlay.decode(txn.get(overlay.TABLE, version_id.encode())))

    @staticmethod
    def record(txn: ReadTxn, version_id: str) -> Version:
        """The version as it was recorded, without annotations."""
        raw = txn.get("versions", version_id.encode())
        if raw is None:
            raise NotFound(f"unknown version {version_id!r}")
        return Version.from_bytes(raw)

    @staticmethod
    def version_by_number(txn: ReadTxn, model: str, number: int) -> Version:
        if not 0 < number < 1 << 64:  # no such version, and beyond what the key can hold
            raise NotFound(f"model {model!r} has no version {number}")
        vid = txn.get("vnums", _vnum_key(model, number))
        if vid is None:
            raise NotFound(f"model {model!r} has no version {number}")
        return LineageGraph.version(txn, vid.decode())

    @staticmethod
    def versions(txn: ReadTxn, model: str) -> list[Version]:
        prefix = model.encode() + b"\0"
        return [LineageGraph.version(txn, v.decode()) for _, v in txn.items("vnums", prefix)]

    @staticmethod
    def all_versions(txn: ReadTxn) -> Iterator[Version]:
        edits = {bytes(k): overlay.decode(v) for k, v in txn.items(overlay.TABLE)}
        for k, raw in txn.items("versions"):
            yield overlay.apply(Version.from_bytes(raw), edits.get(bytes(k), []))

    @staticmethod
    def children(txn: ReadTxn, version_id: str) -> list[Version]:
        prefix = version_id.encode() + b"\0"
        return [LineageGraph.version(txn, k[len(prefix):].decode()) for k in txn.keys("children", prefix)]

    @staticmethod
    def add_version(txn: WriteTxn, v: Version, move_head: bool = True) -> None:
        """Record a version with its edges and move the model's head; versions never change.

        Without `move_head` the version is numbered and reachable but the head stays (a
        gated cascade stores a version that failed a test beside the good head)."""
        if not txn.put("versions", v.id.encode(), v.to_bytes(), overwrite=False):
            raise NotFound(f"version {v.id} already exists")  # content-derived ids: cannot happen
        txn.put("vnums", _vnum_key(v.model, v.number), v.id.encode())
        for p in v.parents:
            txn.put("children", p.encode() + b"\0" + v.id.encode(), b"")
        info = LineageGraph.model(txn, v.model)
        created = info.created if info else v.time
        head = v.id if move_head or info is None else info.head
        txn.put("models", v.model.encode(), ModelInfo(v.model, head, v.number, created).to_bytes())

    @staticmethod
    def set_head(txn: WriteTxn, model: str, version_id: str) -> None:
        """Point a model's head at one of its versions (numbers and counts stay as they are)."""
        info = LineageGraph.model(txn, model)
        if info is None:
            raise NotFound(f"unknown model {model!r}")
        txn.put("models", model.encode(), ModelInfo(model, version_id, info.count, info.created).to_bytes())

    @staticmethod
    def ancestors(txn: ReadTxn, version_id: str) -> dict[str, int]:
        """Every ancestor (the version included) with its distance, breadth first."""
        dist = {version_id: 0}
        queue = deque([version_id])
        while queue:
            vid = queue.popleft()
            for p in LineageGraph.version(txn, vid).parents:
                if p not in dist:
                    dist[p] = dist[vid] + 1
                    queue.append(p)
        return dist

    @staticmethod
    def common_ancestor(txn: ReadTxn, a: str, b: str) -> str | None:
        da, db = LineageGraph.ancestors(txn, a), LineageGraph.ancestors(txn, b)
        common = set(da) & set(db)
        if not common:
            return None
        return min(common, key=lambda v: (da[v] + db[v], v))
