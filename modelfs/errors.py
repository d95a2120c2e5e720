"""The error types every layer raises; front ends turn them into one clear line."""

from __future__ import annotations

import errno as _errno


class ModelfsError(Exception):
    """Base of every error a user can cause; the CLI prints its message, never a traceback."""


class StoreNotFound(ModelfsError):
    pass


class NotFound(ModelfsError):
    """An unknown model, version, file or chunk."""


class InvalidName(ModelfsError):
    pass


class CorruptData(ModelfsError):
    """Stored bytes do not hash to their key: the store is damaged."""


class RemoteUnavailable(ModelfsError):
    """A remote (or a lazy store's chunk source) failed or timed out; the message names it
    and what was asked for. Nothing local changed; the next try may succeed."""


class RemoteStillUnavailable(RemoteUnavailable):
    """The same fetch failed a moment ago and was not asked again (the kernel retries a failed
    read page by page at once): the first failure was reported, this one need not be."""


class Conflict(ModelfsError):
    """The operation would overwrite something or contradicts the current state."""


class NameTooLong(InvalidName):
    """A path component over 255 bytes or a path over 4096: no local filesystem could hold it."""


class StoreIOError(ModelfsError):
    """A write to the store failed and changed nothing; ``errno`` says why, for the mount.

    ENOSPC: the disk holding the store (or LMDB's map) is full; EROFS: the store is
    read-only; EIO (or the errno LMDB gave): the disk failed.
    """

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class StoreFull(StoreIOError):
    def __init__(self, message: str) -> None:
        super().__init__(message, _errno.ENOSPC)


class StoreReadOnly(StoreIOError):
    def __init__(self, message: str) -> None:
        super().__init__(message, _errno.EROFS)
