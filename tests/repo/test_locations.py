"""Record locations (repo/locations.py): noted for every chunk written, right, and only hints."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from modelfs.repo import Repo, StoreChunkSource, copy_metadata
from modelfs.repo.locations import (
    INLINE,
    LOCATIONS_KEY,
    TABLE,
    chunk_exists,
    chunk_stat,
    decode,
    encode,
)
from tests.conftest import fine_tune_store, small_checkpoint


@pytest.fixture
def lineage(tmp_path: Path) -> Path:
    """A store of m@1 and its fine-tune m@2 (delta chunks), written by this code."""
    return fine_tune_store(tmp_path, tmp_path / "store")


def _locations(repo: Repo) -> dict[bytes, tuple[int, int, tuple[bytes, ...]]]:
    with repo.store.read() as txn:
        return {bytes(k): decode(v) for k, v in txn.items(TABLE)}


def _assert_all_located(repo: Repo, store: Path) -> int:
    """Every chunk has a location, and the file holds exactly its record there."""
    locs = _locations(repo)
    with repo.store.read() as txn, open(store / "data.mdb", "rb") as f:
        keys = [bytes(k) for k in txn.keys("chunks")]
        assert keys and set(locs) == set(keys)
        assert any(locs[k][0] != INLINE for k in keys)  # the weights' chunks have their places
        for k in keys:
            off, ln, bases = locs[k]
            raw = bytes(txn.get("chunks", k))
            assert ln == len(raw)
            if off == INLINE:  # in a B-tree leaf, which moves: no place noted
                assert ln < 4096
                continue
            f.seek(off)
            assert f.read(ln) == raw
            assert bases == tuple(b for b, _ in repo.chunk_record(k).bases)
    return len(keys)


def test_every_imported_chunk_is_located_and_the_store_says_so(lineage: Path) -> None:
    with Repo.open(lineage) as repo:
        _assert_all_located(repo, lineage)
        assert repo.locations.complete
        assert any(bases for _, _, bases in _locations(repo).values()), "expected deltas"


def test_a_cold_read_pages_in_each_record_and_its_chain_and_is_exact(lineage: Path, tmp_path: Path) -> None:
    with Repo.open(lineage) as repo:
        v = repo.resolve("m@2")
        reader = repo.open_file(v.files["model.safetensors"])
        keys = reader.chunk_keys(0, reader.size)
        chain = set(keys) | {b for _, _, bs in _locations(repo).values() for b in bs}
        data = reader.read(0, reader.size)
        assert blake3.blake3(data).digest() == v.files["model.safetensors"].key
        assert repo.locations.pages_asked >= len(keys)
        assert repo.locations.pages_asked <= len(chain) * 2  # the read and each chunk's bases


def test_an_older_store_reads_as_before_and_gc_locates_its_records(lineage: Path, tmp_path: Path) -> None:
    with Repo.open(lineage) as repo, repo.store.write() as txn:  # as written before locations
        for k in list(txn.keys(TABLE)):
            txn.delete(TABLE, bytes(k))
        txn.delete("meta", LOCATIONS_KEY)
    with Repo.open(lineage) as repo:
        assert not repo.locations.complete  # the map keeps its read-around
        v = repo.export("m@2", tmp_path / "out")  # checks every file's blake3
        assert repo.locations.pages_asked == 0
        got = repo.maintenance().gc()
        assert got["chunks_removed"] == 0 and got["records_located"] > 0
        assert got["records_located"] == _assert_all_located(repo, lineage)
        assert repo.locations.complete
    with Repo.open(lineage) as repo:
        assert repo.locations.complete
        assert repo.maintenance().gc()["records_located"] == 0
        repo.export("m@2", tmp_path / "again")
        assert os.path.getsize(tmp_path / "again" / "model.safetensors") == v.files["model.safetensors"].size


def test_a_wrong_location_is_only_a_wrong_hint(lineage: Path, tmp_path: Path) -> None:
    with Repo.open(lineage) as repo:
        wrong = {k: encode(0, 4096, bases) for k, (_, _, bases) in _locations(repo).items()}
        with repo.store.write() as txn:  # every record "lies" at offset 0, one page long
            for k, v in wrong.items():
                txn.put(TABLE, k, v)
    with Repo.open(lineage) as repo:
        repo.export("m@2", tmp_path / "out")  # blake3-checked against the version
        repo.export("m@1", tmp_path / "out1")
        assert repo.locations.pages_asked > 0
        assert repo.maintenance().fsck().ok


def test_gc_forgets_the_locations_of_chunks_it_deletes(lineage: Path, tmp_path: Path) -> None:
    with Repo.open(lineage) as repo:
        small_checkpoint(tmp_path / "other", 7)
        repo.import_dir(tmp_path / "other", "x")
        before = _locations(repo)
        repo.history().remove("x")
        got = repo.maintenance().gc()
        assert got["chunks_removed"] > 0
        with repo.store.read() as txn:
            left = {bytes(k) for k in txn.keys("chunks")}
        assert set(_locations(repo)) == left and len(left) < len(before)


def test_a_lazy_store_locates_the_chunks_it_keeps(lineage: Path, tmp_path: Path) -> None:
    dest = tmp_path / "lazy"
    repo = Repo.init(dest)
    src = StoreChunkSource(lineage, name="origin")
    copy_metadata(src.store, repo.store)
    repo.set_lazy_remote("origin")
    repo.attach_chunk_source(src)
    with repo:
        assert _locations(repo) == {}  # the origin's offsets are not copied: they are its own
        repo.export("m@2", tmp_path / "out")
        assert repo.flush_fetched(10)
        _assert_all_located(repo, dest)


def test_length_bases_and_presence_come_from_locations_or_records_alike(lineage: Path) -> None:
    with Repo.open(lineage) as repo:
        with repo.store.read() as txn:
            keys = [bytes(k) for k in txn.keys("chunks")]
            from_locs = {k: chunk_stat(txn, k) for k in keys}
            assert all(chunk_exists(txn, k) for k in keys)
            assert chunk_stat(txn, b"\x00" * 32) is None and not chunk_exists(txn, b"\x00" * 32)
        for k, st in from_locs.items():
            rec = repo.chunk_record(k)
            assert st == (len(rec.to_bytes()), tuple(b for b, _ in rec.bases))
        du = repo.maintenance().du()
        assert repo.chunk_count() == len(keys)
        with repo.store.write() as txn:  # the same answers from the records themselves
            for k in keys:
                txn.delete(TABLE, k)
        with repo.store.read() as txn:
            assert {k: chunk_stat(txn, k) for k in keys} == from_locs
            assert all(chunk_exists(txn, k) for k in keys)
        assert repo.maintenance().du() == du
