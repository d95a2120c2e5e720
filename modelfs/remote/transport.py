"""The object-store transport: what the remote layer needs from S3 or a shared directory.

Everything above this module (packs, refs, push, pull, gc) speaks only `ObjectStore`, so a
bucket and an NFS directory go through one code path. The operations are the ones S3 has
and the layout needs: whole and ranged GET, PUT, a conditional PUT (create-only, as
``If-None-Match: *``, or replace-if-unchanged, as ``If-Match: <etag>``), list by prefix,
HEAD and DELETE. `Counting` wraps any of them to count requests and bytes at the client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

from modelfs.errors import ModelfsError
from modelfs.registry import Registry


class PreconditionFailed(ModelfsError):
    """A conditional write lost: the object exists (create-only) or changed (If-Match)."""


class RemoteRefused(ModelfsError):
    """The remote answered but will not do it: bad credentials, no permission, bad URL."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float  # seconds since the epoch, the server's clock


class ObjectStore(Protocol):
    """Keys are ``/``-separated strings below the remote's prefix; values are bytes."""

    url: str

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        ...

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The bytes with the ETag they were read at (for a later `put_if`), or None."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (a ranged GET); NotFound-like None is an error here."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write (replacing any object of that key); returns the new ETag."""
        ...

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        """Write only if the object is absent (`etag` None) or still has `etag`.

        Raises PreconditionFailed otherwise; returns the new ETag."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; absent is fine."""
        ...

    def check(self) -> None:
        """Fail now, with one clear line, if the bucket or directory is missing or refuses us."""
        ...


class Counting:
    """An `ObjectStore` that counts what moved through another one (counted at the client)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.objects_up = 0
        self.objects_down = 0

    def _add(self, up: int = 0, down: int = 0, obj_up: int = 0, obj_down: int = 0) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_up += up
            self.bytes_down += down
            self.objects_up += obj_up
            self.objects_down += obj_down

    def get(self, key: str) -> bytes | None:
        data = self.inner.get(key)
        self._add(down=len(data or b""), obj_down=data is not None)
        return data

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        got = self.inner.get_tagged(key)
        self._add(down=len(got[0]) if got else 0, obj_down=got is not None)
        return got

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self.inner.get_range(key, start, length)
        self._add(down=len(data))
        return data

    def put(self, key: str, data: bytes) -> str:
        etag = self.inner.put(key, data)
        self._add(up=len(data), obj_up=1)
        return etag

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        try:
            new = self.inner.put_if(key, data, etag)
        except PreconditionFailed:
            self._add()
            raise
        self._add(up=len(data), obj_up=1)
        return new

    def head(self, key: str) -> ObjectInfo | None:
        self._add()
        return self.inner.head(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        self._add()
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._add()
        self.inner.delete(key)

    def check(self) -> None:
        self._add()
        self.inner.check()

    def summary(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "objects_up": self.objects_up, "objects_down": self.objects_down}


@dataclass(frozen=True, slots=True)
class Options:
    """How to reach a remote: the endpoint (S3), timeouts and retries (the caller's choice)."""

    endpoint: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    attempts: int = 4  # tries per request, with exponential backoff between them
    access_key: str | None = None  # None: the standard AWS variables and files (boto3 reads them)
    secret_key: str | None = None


@dataclass(frozen=True, slots=True)
class Scheme:
    """A kind of object store, by the URL scheme that names it."""

    name: str
    open: Callable[[str, Options], ObjectStore]


# one entry per kind of object store (modelfs/remote/s3.py, modelfs/remote/dirstore.py)
SCHEMES: Registry[Scheme] = Registry(
    "modelfs.remote_schemes", "remote URL scheme", lambda s: s.name,
    lambda name, known: f"unknown remote URL scheme {name!r}: use {' or '.join(known)} URLs")


def open_object_store(url: str, options: Options | None = None) -> ObjectStore:
    """The object store a remote URL names (``s3://bucket/prefix``, ``file:///path``)."""
    scheme = urlparse(url).scheme
    if not scheme:
        raise RemoteRefused(f"remote URL {url!r} has no scheme: use s3://bucket/prefix or file:///path")
    try:
        kind = SCHEMES.get(scheme)
    except ModelfsError as e:
        raise RemoteRefused(str(e)) from None
    return kind.open(url, options or Options())
