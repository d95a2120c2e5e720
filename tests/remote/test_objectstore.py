"""The object-store conformance suite on both transports: S3 (a real SeaweedFS) and file://."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.remote import ObjectStore, open_object_store
from modelfs.testing.objectstore import ObjectStoreTests


class TestS3(ObjectStoreTests):
    @pytest.fixture
    def objstore(self, s3_server) -> Iterator[ObjectStore]:  # type: ignore[no-untyped-def]
        yield open_object_store(f"s3://{s3_server.make_bucket()}/some/prefix", s3_server.options())


class TestDirectory(ObjectStoreTests):
    @pytest.fixture
    def objstore(self, tmp_path: Path) -> Iterator[ObjectStore]:
        (tmp_path / "remote").mkdir()
        yield open_object_store(f"file://{tmp_path / 'remote'}")
