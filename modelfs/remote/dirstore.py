"""A shared directory (local disk, NFS) as an `ObjectStore`: ``file:///path``.

The same layout and code path as a bucket. Writes go to a temporary file in the target's
directory, then: a plain PUT renames it over the key (atomic replace); a create-only PUT
links it to the key (``link`` fails if the key exists, atomically, on NFS too); a
replace-if-ETag PUT holds an flock on a per-key lock file while it compares the ETag and
renames. An ETag is the (inode, mtime, size) of the file, which a rename always changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelfs.errors import NotFound, RemoteUnavailable
from modelfs.remote.transport import (
    SCHEMES,
    ObjectInfo,
    Options,
    PreconditionFailed,
    RemoteRefused,
    Scheme,
)

_TMP = ".tmp-"
_LOCKS = ".locks"


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


class DirStore:
    """Objects as files under one directory (keys are relative paths)."""

    def __init__(self, url: str, options: Options) -> None:
        u = urlparse(url)
        if u.netloc not in ("", "localhost"):
            raise RemoteRefused(f"remote URL {url!r}: a file:// URL names a local path (file:///path)")
        self.url = url
        self.root = Path(unquote(u.path))

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(_TMP) for p in parts):
            raise RemoteRefused(f"bad object key {key!r}")
        return self.root.joinpath(*parts)

    def _io(self, what: str, e: OSError) -> RemoteUnavailable:
        return RemoteUnavailable(f"{self.url} failed {what}: {e.strerror or e}")

    def check(self) -> None:
        if not self.root.is_dir():
            raise NotFound(f"remote directory {self.root} does not exist (create it first)")

    def get(self, key: str) -> bytes | None:
        got = self.get_tagged(key)
        return None if got is None else got[0]

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read(), _etag(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._io(f"GET {key}", e) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return os.pread(f.fileno(), length, start)
        except OSError as e:
            raise self._io(f"GET {key}", e) from None

    def _temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP}{secrets.token_hex(8)}")
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        try:
            tmp = self._temp(path, data)
            os.replace(tmp, path)
            return _etag(path.stat())
        except OSError as e:
            raise self._io(f"PUT {key}", e) from None

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        locks = self.root / _LOCKS
        locks.mkdir(exist_ok=True)
        with open(locks / hashlib.sha256(key.encode()).hexdigest()[:32], "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        path = self._path(key)
        try:
            tmp = self._temp(path, data)
            try:
                with self._locked(key):  # a replace-if-ETag holds it while it compares
                    if etag is None:
                        try:
                            os.link(tmp, path)
                        except FileExistsError:
                            raise PreconditionFailed(f"PUT {key}: it exists") from None
                    else:
                        try:
                            current = _etag(path.stat())
                        except FileNotFoundError:
                            current = None
                        if current != etag:
                            raise PreconditionFailed(f"PUT {key}: it changed")
                        os.replace(tmp, path)
                    return _etag(path.stat())
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise self._io(f"PUT {key}", e) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._io(f"HEAD {key}", e) from None
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        try:
            for dirpath, dirs, files in os.walk(self.root):
                rel = Path(dirpath).relative_to(self.root)
                dirs[:] = [d for d in dirs if not (rel == Path(".") and d == _LOCKS)]
                for name in files:
                    if name.startswith(_TMP):
                        continue
                    key = (rel / name).as_posix() if rel != Path(".") else name
                    if key.startswith(prefix):
                        st = os.stat(os.path.join(dirpath, name))
                        out.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
        except OSError as e:
            raise self._io(f"LIST {prefix}", e) from None
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise self._io(f"DELETE {key}", e) from None


SCHEMES.register(Scheme("file", DirStore))
