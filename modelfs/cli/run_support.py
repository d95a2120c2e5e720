"""What commands that run things over the lineage share: an executor from the CLI's options and
the environment, and versions as directories of a mount started only when first needed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from modelfs.cli.version_dirs import MountedVersions
from modelfs.ops.executors import LOCAL_RAY_ENV, Executor, get_executor
from modelfs.repo import Version


def executor_for(name: str, jobs: int) -> Executor:
    """The named executor; `ray` joins the cluster at $RAY_ADDRESS when it is set (the CLI is
    the only layer that reads the environment), else starts a private local instance."""
    address = os.environ.get("RAY_ADDRESS") if name == "ray" else None
    if name == "ray" and not address:
        os.environ.update(LOCAL_RAY_ENV)  # before ray is imported: a local instance on loopback
    return get_executor(name, jobs, **({"address": address} if address else {}))


class LazyVersions:
    """A ``VersionDirs`` over a mount of the store, mounted on the first path asked for:
    a dry run, or a cascade with nothing to do, starts no mount."""

    def __init__(self, store: Path) -> None:
        self._mounted = MountedVersions(store)
        self._stack = contextlib.ExitStack()
        self._open = False

    def path(self, version: Version) -> Path:
        if not self._open:
            self._stack.enter_context(self._mounted)
            self._open = True
        return self._mounted.path(version)

    def __enter__(self) -> LazyVersions:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()
