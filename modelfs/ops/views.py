"""Where a command run over the lineage finds a version's files: a read-only directory.

Tests and recipes read versions as ordinary checkpoint directories (``{path}``,
``{parent}``) without copying them: the front end hands the ops layer a ``VersionDirs``
that maps a version to a directory (the CLI's is a read-only mount of the store, see
``modelfs.cli.version_dirs``; a worker on another machine uses a mount of a shared store
or, once remotes exist, a lazy clone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from modelfs.repo import Version


class VersionDirs(Protocol):
    def path(self, version: Version) -> Path:
        """A read-only directory holding exactly ``version``'s files."""
        ...
