"""The store conformance suite (modelfs.testing.store), run on LmdbStore and its MemoryStore twin.

Upper layers are tested on the memory twin for speed; this suite is what makes that valid:
both must agree on every behaviour the layers above rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.errors import StoreNotFound
from modelfs.store import LmdbStore, MemoryStore, Store
from modelfs.testing import StoreTests


class TestLmdbStore(StoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        s = LmdbStore(tmp_path / "s", create=True)
        try:
            yield s
        finally:
            s.close()


class TestMemoryStore(StoreTests):
    @pytest.fixture
    def store(self) -> Iterator[Store]:
        s = MemoryStore()
        try:
            yield s
        finally:
            s.close()


def test_lmdb_store_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound, match="no modelfs store"):
        LmdbStore(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_lmdb_store_persists_across_reopen(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "s", create=True)
    with s.write() as txn:
        txn.put("meta", b"k", b"v")
    s.close()
    s = LmdbStore(tmp_path / "s")
    try:
        with s.read() as txn:
            assert txn.get("meta", b"k") == b"v"
    finally:
        s.close()


def test_lmdb_store_offset_of_a_view_is_where_its_bytes_lie_in_the_file(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "s", create=True)
    values = {bytes([i]) * 32: bytes([i]) * (300_000 + 4096 * i) for i in range(1, 6)}
    try:
        with s.write() as txn:
            for k, v in values.items():
                txn.put("chunks", k, v)
        with s.read(views=True) as txn, open(tmp_path / "s" / "data.mdb", "rb") as f:
            for k, v in values.items():
                view = txn.get("chunks", k)
                off = s.offset_of(view)
                assert off is not None
                f.seek(off)
                assert f.read(len(v)) == v
        assert s.random_access() is True  # the map is found and advised
        with s.read() as txn:
            assert all(bytes(txn.get("chunks", k)) == v for k, v in values.items())
    finally:
        s.close()
