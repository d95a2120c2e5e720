"""The repo on small synthetic checkpoints: delta chains, ranged reads, decode counts, fsck, gc.

Small chunk settings make a few-KB file span dozens of chunks, so chunk boundaries,
delta chains and the decode-only-what-you-touch rule are all exercised in milliseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.errors import Conflict, InvalidName, NotFound
from modelfs.repo import Repo, StoreSettings
from modelfs.repo.chunks import ChunkRecord, chunk_key
from modelfs.repo.files import FileRecord, StoredTensor
from modelfs.store import MemoryStore

SMALL = StoreSettings(chunk_elems=64, blob_chunk_bytes=200, max_chain=8)


def write_checkpoint(d: Path, weights: dict[str, np.ndarray], extra: bytes = b'{"model_type": "toy"}') -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "np"})
    (d / "config.json").write_bytes(extra)
    return d


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.0.weight": (rng.standard_normal((40, 30)) * 0.05).astype(np.float32),
        "layer.0.bias": (rng.standard_normal(30) * 0.01).astype(np.float32),
        "layer.1.weight": (rng.standard_normal((33, 7)) * 0.05).astype(np.float16),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "ids": np.arange(101, dtype=np.int64),
    }


def step(w: dict[str, np.ndarray], seed: int, frac: float = 0.3) -> dict[str, np.ndarray]:
    """A fine-tuning-like update: a fraction of float elements move a little."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, a in w.items():
        a = a.copy()
        if a.dtype.kind == "f" and a.size:
            mask = rng.random(a.shape) < frac
            a[mask] += (rng.standard_normal(int(mask.sum())) * 1e-3).astype(a.dtype)
        out[k] = a
    return out


def chunk_records(repo: Repo) -> dict[bytes, ChunkRecord]:
    with repo.store.read() as txn:
        return {bytes(k): ChunkRecord.from_bytes(bytes(v)) for k, v in txn.items("chunks")}


def closure(repo: Repo, keys: list[bytes]) -> set[bytes]:
    """The chunks and, recursively, their delta bases: everything a decode of `keys` needs."""
    recs = chunk_records(repo)
    seen: set[bytes] = set()
    stack = list(keys)
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack += [b for b, _ in recs[k].bases]
    return seen


def assert_export_equals(repo: Repo, ref: str, src: Path, dest: Path,
                         blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    repo.export(ref, dest)
    assert blake3_of_dir(dest) == blake3_of_dir(src)


# -- delta chains --------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_delta_chains_are_capped_and_every_version_stays_byte_exact(
        tmp_path: Path, k: int, blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    settings = StoreSettings(chunk_elems=64, blob_chunk_bytes=200, max_chain=k)
    repo = Repo.init(tmp_path / "store", settings=settings)
    try:
        w = toy_weights()
        dirs = []
        for i in range(3 * k + 2):  # long enough to hit the cap more than once
            dirs.append(write_checkpoint(tmp_path / f"v{i}", w))
            repo.import_dir(dirs[-1], "m", message=f"step {i}")
            w = step(w, seed=i + 1)
        recs = chunk_records(repo)
        depths = [r.depth for r in recs.values()]
        assert max(depths) == k, "the chain should reach the cap, and never pass it"
        assert any(r.depth == 0 and r.codec in ("planes", "zstd", "raw") for r in recs.values())
        for key, r in recs.items():  # a record's depth is what its bases say
            if r.bases:
                assert r.depth == 1 + max(recs[b].depth for b, _ in r.bases), key.hex()
            else:
                assert r.depth == 0
        # the cap restarts chains: the newest version still decodes within k levels
        assert repo.settings.max_chain == k
        for i, d in enumerate(dirs):
            assert_export_equals(repo, f"m@{i + 1}", d, tmp_path / f"out{i}", blake3_of_dir)
        assert repo.maintenance().fsck().ok
    finally:
        repo.close()


def test_settings_persist_with_the_store(tmp_path: Path) -> None:
    Repo.init(tmp_path / "s", settings=StoreSettings(chunk_elems=128, max_chain=3)).close()
    with Repo.open(tmp_path / "s") as repo:
        assert repo.settings.chunk_elems == 128 and repo.settings.max_chain == 3
    with pytest.raises(Conflict):
        Repo.init(tmp_path / "s")


def test_a_child_is_stored_as_deltas_and_identical_tensors_cost_nothing(tmp_path: Path) -> None:
    repo = Repo.init(store=MemoryStore(), settings=StoreSettings(chunk_elems=4096))
    rng = np.random.default_rng(0)
    w = {"w": (rng.standard_normal((300, 200)) * 0.05).astype(np.float32),
         "b": (rng.standard_normal(200) * 0.01).astype(np.float32)}
    repo.import_dir(write_checkpoint(tmp_path / "a", w), "base")
    before = set(chunk_records(repo))
    child = step(w, 1, frac=0.05)
    child["b"] = w["b"]  # unchanged tensor
    repo.import_dir(write_checkpoint(tmp_path / "b", child), "child", parents=["base"], how="finetune")
    new = {k: r for k, r in chunk_records(repo).items() if k not in before}
    assert len(new) == 15 and all(r.bases and r.depth == 1 for r in new.values())
    rec = repo.file_record(repo.resolve("child").files["model.safetensors"])
    base_rec = repo.file_record(repo.resolve("base").files["model.safetensors"])
    assert next(t for t in rec.tensors() if t.name == "b").chunks == \
        next(t for t in base_rec.tensors() if t.name == "b").chunks  # same bytes, same chunks
    du = repo.maintenance().du()
    assert du["models"]["child"]["stored"] < 0.3 * du["models"]["base"]["stored"]


# -- ranged reads -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repo, dict[str, bytes], dict[str, object]]]:
    """Two versions (the second a delta) of a multi-tensor file plus a multi-chunk blob."""
    root = tmp_path_factory.mktemp("ranged")
    repo = Repo.init(store=MemoryStore(), settings=SMALL)
    w = toy_weights(7)
    d1 = write_checkpoint(root / "v1", w, extra=bytes(range(256)) * 5)
    repo.import_dir(d1, "m")
    d2 = write_checkpoint(root / "v2", step(w, 8), extra=bytes(range(256)) * 4 + b"tail")
    v2 = repo.import_dir(d2, "m")
    files = {f"{v}:{p.name}": p.read_bytes() for v, d in (("m@1", d1), ("m@2", d2)) for p in d.iterdir()}
    entries = {f"{ref}:{path}": e for ref in ("m@1", "m@2") for path, e in repo.resolve(ref).files.items()}
    assert v2.number == 2
    yield repo, files, entries


@given(which=st.sampled_from(["m@1:model.safetensors", "m@2:model.safetensors", "m@1:config.json",
                              "m@2:config.json"]),
       offset=st.integers(0, 20_000), size=st.one_of(st.integers(0, 600), st.integers(0, 40_000)))
def test_read_of_any_range_equals_the_file_slice(
        ranged: tuple[Repo, dict[str, bytes], dict[str, object]], which: str, offset: int, size: int) -> None:
    repo, files, entries = ranged
    data = files[which]
    offset = offset % (len(data) + 20)  # in range mostly, past the end sometimes
    reader = repo.open_file(entries[which])  # type: ignore[arg-type]
    assert reader.size == len(data)
    got = reader.read(offset, size)
    assert got == data[offset:offset + size]
    cached = reader.read_cached(offset, size)  # everything was just decoded
    assert cached is None or cached == got
    reader.prefetch(offset, size)
    assert reader.read_cached(offset, size) == got


def test_read_of_every_byte_one_at_a_time_across_chunk_boundaries(
        ranged: tuple[Repo, dict[str, bytes], dict[str, object]]) -> None:
    repo, files, entries = ranged
    data = files["m@2:model.safetensors"]
    reader = repo.open_file(entries["m@2:model.safetensors"])  # type: ignore[arg-type]
    assert b"".join(reader.read(i, 1) for i in range(len(data))) == data
    assert b"".join(reader.read(i, 97) for i in range(0, len(data), 97)) == data


def test_reading_one_tensor_decodes_only_its_chunks_and_their_bases(tmp_path: Path) -> None:
    store = MemoryStore()
    repo = Repo.init(store=store, settings=SMALL)
    w = toy_weights(3)
    repo.import_dir(write_checkpoint(tmp_path / "a", w), "m")
    repo.import_dir(write_checkpoint(tmp_path / "b", step(w, 4)), "m")
    fresh = Repo(store)  # a cold cache
    entry = fresh.resolve("m@2").files["model.safetensors"]
    reader = fresh.open_file(entry)
    tensors = {t.name: t for t in reader.record.tensors()}
    total_chunks = sum(len(t.chunks) for t in tensors.values())
    for name in ("layer.0.weight", "layer.1.weight", "ids"):
        t = tensors[name]
        need = closure(fresh, list(t.chunks))
        before = fresh.counters.chunks_decoded
        assert reader.read(t.offset, t.nbytes) == reader.read(t.offset, t.nbytes)
        decoded = fresh.counters.chunks_decoded - before
        cached = sum(1 for k in need if fresh.cache.peek(k) is not None)
        assert decoded <= len(need) and cached == len(need)
    # a fresh cache, one byte in the middle of one tensor: one chunk and its own bases
    fresh = Repo(store)
    t = tensors["layer.0.weight"]
    assert len(t.chunks) > 3 and total_chunks > len(t.chunks)
    mid = t.offset + t.chunk_bytes * 2 + 5
    fresh.open_file(entry).read(mid, 1)
    assert fresh.counters.chunks_decoded == len(closure(fresh, [t.chunks[2]]))
    # the whole tensor on a cold cache: exactly its chunks and their bases, nothing else
    fresh = Repo(store)
    fresh.open_file(entry).read(t.offset, t.nbytes)
    assert fresh.counters.chunks_decoded == len(closure(fresh, list(t.chunks)))
    assert fresh.counters.bytes_decoded == sum(chunk_records(fresh)[k].length for k in closure(fresh, list(t.chunks)))


# -- fsck --------------------------------------------------------------------------------------------------
@pytest.fixture
def lineage_repo(tmp_path: Path) -> Iterator[tuple[Repo, list[Path]]]:
    repo = Repo.init(tmp_path / "store", settings=SMALL)
    w = toy_weights(11)
    dirs = []
    for i in range(3):
        dirs.append(write_checkpoint(tmp_path / f"src{i}", w, extra=b"config " * (50 + i)))
        repo.import_dir(dirs[-1], "m" if i < 2 else "child", parents=["m@1"] if i == 2 else None)
        w = step(w, 20 + i)
    try:
        yield repo, dirs
    finally:
        repo.close()


def test_fsck_is_clean_on_a_healthy_store(lineage_repo: tuple[Repo, list[Path]]) -> None:
    repo, _ = lineage_repo
    report = repo.maintenance().fsck()
    assert report.ok, report.errors
    assert report.versions_checked == 3
    assert report.files_checked == 6
    assert report.chunks_checked == len(chunk_records(repo))
    assert report.unreferenced_chunks == 0 and report.unreferenced_files == 0
    assert report.to_json()["ok"] is True


def _corrupt(repo: Repo, key: bytes, how: str) -> None:
    with repo.store.write() as txn:
        raw = bytearray(txn.get("chunks", key) or b"")
        rec = ChunkRecord.from_bytes(bytes(raw))
        start = len(raw) - len(rec.payload)
        if how == "flip_first":
            raw[start] ^= 0xFF
        elif how == "flip_middle":
            raw[start + len(rec.payload) // 2] ^= 0x01
        elif how == "flip_last":  # (in a plane payload the last bytes can be an ignored size field)
            raw[-1] ^= 0x80
        elif how == "truncate":
            del raw[start + len(rec.payload) // 2:]
        txn.put("chunks", key, bytes(raw))


@pytest.mark.parametrize(("codec", "how"), [
    (codec, how) for codec in ("delta", "planes", "blob") for how in ("flip_first", "flip_middle", "truncate")
] + [("blob", "flip_last")])
def test_fsck_reports_a_corrupted_chunk(lineage_repo: tuple[Repo, list[Path]], codec: str, how: str) -> None:
    repo, _ = lineage_repo
    recs = chunk_records(repo)
    if codec == "delta":
        key = next(k for k, r in recs.items() if r.bases and r.length > 64)
    elif codec == "planes":
        key = next(k for k, r in recs.items() if r.codec == "planes" and r.length > 64)
    else:
        key = next(k for k, r in recs.items() if r.dtype.name == "U8" and r.length > 64)
    _corrupt(repo, key, how)
    report = Repo(repo.store, repo.path).maintenance().fsck()  # a cold cache: nothing decoded yet
    assert not report.ok
    assert any(key.hex() in e for e in report.errors), report.errors
    assert any(e.startswith("file ") for e in report.errors)  # the files using it fail their blake3


def test_fsck_reports_a_missing_chunk_and_gc_refuses_to_run(lineage_repo: tuple[Repo, list[Path]]) -> None:
    from modelfs.errors import ModelfsError

    repo, _ = lineage_repo
    rec = repo.file_record(repo.resolve("m@1").files["model.safetensors"])
    key = next(rec.tensors()).chunks[0]
    with repo.store.write() as txn:
        txn.delete("chunks", key)
    report = Repo(repo.store, repo.path).maintenance().fsck()
    assert not report.ok and any("missing" in e and key.hex() in e for e in report.errors)
    with pytest.raises(ModelfsError, match="dangling"):
        repo.maintenance().gc()


# -- gc -------------------------------------------------------------------------------------------------------
def test_gc_removes_orphans_and_keeps_everything_reachable(
        lineage_repo: tuple[Repo, list[Path]], tmp_path: Path,
        blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    repo, dirs = lineage_repo
    reachable = set(chunk_records(repo))
    with repo.store.read() as txn:
        files_before = {bytes(k) for k in txn.keys("files")}
    # orphans as an interrupted import leaves them: chunk records (one a delta on a live chunk)
    # and a file record that no version lists
    live = next(iter(reachable))
    orphans = []
    with repo.store.write() as txn:
        for i in range(5):
            data = struct.pack("<I", i) * 100
            key = chunk_key(data)
            bases = ((live, chunk_records(repo)[live].dtype),) if i == 0 else ()
            from modelfs.dtypes import DTYPES

            txn.put("chunks", key, ChunkRecord("raw", DTYPES["U8"], 1 if bases else 0, len(data), bases,
                                               memoryview(data)).to_bytes())
            orphans.append(key)
        fkey = blake3.blake3(b"orphan file").digest()
        txn.put("files", fkey, FileRecord("blob", 11, fkey, (StoredTensor("", DTYPES["U8"], (11,), 0, 11, 200,
                                                                            (orphans[1],)),)).to_bytes())
        txn.put("sketch", b"f" + fkey, b"the orphan's sketch")  # goes with its file record
    with repo.store.read() as txn:
        sketches_before = {bytes(k) for k in txn.keys("sketch")}
    report = repo.maintenance().fsck()
    assert report.ok and report.unreferenced_chunks == 5 and report.unreferenced_files == 1
    dry = repo.maintenance().gc(dry_run=True)
    assert dry["chunks_removed"] == 5 and dry["files_removed"] == 1
    assert len(chunk_records(repo)) == len(reachable) + 5  # a dry run deletes nothing
    r = repo.maintenance().gc()
    assert r == dry and r["bytes_freed"] > 5 * 400
    assert set(chunk_records(repo)) == reachable
    with repo.store.read() as txn:
        assert {bytes(k) for k in txn.keys("files")} == files_before
        assert {bytes(k) for k in txn.keys("sketch")} == sketches_before - {b"f" + fkey}
    assert repo.maintenance().gc()["chunks_removed"] == 0
    report = repo.maintenance().fsck()
    assert report.ok and report.unreferenced_chunks == 0
    for i, ref in enumerate(["m@1", "m@2", "child@1"]):
        assert_export_equals(repo, ref, dirs[i], tmp_path / f"out{i}", blake3_of_dir)


# -- facade errors -------------------------------------------------------------------------------------------------
def test_resolve_refs_and_errors(lineage_repo: tuple[Repo, list[Path]]) -> None:
    repo, _ = lineage_repo
    v1, v2 = repo.versions("m")
    assert repo.resolve("m").id == v2.id == repo.resolve("m@2").id
    with pytest.raises(InvalidName, match="start at 1"):  # m@0 was the head once; the mount never had it
        repo.resolve("m@0")
    assert repo.resolve("m@-1").id == v1.id == repo.resolve(v1.id).id == repo.resolve(v1.id[:8]).id
    assert repo.resolve("child").derived_from == (v1.id,)
    assert [c.id for c in repo.children(v1.id)] and {c.ref for c in repo.children(v1.id)} == {"m@2", "child@1"}
    for bad, exc in (("m@9", NotFound), ("nope", NotFound), ("nope@1", NotFound), ("m@x", InvalidName),
                     ("", InvalidName), ("m\0", InvalidName)):
        with pytest.raises(exc):
            repo.resolve(bad)


def test_export_refuses_a_non_empty_target_and_writes_nothing(lineage_repo: tuple[Repo, list[Path]],
                                                              tmp_path: Path) -> None:
    repo, _ = lineage_repo
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(Conflict):
        repo.export("m", target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(Conflict):
        repo.export("m", f)


def test_bad_names_change_nothing(lineage_repo: tuple[Repo, list[Path]]) -> None:
    repo, dirs = lineage_repo
    before = [v.id for v in repo.all_versions()]
    for bad in ("", "a/b", "..", "a..b", "x\0y", "m@2", "/abs"):
        with pytest.raises(InvalidName):
            repo.import_dir(dirs[0], bad)
    with pytest.raises(NotFound):
        repo.import_dir(dirs[0], "new", parents=["no-such-model"])
    with pytest.raises(NotFound):
        repo.import_dir(dirs[0].parent / "missing", "new")
    assert [v.id for v in repo.all_versions()] == before


def test_naming_the_previous_version_as_parent_records_one_versioning_edge(tmp_path: Path) -> None:
    repo = Repo.init(store=MemoryStore(), settings=StoreSettings(chunk_elems=4096))
    w = {"w": np.arange(4096, dtype=np.float32)}
    v1 = repo.import_dir(write_checkpoint(tmp_path / "a", w), "m")
    v2 = repo.import_dir(write_checkpoint(tmp_path / "b", step(w, 2)), "m", parents=["m@1"])
    assert v2.previous == v1.id and v2.derived_from == () and v2.parents == (v1.id,)
