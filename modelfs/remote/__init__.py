"""Remotes: S3 buckets and shared directories that many stores push to and pull from.

Nothing below imports this package; the CLI and the mount daemon do. See docs/remote.md for
the layout on the remote and what each verb moves.
"""

from modelfs.remote import dirstore, s3  # noqa: F401  (register the file:// and s3:// schemes)
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
    open_object_store,
)

__all__ = ["SCHEMES", "Counting", "Holdings", "ObjectInfo", "ObjectStore", "Options", "PreconditionFailed",
           "Ref", "Remote", "RemoteChunkSource", "RemoteRefused", "open_chunk_source", "open_object_store",
           "remote_for_store"]
