"""The real all-MiniLM-L6-v2 checkpoint and children made from it by real CPU training.

Import the lineage, export every version and compare blake3 with the originals; check
that deltas make children cheap, that casts and re-shardings are almost free, that parent
inference finds the parent, and that a ranged read decodes only what it touches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfs.repo import Repo
from modelfs.repo.chunks import ChunkRecord


def closure(repo: Repo, keys: list[bytes]) -> set[bytes]:
    seen: set[bytes] = set()
    stack = list(keys)
    with repo.store.read() as txn:
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack += [b for b, _ in ChunkRecord.from_bytes(bytes(txn.get("chunks", k))).bases]  # type: ignore[arg-type]
    return seen


def test_minilm_import_export_is_byte_exact(repo: Repo, minilm_dir: Path, tmp_path: Path,
                                            blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    v = repo.import_dir(minilm_dir, "minilm", how="import", message="shipped weights")
    assert v.ref == "minilm@1" and v.parents == ()
    want = blake3_of_dir(minilm_dir)
    assert set(v.files) == set(want)  # subdirectories (1_Pooling/) included
    assert {p: e.blake3_hex for p, e in v.files.items()} == want
    assert v.files["model.safetensors"].format == "safetensors"
    assert v.files["tokenizer.json"].format == "blob"
    repo.export("minilm", tmp_path / "out")
    assert blake3_of_dir(tmp_path / "out") == want
    rec = repo.file_record(v.files["model.safetensors"])
    assert len(list(rec.tensors())) == 104
    # importing the same bytes again as a new model costs (almost) nothing
    stored = repo.maintenance().du()["total"]["stored"]
    repo.import_dir(minilm_dir, "copy", parents=["minilm"])
    assert repo.maintenance().du()["total"]["stored"] == stored
    assert repo.maintenance().fsck().ok


# -- the trained lineage -------------------------------------------------------------------------------
LINEAGE = [  # (model, attribute of TrainedLineage, parents, how)
    ("minilm", "base", [], "import"),
    ("ft", "ft", ["minilm"], "finetune"),
    ("sibling", "ft_sibling", ["minilm"], "finetune"),
    ("ft", "ft2", [], "finetune"),  # version 2 of ft: a versioning edge to ft@1
    ("fp16", "fp16", ["ft@1"], "cast"),
    ("sharded", "sharded", ["ft@1"], "reshard"),
    ("partial", "partial", ["ft@1"], "finetune"),
]


@pytest.fixture(scope="module")
def lineage(trained: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repo, dict[str, Path]]]:
    repo = Repo.init(tmp_path_factory.mktemp("lineage") / "store")
    sources: dict[str, Path] = {}
    for model, attr, parents, how in LINEAGE:
        v = repo.import_dir(getattr(trained, attr), model, parents=parents, how=how)
        sources[v.ref] = getattr(trained, attr)
    try:
        yield repo, sources
    finally:
        repo.close()


@pytest.mark.slow
def test_every_version_exports_blake3_identical(lineage: tuple[Repo, dict[str, Path]], tmp_path: Path,
                                                blake3_of_dir: Callable[[Path], dict[str, str]]) -> None:
    repo, sources = lineage
    assert sorted(sources) == sorted(v.ref for v in repo.all_versions())
    for ref, src in sources.items():
        out = tmp_path / ref.replace("@", "_")
        repo.export(ref, out)
        assert blake3_of_dir(out) == blake3_of_dir(src), ref


@pytest.mark.slow
def test_lineage_edges(lineage: tuple[Repo, dict[str, Path]]) -> None:
    repo, _ = lineage
    base, ft1, ft2 = repo.resolve("minilm@1"), repo.resolve("ft@1"), repo.resolve("ft@2")
    assert ft1.derived_from == (base.id,) and ft1.how == "finetune"
    assert ft2.previous == ft1.id and ft2.derived_from == ()
    assert repo.resolve("fp16").derived_from == (ft1.id,)
    assert {c.ref for c in repo.children(ft1.id)} == {"ft@2", "fp16@1", "sharded@1", "partial@1"}
    assert repo.common_ancestor(repo.resolve("sibling").id, ft2.id).id == base.id  # type: ignore[union-attr]


@pytest.mark.slow
def test_children_cost_far_less_than_their_parents(lineage: tuple[Repo, dict[str, Path]]) -> None:
    repo, _ = lineage
    du = repo.maintenance().du()
    m = du["models"]
    # a full fine-tune changes ~every weight a little: still well under the size of a copy
    assert m["sibling"]["stored"] < 0.6 * m["sibling"]["logical"]
    assert m["ft"]["stored"] < 0.6 * m["ft"]["logical"]  # two versions, each a delta
    assert m["sibling"]["stored"] < 0.6 * m["minilm"]["stored"]
    # a partial fine-tune (one layer + biases) costs a fraction of that
    assert m["partial"]["stored"] < 0.15 * m["partial"]["logical"]
    # an fp16 cast of a stored fp32 parent is predicted exactly: < 1% of its size
    assert m["fp16"]["stored"] < 0.01 * m["fp16"]["logical"]
    # the same weights cut into shards: identical tensors, only headers and the index are new
    assert m["sharded"]["stored"] < 0.01 * m["sharded"]["logical"]
    total = du["total"]
    assert total["versions"] == len(LINEAGE)
    assert total["ratio"] > 3.0, total  # 7 versions, ~590 MB as full copies
    assert total["store_file_bytes"] >= total["stored"]


@pytest.mark.slow
def test_sharded_checkpoint_with_index_roundtrips(lineage: tuple[Repo, dict[str, Path]], trained: object) -> None:
    repo, _ = lineage
    v = repo.resolve("sharded")
    shards = sorted(p for p in v.files if p.endswith(".safetensors"))
    assert len(shards) >= 3
    assert all(v.files[p].format == "safetensors" for p in shards)
    assert v.files["model.safetensors.index.json"].format == "blob"
    index = json.loads(repo.open_file(v.files["model.safetensors.index.json"]).read(0, 1 << 20))
    names = {t.name for p in shards for t in repo.file_record(v.files[p]).tensors()}
    assert names == set(index["weight_map"])
    assert {index["weight_map"][n] for n in names} == set(shards)
    # every tensor of a shard is the same chunk list as in ft@1's single file (deduplicated)
    ft = repo.file_record(repo.resolve("ft@1").files["model.safetensors"])
    ft_chunks = {t.name: t.chunks for t in ft.tensors()}
    for p in shards:
        for t in repo.file_record(v.files[p]).tensors():
            assert t.chunks == ft_chunks[t.name]


@pytest.mark.slow
def test_reading_one_tensor_decodes_only_its_chunks_and_bases(lineage: tuple[Repo, dict[str, Path]]) -> None:
    repo, _ = lineage
    fresh = Repo(repo.store, repo.path)  # a cold cache on the same store
    entry = fresh.resolve("ft@2").files["model.safetensors"]
    reader = fresh.open_file(entry)
    tensors = {t.name: t for t in reader.record.tensors()}
    t = tensors["embeddings.word_embeddings.weight"]
    assert len(t.chunks) > 10
    need = closure(fresh, list(t.chunks))
    assert len(need) > len(t.chunks)  # ft@2 is a delta: its bases are decoded too
    reader.read(t.offset, t.nbytes)
    assert fresh.counters.chunks_decoded == len(need)
    all_chunks = closure(fresh, [k for x in tensors.values() for k in x.chunks])
    assert len(need) < len(all_chunks) / 2
    # a small tensor: one chunk and its base chain
    before = fresh.counters.chunks_decoded
    b = tensors["encoder.layer.3.attention.self.query.bias"]
    assert len(b.chunks) == 1
    reader.read(b.offset, b.nbytes)
    assert 1 <= fresh.counters.chunks_decoded - before <= len(closure(fresh, list(b.chunks)))
    assert fresh.counters.chunks_decoded - before <= 1 + repo.settings.max_chain


@pytest.mark.slow
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 91_000_000), size=st.sampled_from([0, 1, 7, 4096, 131072, 3_000_001]))
def test_read_range_of_a_real_delta_file_equals_the_file_slice(
        lineage: tuple[Repo, dict[str, Path]], offset: int, size: int) -> None:
    repo, sources = lineage
    v = repo.resolve("ft@2")
    path = sources["ft@2"] / "model.safetensors"
    with open(path, "rb") as f:
        f.seek(offset)
        want = f.read(size)
    assert repo.open_file(v.files["model.safetensors"]).read(offset, size) == want


@pytest.mark.slow
def test_fsck_is_clean_on_the_real_lineage(lineage: tuple[Repo, dict[str, Path]]) -> None:
    repo, _ = lineage
    report = repo.maintenance().fsck()
    assert report.ok, report.errors[:5]
    assert report.versions_checked == len(LINEAGE)
    assert report.unreferenced_chunks == 0


# -- parent inference ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_parent_inference_picks_the_model_it_was_trained_from(tmp_path: Path, trained: object) -> None:
    """ft2 was trained from ft: the store has its grandparent too, and ft's files say which."""
    with Repo.init(tmp_path / "store") as repo:
        repo.import_dir(trained.base, "minilm")  # type: ignore[attr-defined]
        ft = repo.import_dir(trained.ft, "ft", parents=["minilm"])  # type: ignore[attr-defined]
        v = repo.import_dir(trained.ft2, "ft2")  # type: ignore[attr-defined]
        assert repo.last_inferred_parent is not None and repo.last_inferred_parent.id == ft.id
        assert v.derived_from == (ft.id,)
        assert v.provenance["inferred_parent"] == "ft@1"
        # and the inferred parent is used for deltas: the child costs a fraction of a copy
        m = repo.maintenance().du()["models"]["ft2"]
        assert m["stored"] < 0.6 * m["logical"]
        # an explicit --no-infer gives a root
        v = repo.import_dir(trained.ft2, "ft2-root", infer_parent=False)  # type: ignore[attr-defined]
        assert v.parents == () and "inferred_parent" not in v.provenance


@pytest.mark.slow
def test_parent_inference_breaks_ties_by_the_smallest_delta(tmp_path: Path, trained: object) -> None:
    """partial = ft + one trained layer: its parent is ft, not the base, ft@2 or ft's sibling."""
    with Repo.init(tmp_path / "store") as repo:
        repo.import_dir(trained.base, "minilm")  # type: ignore[attr-defined]
        ft = repo.import_dir(trained.ft, "ft", parents=["minilm"])  # type: ignore[attr-defined]
        repo.import_dir(trained.ft2, "ft")  # type: ignore[attr-defined]
        repo.import_dir(trained.ft_sibling, "sibling", parents=["minilm"])  # type: ignore[attr-defined]
        repo.import_dir(trained.partial, "partial")  # type: ignore[attr-defined]
        assert repo.last_inferred_parent is not None
        assert repo.last_inferred_parent.ref == "ft@1", repo.last_inferred_parent.ref
        assert repo.resolve("partial").derived_from == (ft.id,)
