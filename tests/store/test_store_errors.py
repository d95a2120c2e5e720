"""LmdbStore's failures as typed errors: a full disk, a full map, real I/O trouble, a read-only disk.

Each leaves the store as it was (the write transaction is aborted) and carries the errno the
mount answers with. Disks are real tmpfs mounts (root only).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from modelfs.errors import StoreFull, StoreIOError, StoreReadOnly
from modelfs.store import LmdbStore
from modelfs.store.base import TABLES

MiB = 1 << 20


@pytest.fixture
def disk(tmpfs: Callable[[str, int], Path]) -> Path:
    """An 8 MiB tmpfs."""
    return tmpfs("disk", 8)


def contents(s: LmdbStore) -> list[tuple[bytes, bytes]]:
    with s.read() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.items("chunks")]


@pytest.mark.parametrize("piece", [MiB, 64 << 10])  # big records (overflow pages) and small
def test_a_full_disk_is_store_full_with_enospc_and_changes_nothing(disk: Path, piece: int) -> None:
    s = LmdbStore(disk / "store", create=True)
    try:
        with s.write() as txn:
            txn.put("chunks", b"kept", b"before")
        before = contents(s)
        with pytest.raises(StoreFull) as e, s.write() as txn:
            for i in range(16 * MiB // piece):
                txn.put("chunks", b"%08d" % i, os.urandom(piece))
        assert e.value.errno == errno.ENOSPC
        assert "the disk holding store" in str(e.value) and "nothing was changed" in str(e.value)
        assert contents(s) == before
    finally:
        s.close()


def test_an_io_error_with_space_left_is_eio_not_full(tmp_path: Path) -> None:
    """LMDB says EIO for a short write (a disk that filled) and for a failing disk alike."""
    s = LmdbStore(tmp_path / "store", create=True)
    try:
        with pytest.raises(StoreIOError) as e, s.write() as txn:
            txn.put("chunks", b"k", b"v")
            raise lmdb.Error("mdb_txn_commit", errno.EIO)  # as py-lmdb raises it
        assert not isinstance(e.value, StoreFull) and e.value.errno == errno.EIO
        assert contents(s) == []
    finally:
        s.close()


def test_a_full_map_is_store_full(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "store", create=True, map_size=1 * MiB)
    try:
        with pytest.raises(StoreFull, match="LMDB map") as e, s.write() as txn:
            txn.put("chunks", b"k", os.urandom(2 * MiB))
        assert e.value.errno == errno.ENOSPC
    finally:
        s.close()


def test_a_store_on_a_read_only_disk_opens_read_only_and_refuses_writes(disk: Path) -> None:
    s = LmdbStore(disk / "store", create=True)
    with s.write() as txn:
        txn.put("chunks", b"k", b"v")
    s.close()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(StoreReadOnly) as e:
        LmdbStore(disk / "store")
    assert e.value.errno == errno.EROFS
    ro = LmdbStore(disk / "store", readonly=True)
    try:
        assert ro.readonly and contents(ro) == [(b"k", b"v")]
        with pytest.raises(StoreReadOnly, match="is read-only") as e, ro.write():
            pass
        assert e.value.errno == errno.EROFS
    finally:
        ro.close()


def test_a_read_only_store_older_than_a_table_reads_it_as_empty(tmp_path: Path) -> None:
    """A store written before a table existed, opened read-only, still answers every read."""
    s = LmdbStore(tmp_path / "s", create=True)
    with s.write() as txn:
        txn.put("meta", b"k", b"v")
    s.close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=len(TABLES) + 4)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(TABLES[-1].encode(), txn=txn), delete=True)  # as if never made
    env.close()
    ro = LmdbStore(tmp_path / "s", readonly=True)
    with ro.read() as txn:
        assert txn.get("meta", b"k") == b"v"
        assert txn.get(TABLES[-1], b"x") is None and list(txn.items(TABLES[-1])) == []
        assert list(txn.keys(TABLES[-1])) == []
    ro.close()
    rw = LmdbStore(tmp_path / "s")  # opened writable, the missing table is made
    with rw.write() as txn:
        txn.put(TABLES[-1], b"x", b"1")
    rw.close()
