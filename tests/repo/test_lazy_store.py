"""A lazy store reading its missing chunks through a real ChunkSource (another local store).

The store is a copy of a full store's metadata (versions, file records); chunks come from the
full store on first read, are checked against their blake3, and are kept locally.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from modelfs.errors import CorruptData, NotFound
from modelfs.repo import ChunkRecord, Repo, StoreChunkSource, copy_metadata
from tests.conftest import fine_tune_store


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lazy-full")
    return fine_tune_store(tmp, tmp / "full")


def _lazy(full: Path, dest: Path, source: StoreChunkSource | None = None) -> tuple[Repo, StoreChunkSource]:
    """A lazy store of `full`'s metadata; its chunks through `source` (`full` by default)."""
    repo = Repo.init(dest)
    src = source or StoreChunkSource(full, name="origin")
    copy_metadata(src.store, repo.store)
    repo.set_lazy_remote("origin")
    repo.attach_chunk_source(src)
    return repo, src


def _origin(source: StoreChunkSource) -> Repo:
    """The full store, read through the source's own environment (LMDB opens one per process)."""
    return Repo(source.store)


def test_lazy_export_is_bit_exact_and_keeps_what_it_fetched(full: Path, tmp_path: Path) -> None:
    repo, source = _lazy(full, tmp_path / "lazy")
    with repo:
        assert repo.stored_size_of(repo.chunk_keys(repo.resolve("m@2"))) == 0  # nothing yet
        v = repo.export("m@2", tmp_path / "out")  # checks every file's blake3
        for path, e in v.files.items():
            assert blake3.blake3((tmp_path / "out" / path).read_bytes()).digest() == e.key
        # m@2's chunks are deltas on m@1's: the chain came down too, nothing else
        f = _origin(source)
        if True:
            need = set(f.chunk_keys(v))
            stack = list(need)
            while stack:
                for b, _ in f.chunk_record(stack.pop()).bases:
                    if b not in need:
                        need.add(b)
                        stack.append(b)
            assert any(f.chunk_record(k).bases for k in f.chunk_keys(v)), "expected deltas"
        assert source.counters.chunks == len(need)
        assert source.counters.bytes == _origin(source).stored_size_of(need)
        assert repo.flush_fetched(10)
        assert repo.stored_size_of(need) == source.counters.bytes  # kept locally
        calls = source.counters.requests
        repo.cache.attach(None)  # without the source: what was kept is enough
        repo.export("m@2", tmp_path / "again")
        assert source.counters.requests == calls
        assert repo.maintenance().fsck().ok


def test_one_tensor_fetches_only_its_chunks_in_few_calls(full: Path, tmp_path: Path) -> None:
    repo, source = _lazy(full, tmp_path / "lazy")
    with repo:
        v = repo.resolve("m@1")
        reader = repo.open_file(v.files["model.safetensors"])
        t = next(t for t in reader.record.tensors() if t.name == "layer3.weight")
        got = reader.read(t.offset, t.nbytes)
        f = _origin(source)
        want = f.reader(f.file_record(v.files["model.safetensors"])).read(t.offset, t.nbytes)
        assert got == want
        assert source.counters.chunks == len(set(t.chunks))  # m@1 is self-contained
        assert source.counters.requests == 1  # every chunk of the read in one call
        assert source.counters.bytes <= 2 * _origin(source).stored_size_of(set(t.chunks))


def test_a_delta_tensor_and_its_chain_come_in_one_call(full: Path, tmp_path: Path) -> None:
    repo, source = _lazy(full, tmp_path / "lazy")
    with repo:
        v = repo.resolve("m@2")
        reader = repo.open_file(v.files["model.safetensors"])
        t = next(t for t in reader.record.tensors() if t.name == "layer2.weight")
        reader.read(t.offset, t.nbytes)
        f = _origin(source)
        bases = {b for k in t.chunks for b, _ in f.chunk_record(k).bases}
        assert bases, "expected m@2's chunks to be deltas on m@1's"
        assert source.counters.requests == 1  # the source knows the chains: one call
        assert source.counters.chunks == len(set(t.chunks) | bases)


def in_threads(call: Callable[[], bytes], n: int = 4) -> tuple[list[bytes], list[BaseException]]:
    """``call`` in ``n`` threads at once: what they returned and what they raised."""
    out: list[bytes] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            out.append(call())
        except BaseException as e:  # noqa: BLE001  the caller checks them
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out, errors


def test_concurrent_readers_fetch_each_chunk_once(full: Path, tmp_path: Path) -> None:
    repo, source = _lazy(full, tmp_path / "lazy")
    with repo:
        v = repo.resolve("m@2")
        reader = repo.open_file(v.files["model.safetensors"])
        out, errors = in_threads(lambda: reader.read(0, reader.size))
        assert not errors
        assert len(set(out)) == 1 and blake3.blake3(out[0]).digest() == v.files["model.safetensors"].key
        assert repo.flush_fetched(10)
        assert source.counters.chunks == len(set(source_keys(repo)))  # each once


def source_keys(repo: Repo) -> list[bytes]:
    with repo.read_txn() as txn:
        return [bytes(k) for k in txn.keys("chunks")]


def test_a_corrupted_record_is_refused_and_not_kept(full: Path, tmp_path: Path) -> None:
    # the source: a copy of the full store with one chunk's payload damaged
    good = StoreChunkSource(full, name="origin")
    with Repo.init(tmp_path / "bad") as bad:
        copy_metadata(good.store, bad.store, skip=())
        v = bad.resolve("m@1")
        t = next(iter(bad.file_record(v.files["model.safetensors"]).tensors()))
        key = t.chunks[0]
        rec = bad.chunk_record(key)
        payload = bytearray(rec.payload)
        payload[len(payload) // 2] ^= 0xFF
        damaged = ChunkRecord(rec.codec, rec.dtype, rec.depth, rec.length, rec.bases,
                              memoryview(bytes(payload))).to_bytes()
        with bad.store.write() as txn:
            txn.put("chunks", key, damaged)
    repo, _ = _lazy(full, tmp_path / "lazy", StoreChunkSource(tmp_path / "bad", name="origin"))
    with repo:
        reader = repo.open_file(repo.resolve("m@1").files["model.safetensors"])
        with pytest.raises(CorruptData, match=f"{key.hex()}.*remote origin"):
            reader.read(t.offset, 4096)
        repo.flush_fetched(10)
        with repo.read_txn() as txn:
            assert txn.get("chunks", key) is None  # nothing wrong was kept
        # the remote is repaired: the next read fetches it again and gets the right bytes
        repo.attach_chunk_source(good)
        f = _origin(good)
        want = f.reader(f.file_record(v.files["model.safetensors"])).read(t.offset, 4096)
        assert reader.read(t.offset, 4096) == want


def test_a_chunk_the_remote_lacks_is_not_found_naming_it(full: Path, tmp_path: Path) -> None:
    empty = Repo.init(tmp_path / "empty")
    empty.close()
    repo, _ = _lazy(full, tmp_path / "lazy")  # the metadata from the full store
    with repo:
        repo.attach_chunk_source(StoreChunkSource(tmp_path / "empty", name="origin"))
        reader = repo.open_file(repo.resolve("m@1").files["model.safetensors"])
        with pytest.raises(NotFound, match="missing from the store and from remote origin"):
            reader.read(0, reader.size)


def test_fsck_and_gc_on_a_lazy_store(full: Path, tmp_path: Path) -> None:
    repo, source = _lazy(full, tmp_path / "lazy")
    with repo:
        v = repo.resolve("m@1")
        reader = repo.open_file(v.files["model.safetensors"])
        t = next(iter(reader.record.tensors()))
        reader.read(t.offset, t.nbytes)  # one tensor fetched
        repo.flush_fetched(10)
        calls = source.counters.requests
        report = repo.maintenance().fsck()
        assert report.ok, report.errors
        assert report.lazy_remote == "origin"
        assert report.not_fetched_chunks > 0 and report.not_fetched_files >= 1
        assert report.chunks_checked == len(set(t.chunks))  # the fetched ones are checked
        assert source.counters.requests == calls  # fsck fetched nothing
        r = repo.maintenance().gc()
        assert r["chunks_removed"] == 0
    # the same store marked full: the absent chunks are errors again
    with Repo.open(tmp_path / "lazy") as again:
        again.set_lazy_remote(None)
        report = again.maintenance().fsck()
        assert not report.ok and any("is missing" in e for e in report.errors)


def test_readers_waiting_on_a_failed_fetch_get_the_remote_error(full: Path, tmp_path: Path) -> None:
    """Four readers of one chunk while the remote cannot be reached: each gets RemoteUnavailable
    (a reader that waited for another's failed fetch asks again), none a 'missing' error."""
    import time

    from modelfs.errors import RemoteUnavailable
    from modelfs.repo.chunksource import DeferredSource

    def unreachable() -> StoreChunkSource:
        time.sleep(0.3)  # the time a connection attempt takes, so the readers overlap
        return StoreChunkSource(tmp_path / "gone", name="origin")

    repo, _ = _lazy(full, tmp_path / "lazy")
    with repo:
        repo.attach_chunk_source(DeferredSource("origin", unreachable))
        reader = repo.open_file(repo.resolve("m@1").files["model.safetensors"])
        t = next(iter(reader.record.tensors()))
        _, errors = in_threads(lambda: reader.read(t.offset, 4096))
        assert len(errors) == 4 and all(isinstance(e, RemoteUnavailable) for e in errors), errors
        assert all("origin" in str(e) for e in errors)
