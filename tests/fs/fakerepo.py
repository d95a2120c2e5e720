"""An in-memory stand-in for Repo, for testing the mount's core and adapter without FUSE."""

from __future__ import annotations

from types import MappingProxyType

from modelfs.errors import NotFound
from modelfs.lineage import FileEntry, ModelInfo, Version


def entry(tag: str, size: int = 10, fmt: str = "blob", mode: int = 0o644) -> FileEntry:
    return FileEntry(tag.encode().ljust(32, b"\0"), size, fmt, mode)


class FakeRepo:
    """Just enough of Repo for the tree: models, versions, refs, children, data_version."""

    def __init__(self) -> None:
        self._versions: dict[str, Version] = {}
        self._models: dict[str, list[str]] = {}
        self._dv = 0
        self.calls = 0

    def commit(self, model: str, files: dict[str, FileEntry], derived_from: tuple[str, ...] = (),
               how: str | None = None, time: float = 1_700_000_000.0) -> Version:
        ids = self._models.setdefault(model, [])
        vid = f"{model}-{len(ids) + 1}".ljust(20, "0")
        v = Version(vid, model, len(ids) + 1, ids[-1] if ids else None, derived_from, how, "",
                    time + len(self._versions), MappingProxyType(files), MappingProxyType({}))
        ids.append(vid)
        self._versions[vid] = v
        self._dv += 1
        return v

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(m, ids[-1] if ids else None, len(ids), 1.0)
                for m, ids in sorted(self._models.items())]

    def versions(self, model: str) -> list[Version]:
        if model not in self._models:
            raise NotFound(model)
        return [self._versions[i] for i in self._models[model]]

    def version(self, version_id: str) -> Version:
        self.calls += 1
        try:
            return self._versions[version_id]
        except KeyError:
            raise NotFound(version_id) from None

    def resolve(self, ref: str) -> Version:
        model, _, num = ref.partition("@")
        ids = self._models.get(model)
        if not ids:
            raise NotFound(ref)
        if not num:
            return self._versions[ids[-1]]
        n = int(num)
        if not 1 <= n <= len(ids):
            raise NotFound(ref)
        return self._versions[ids[n - 1]]

    def children(self, version_id: str) -> list[Version]:
        return [v for v in self._versions.values() if version_id in v.parents]

    def data_version(self) -> int:
        return self._dv
