"""Remotes: S3 buckets and shared directories that many stores push to and pull from.

Nothing below imports this package; the CLI and the mount daemon do. See docs/remote.md for
the layout on the remote and what each verb moves.
"""

from modelfs.remote import dirstore  # noqa: F401  (registers the file:// scheme)
from modelfs.remote.source import RemoteChunkSource, open_chunk_source, remote_for_store
from modelfs.remote.state import Holdings, Ref, Remote
from modelfs.remote.transport import (
    SCHEMES,
    Counting,
    ObjectInfo,
    ObjectStore,
    Options,
    PreconditionFailed,
    RemoteRefused,
    Scheme,
    open_object_store,
)


def _open_s3(url: str, options: Options) -> ObjectStore:
    from modelfs.remote.s3 import S3Store  # boto3 loads only when an s3:// remote is used

    return S3Store(url, options)


SCHEMES.register(Scheme("s3", _open_s3))

__all__ = ["SCHEMES", "Counting", "Holdings", "ObjectInfo", "ObjectStore", "Options", "PreconditionFailed",
           "Ref", "Remote", "RemoteChunkSource", "RemoteRefused", "open_chunk_source", "open_object_store",
           "remote_for_store"]
