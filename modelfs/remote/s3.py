"""S3 (and S3-compatible servers: SeaweedFS, MinIO, R2) as an `ObjectStore`, through boto3.

Why boto3: it sends the conditional writes the refs need (``IfNoneMatch="*"`` and
``IfMatch=<etag>`` on put_object), ranged GETs, and takes connect/read timeouts and
retries with exponential backoff and jitter from one botocore `Config`; it reads the
standard AWS variables and files for credentials (and ``AWS_ENDPOINT_URL``) itself, so the
remote layer never touches the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from modelfs.errors import NotFound, RemoteUnavailable
from modelfs.remote.transport import (
    ObjectInfo,
    Options,
    PreconditionFailed,
    RemoteRefused,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_DENIED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
           "ExpiredToken", "AuthorizationHeaderMalformed", "403"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    """One bucket and key prefix of an S3-compatible server."""

    def __init__(self, url: str, options: Options) -> None:
        u = urlparse(url)
        if not u.netloc:
            raise RemoteRefused(f"remote URL {url!r} names no bucket: use s3://bucket/prefix")
        self.url = url
        self.bucket = u.netloc
        self.prefix = u.path.strip("/") + "/" if u.path.strip("/") else ""
        self.endpoint = options.endpoint
        session = boto3.session.Session(aws_access_key_id=options.access_key,
                                        aws_secret_access_key=options.secret_key)
        config = Config(connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
                        retries={"max_attempts": options.attempts, "mode": "standard"},
                        max_pool_connections=16,
                        # checksums on every PUT cost a pass over 32 MiB packs; blake3 guards them
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self._client = session.client("s3", endpoint_url=options.endpoint, config=config,
                                      region_name=session.region_name or "us-east-1")
        self._attempts = options.attempts

    def _where(self) -> str:
        return f"{self.url}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request, turning botocore's failures into one clear ModelfsError."""
        try:
            return fn()
        except NoCredentialsError:
            raise RemoteRefused(f"no S3 credentials for {self._where()}: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)") from None
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "PreconditionFailed" or status == 412:
                raise PreconditionFailed(f"{what}: precondition failed") from None
            if code == "NoSuchBucket":
                raise NotFound(f"bucket {self.bucket!r} does not exist ({self._where()})") from None
            if code in _DENIED or status == 403:
                raise RemoteRefused(f"{self._where()} refused the credentials for {what}: "
                                    f"{err.get('Message') or code}") from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                raise RemoteUnavailable(f"{self._where()} failed {what} after {self._attempts} tries: "
                                        f"{code} {err.get('Message', '')}".rstrip()) from None
            raise RemoteRefused(f"{self._where()} refused {what}: {code} {err.get('Message', '')}".rstrip()) from None
        except BotoCoreError as e:  # connection refused, timeouts (after the retries)
            raise RemoteUnavailable(f"{self._where()} did not answer {what} after {self._attempts} tries: "
                                    f"{e}") from None

    def _missing(self, e: ClientError) -> bool:
        err = e.response.get("Error", {})
        return str(err.get("Code", "")) in _MISSING or e.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode") == 404 and err.get("Code") != "NoSuchBucket"

    def _get(self, key: str, **kw: Any) -> dict[str, Any] | None:
        def go() -> dict[str, Any] | None:
            try:
                r = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key, **kw)
            except ClientError as e:
                if self._missing(e):
                    return None
                raise
            return {"body": r["Body"].read(), "etag": r["ETag"]}
        return self._call(f"GET {key}", go)

    def get(self, key: str) -> bytes | None:
        r = self._get(key)
        return None if r is None else r["body"]

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        r = self._get(key)
        return None if r is None else (r["body"], r["etag"])

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        r = self._get(key, Range=f"bytes={start}-{start + length - 1}")
        if r is None:
            raise RemoteUnavailable(f"{self._where()} has no object {key} (removed by a gc?)")
        return r["body"]

    def put(self, key: str, data: bytes) -> str:
        r = self._call(f"PUT {key}", lambda: self._client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data))
        return str(r["ETag"])

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        r = self._call(f"PUT {key}", lambda: self._client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data, **cond))
        return str(r["ETag"])

    def head(self, key: str) -> ObjectInfo | None:
        def go() -> ObjectInfo | None:
            try:
                r = self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as e:
                if self._missing(e):
                    return None
                raise
            return ObjectInfo(key, int(r["ContentLength"]), str(r["ETag"]), r["LastModified"].timestamp())
        return self._call(f"HEAD {key}", go)

    def list(self, prefix: str) -> list[ObjectInfo]:
        def go() -> list[ObjectInfo]:
            out = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(o["Key"][len(self.prefix):], int(o["Size"]), str(o["ETag"]),
                                          o["LastModified"].timestamp()))
            return sorted(out, key=lambda o: o.key)
        return self._call(f"LIST {prefix}", go)

    def delete(self, key: str) -> None:
        self._call(f"DELETE {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key))

    def check(self) -> None:
        """The bucket exists and the credentials are good: one HEAD, so a bad remote fails first."""
        def go() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise NotFound(f"bucket {self.bucket!r} does not exist ({self._where()})") from None
                raise
        self._call("HEAD bucket", go)

