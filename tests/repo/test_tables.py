"""The ops layer's door into the store: JSON records in its own tables, never the repo's."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfs.errors import ModelfsError, StoreReadOnly
from modelfs.repo import Repo
from modelfs.store import LmdbStore


def test_records_round_trip_scan_by_prefix_and_delete(repo: Repo) -> None:
    t = repo.table("results")
    assert t.get(b"a\0x") is None
    assert t.put(b"a\0x", {"passed": True, "m": [1, 2]})
    assert not t.put(b"a\0x", {"passed": False}, overwrite=False)  # kept as it was
    assert t.put_many([(b"a\0y", 1), (b"b\0x", None)]) == 2
    assert t.get(b"a\0x") == {"passed": True, "m": [1, 2]}
    assert [k for k, _ in t.items(b"a\0")] == [b"a\0x", b"a\0y"]
    assert t.delete(b"a\0x", b"nope") == 1
    assert [k for k, _ in t] == [b"a\0y", b"b\0x"]


def test_the_repo_tables_are_not_open_to_records(repo: Repo) -> None:
    for name in ("versions", "chunks", "models", "meta"):
        with pytest.raises(ModelfsError, match="maintained by the repo"):
            repo.table(name)
    with pytest.raises(ModelfsError, match="no table"):
        repo.table("nonsense")


def test_a_read_only_store_refuses_records_and_keeps_reading(tmp_path: Path) -> None:
    with Repo.init(tmp_path / "s") as rw:
        rw.table("tests").put(b"t", {"cmd": "true"})
    ro = Repo(LmdbStore(tmp_path / "s", readonly=True), tmp_path / "s")
    try:
        assert ro.table("tests").get(b"t") == {"cmd": "true"}
        with pytest.raises(StoreReadOnly):
            ro.table("tests").put(b"u", {})
    finally:
        ro.close()
