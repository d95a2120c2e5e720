"""The repo's collaborators through the facade: the reachability walk, chunk keys, readers.

The walk is shared by fsck, gc, du and parent inference, so its rules are pinned here once:
bases are reached only when asked, a dangling reference is reported with where it was found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelfs.errors import NotFound
from modelfs.repo import Repo, StoreSettings
from modelfs.repo.reachability import Reachability
from modelfs.store import MemoryStore

SMALL = StoreSettings(chunk_elems=64, blob_chunk_bytes=200, max_chain=8)


def _checkpoint(d: Path, seed: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((40, 30)) * 0.05).astype(np.float32)
    w[np.random.default_rng(seed).random(w.shape) < 0.2] += np.float32(1e-3)
    d.mkdir(parents=True, exist_ok=True)
    save_file({"w": w, "b": np.arange(50, dtype=np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_bytes(b"{}")
    return d


@pytest.fixture
def lineage(tmp_path: Path) -> Repo:
    repo = Repo.init(store=MemoryStore(), settings=SMALL)
    repo.import_dir(_checkpoint(tmp_path / "a", 0), "m")
    repo.import_dir(_checkpoint(tmp_path / "b", 1), "m")
    return repo


def _listed(repo: Repo, ref: str) -> set[bytes]:
    v = repo.resolve(ref)
    return {k for e in v.files.values() for t in repo.file_record(e).tensors() for k in t.chunks}


def test_chunk_keys_are_the_chunks_the_file_records_list(lineage: Repo) -> None:
    a, b = lineage.resolve("m@1"), lineage.resolve("m@2")
    assert lineage.chunk_keys(a) == _listed(lineage, "m@1")
    assert lineage.chunk_keys(a, b) == _listed(lineage, "m@1") | _listed(lineage, "m@2")
    assert lineage.chunk_keys(b) - lineage.chunk_keys(a)  # the fine-tune changed some chunks


def test_the_walk_reaches_delta_bases_only_when_asked(lineage: Repo) -> None:
    b = lineage.resolve("m@2")
    deltas = [k for k in lineage.chunk_keys(b) if lineage.chunk_record(k).bases]
    assert deltas, "the child should be stored as deltas against its parent"
    with lineage.read_txn() as txn:
        flat, deep = Reachability(txn, bases=False), Reachability(txn)
        flat.add(b.ref, b.files)
        deep.add(b.ref, b.files)
    assert flat.chunks == lineage.chunk_keys(b)
    assert deep.chunks > flat.chunks  # the parent's chunks the deltas decode against
    assert not deep.missing and not flat.missing


def test_the_walk_reports_a_dangling_file_record_with_its_version(lineage: Repo) -> None:
    b = lineage.resolve("m@2")
    key = b.files["model.safetensors"].key
    with lineage.store.write() as txn:
        txn.delete("files", key)
    with lineage.read_txn() as txn:
        reach = Reachability(txn)
        reach.add(b.ref, b.files)
    assert reach.missing == ["m@2: file record for model.safetensors is missing"]
    with pytest.raises(NotFound, match=key.hex()):
        lineage.chunk_keys(b)


def test_reader_of_a_record_reads_as_open_file(lineage: Repo) -> None:
    entry = lineage.resolve("m@2").files["model.safetensors"]
    rec = lineage.file_record(entry)
    assert lineage.reader(rec).read(0, rec.size) == lineage.open_file(entry).read(0, rec.size)
    assert lineage.reader(rec).read(0, rec.size) == b"".join(lineage.iter_file(entry))


def test_drafts_and_maintenance_are_built_once_with_the_repo(lineage: Repo) -> None:
    assert lineage.drafts() is lineage.drafts()
    assert lineage.maintenance() is lineage.maintenance()
    assert lineage.maintenance().fsck().ok


def test_tensor_end_is_where_the_tensor_holding_an_offset_ends(lineage: Repo) -> None:
    rec = lineage.file_record(lineage.resolve("m@2").files["model.safetensors"])
    r = lineage.reader(rec)
    tensors = list(rec.tensors())
    assert {t.name for t in tensors} == {"w", "b"}
    for t in tensors:
        end = t.offset + t.nbytes
        assert r.tensor_end(t.offset) == r.tensor_end(end - 1) == end
    assert r.tensor_end(0) is None  # the header is inline bytes
    assert r.tensor_end(rec.size) is None and r.tensor_end(-1) is None
