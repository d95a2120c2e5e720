"""The error types every layer raises; front ends turn them into one clear line."""

from __future__ import annotations


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


class Conflict(ModelfsError):
    """The operation would overwrite something or contradicts the current state."""
