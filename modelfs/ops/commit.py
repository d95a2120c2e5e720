"""Committing computed files with chunk hints: what a merge or an update knows about its chunks.

A merge knows each merged chunk is a fixed combination of parent chunks, a LoRA import knows
the factors; the importer cannot see either in the bytes. A `ChunkHint` names a codec, the
base chunks it predicts from and the codec's parameters, and the importer keeps the hinted
encoding where it is smaller (the `hints=` argument of `Repo.commit_files`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelfs.repo import Repo


@dataclass(frozen=True)
class ChunkHint:
    """Try `codec` on these base chunks (decoded), passing `hint` as `EncodeContext.hint`."""

    codec: str
    bases: tuple[bytes, ...]
    hint: Any = None


HintFn = Callable[[str, str, int], list[ChunkHint]]  # (file path, tensor name, chunk index)


def staging_dir(repo: Repo, prefix: str = "ops-") -> tempfile.TemporaryDirectory[str]:
    """A private directory for files about to be committed; on the store's disk when it has one."""
    root = repo.path / "staging" if repo.path is not None and (repo.path / "staging").is_dir() else None
    return tempfile.TemporaryDirectory(prefix=prefix, dir=root)

