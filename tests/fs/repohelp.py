"""Real repos over the in-memory store for the mount's unit tests (no fakes of the store)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path

from modelfs.fs.tree import ROOT_INO, Tree
from modelfs.repo import Repo, Version

_dirs = itertools.count()

# path -> bytes, or (bytes, mode)
Files = Mapping[str, bytes | tuple[bytes, int]]


def commit(repo: Repo, tmp: Path, model: str, files: Files, parents: list[str] | None = None,
           how: str | None = None) -> Version:
    """Write ``files`` to a fresh directory and commit them as ``model``'s next version."""
    src = tmp / f"src{next(_dirs)}"
    paths = {}
    for rel, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)
        paths[rel] = p
    return repo.commit_files(model, paths, parents=parents, how=how, infer_parent=False)


def walk(tree: Tree, path: str) -> int:
    ino = ROOT_INO
    for part in path.strip("/").split("/"):
        if part:
            ino = tree.lookup(ino, part).ino
    return ino


def names(tree: Tree, path: str) -> list[str]:
    return [n for n, _ in tree.readdir(walk(tree, path))]
