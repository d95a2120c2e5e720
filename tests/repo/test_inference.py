"""Lineage inference from the weights: sketches, distances, merges, renamed heads, old stores.

The fast tests use small synthetic lineages (a base, fine-tunes that are small independent
perturbations of it, casts, averages); the slow one imports the real MiniLM lineage of
tests/conftest.py, plus a real weight-average merge and a real task-head fine-tune, with no
--parent, and checks that every true edge is found.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest

from modelfs.repo import Repo
from modelfs.repo.nearest import fit_merge, match
from modelfs.repo.parents import sketch_files
from modelfs.repo.sketches import TensorSketch, decode, encode, positions
from modelfs.store import MemoryStore

SHAPES = {"enc.layer.0.w": (64, 48), "enc.layer.0.b": (48,), "enc.layer.1.w": (48, 48), "head.w": (48, 16)}


def base_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in SHAPES.items()}


def tune(w: dict[str, np.ndarray], seed: int, scale: float = 2e-3) -> dict[str, np.ndarray]:
    """A fine-tune: every element moved a little, independently of any other fine-tune."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.standard_normal(v.shape) * scale).astype(v.dtype) for k, v in w.items()}


def save(d: Path, tensors: dict[str, Any]) -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"hidden": 48}')
    return d


def refs(repo: Repo, model: str) -> list[str]:
    return [repo.version(p).ref for p in repo.resolve(model).derived_from]


@pytest.fixture
def family(tmp_path: Path) -> dict[str, dict[str, np.ndarray]]:
    base = base_weights(0)
    ft = tune(base, 1)
    return {"base": base, "ft": ft, "sibling": tune(base, 2), "ft2": tune(ft, 3, 1e-3)}


def import_all(repo: Repo, tmp: Path, models: dict[str, dict[str, Any]]) -> None:
    for name, w in models.items():
        repo.import_dir(save(tmp / name, w), name)


# -- sketches ------------------------------------------------------------------------------------------
def test_positions_depend_on_the_element_count_only_and_are_pinned() -> None:
    """Pinned: changing the generator would make every stored sketch incomparable."""
    assert positions(10**6, 8).tolist() == [258628, 509015, 109222, 837787, 758374, 968425, 87099, 583081]
    assert positions(5).tolist() == [0, 1, 2, 3, 4]  # small tensors are kept whole
    p = positions(123_457, 256)
    assert p.min() >= 0 and p.max() < 123_457
    assert positions(123_457, 16).tolist() == p[:16].tolist()  # a shorter sketch is a prefix
    assert positions(123_458, 16).tolist() != p[:16].tolist()


def test_sketch_record_is_pinned_and_round_trips() -> None:
    tensors = [TensorSketch("enc.w", "F32", (2, 3), np.arange(6, dtype=np.float32) / 8),
               TensorSketch("enc.b", "BF16", (3,), np.array([1, -2, 0.5], dtype=np.float32))]
    raw = encode(tensors)
    assert blake3.blake3(raw).hexdigest() == "ccbb822c2aebc67b376475283a8b1e1e0d9e00e82dcbe1bb0d74fd423a0ee087"
    back = decode(raw)
    assert [(t.name, t.dtype, t.shape) for t in back] == [(t.name, t.dtype, t.shape) for t in tensors]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(back, tensors, strict=True))


def test_a_cast_is_sketched_in_float32_at_the_same_positions(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    w = torch.from_numpy(base_weights(0)["enc.layer.0.w"])
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        save_file({"x": w.to(dt)}, str(tmp_path / f"{dt}.safetensors"))
    sk = {dt: sketch_files({"m.safetensors": tmp_path / f"{dt}.safetensors"})[0]
          for dt in (torch.float32, torch.float16, torch.bfloat16)}
    pos = torch.from_numpy(positions(w.numel()))
    for dt, s in sk.items():
        assert s.samples.dtype == np.float32 and s.shape == (64, 48)
        assert np.array_equal(s.samples, w.reshape(-1)[pos].to(dt).float().numpy())
    assert np.abs(sk[torch.float16].samples - sk[torch.float32].samples).max() < 1e-4


def test_renamed_tensors_match_by_suffix_and_shape() -> None:
    def t(name: str, shape: tuple[int, ...]) -> TensorSketch:
        return TensorSketch(name, "F32", shape, np.zeros(1, dtype=np.float32))

    child = [t("bert.enc.w", (4, 4)), t("bert.enc.b", (4,)), t("classifier.weight", (2, 4)), t("bert.x", (3,))]
    layout = [("enc.w", "F32", (4, 4)), ("enc.b", "F32", (4,)), ("x", "F32", (5,))]
    assert match(child, layout) == [(0, 0), (1, 1)]  # x: same name, another shape: no match
    # and the other way: the parent has the prefix, the child dropped it
    assert match([t("enc.w", (4, 4))], [("bert.enc.w", "F32", (4, 4))]) == [(0, 0)]


def test_a_fitted_combination_recovers_the_weight() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(500).astype(np.float32), rng.standard_normal(500).astype(np.float32)
    child = [TensorSketch("w", "F32", (500,), (0.3 * a + 0.7 * b).astype(np.float32))]
    alpha, r, da, db = fit_merge(child, {0: a}, {0: b})
    assert abs(alpha - 0.3) < 1e-4 and r < 1e-6 < da and db < da


# -- choosing parents ------------------------------------------------------------------------------------
def test_a_sibling_gets_its_base_not_the_newest_model_of_its_shape(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling", "ft2")})
    assert refs(repo, "ft") == ["base@1"]
    assert refs(repo, "sibling") == ["base@1"]  # the old rule gave ft@1, the newest of that shape
    assert refs(repo, "ft2") == ["ft@1"]
    inf = repo.resolve("sibling").provenance["inference"]
    assert inf["method"] == "weights" and inf["merge"] is None
    (first, d1), (second, d2) = inf["candidates"][:2]
    assert first == "base@1" and second == "ft@1" and d1 == inf["distance"] and d2 > 1.2 * d1


def test_an_fp16_cast_gets_its_fp32_parent(repo: Repo, tmp_path: Path,
                                            family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling")})
    repo.import_dir(save(tmp_path / "half", {k: v.astype(np.float16) for k, v in family["ft"].items()}), "half")
    assert refs(repo, "half") == ["ft@1"]
    assert repo.last_inference is not None and repo.last_inference.distance is not None
    assert repo.last_inference.distance < 1e-3  # fp16 rounding only


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_a_weight_average_gets_both_parents(repo: Repo, tmp_path: Path, alpha: float,
                                            family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling")})
    merged = {k: (alpha * family["ft"][k] + (1 - alpha) * family["sibling"][k]).astype(np.float32)
              for k in SHAPES}
    v = repo.import_dir(save(tmp_path / "soup", merged), "soup")
    heavy, light = ("sibling@1", "ft@1") if alpha < 0.5 else ("ft@1", "sibling@1")
    assert sorted(refs(repo, "soup")) == sorted([heavy, light])
    merge = v.provenance["inference"]["merge"]
    assert merge["parents"][0] == heavy and abs(merge["alpha"] - max(alpha, 1 - alpha)) < 1e-3
    assert merge["distance"] < 0.01 * merge["nearest_single"]
    assert v.provenance["inferred_parent"] == heavy
    text = repo.last_inference.describe()  # type: ignore[union-attr]
    assert text.startswith("parents inferred from the weights: ") and "merge, alpha" in text


def test_a_renamed_task_head_gets_its_parent(repo: Repo, tmp_path: Path,
                                             family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling")})
    rng = np.random.default_rng(9)
    head = {f"bert.{k}": v for k, v in tune(family["sibling"], 4, 5e-4).items()}
    head["classifier.weight"] = (rng.standard_normal((2, 16)) * 0.02).astype(np.float32)
    repo.import_dir(save(tmp_path / "task", head), "task")
    assert refs(repo, "task") == ["sibling@1"]
    # and the reverse: the base model pulled back out of the task model
    repo.import_dir(save(tmp_path / "bare", {k[5:]: v for k, v in head.items() if k.startswith("bert.")}), "bare")
    assert refs(repo, "bare") == ["task@1"]


def test_the_choice_is_printed_with_its_distances(repo: Repo, tmp_path: Path,
                                                  family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "ft2")})
    text = repo.last_inference.describe()  # type: ignore[union-attr]
    assert text.startswith("parent inferred from the weights: ft@1 (distance ") and "; next " in text
    json.dumps(dict(repo.resolve("ft2").provenance))  # recorded as plain JSON


def test_an_unrelated_model_of_the_same_shape_gets_no_parent(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    """Another random init shares every tensor signature (the old rule gave it a parent)."""
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft")})
    v = repo.import_dir(save(tmp_path / "other", base_weights(5)), "other")
    assert v.derived_from == () and "inferred_parent" not in v.provenance
    inf = repo.last_inference
    assert inf is not None and inf.parent is None and repo.last_inferred_parent is None
    assert inf.describe().startswith("no parent inferred: the nearest, ")
    assert v.provenance["inference"]["candidates"][0][1] > 1.0  # two random inits: about sqrt(2)


def test_a_fine_tune_of_a_model_with_a_cast_child_gets_the_model_of_its_dtype(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    """base and its fp16 cast are equally near a fine-tune of base: the fp32 one is chosen."""
    repo.import_dir(save(tmp_path / "base", family["base"]), "base")
    repo.import_dir(save(tmp_path / "half", {k: v.astype(np.float16) for k, v in family["base"].items()}),
                    "half")
    assert refs(repo, "half") == ["base@1"]
    repo.import_dir(save(tmp_path / "ft", family["ft"]), "ft")
    assert refs(repo, "ft") == ["base@1"]
    half_ft = {k: v.astype(np.float16) for k, v in tune(family["base"], 6).items()}
    repo.import_dir(save(tmp_path / "half-ft", half_ft), "half-ft")
    assert refs(repo, "half-ft") == ["half@1"]


def test_a_copy_of_a_merge_is_a_child_of_the_merge_not_another_merge(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling")})
    soup = {k: ((family["ft"][k] + family["sibling"][k]) / 2).astype(np.float32) for k in SHAPES}
    repo.import_dir(save(tmp_path / "soup", soup), "soup")
    assert sorted(refs(repo, "soup")) == ["ft@1", "sibling@1"]
    repo.import_dir(save(tmp_path / "soup2", soup), "soup2")
    assert refs(repo, "soup2") == ["soup@1"]


# -- what inference reads ------------------------------------------------------------------------------
class SpyStore(MemoryStore):
    """A memory store that remembers which tables were read."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: set[str] = set()

    @contextmanager
    def read(self, views: bool = False) -> Iterator[Any]:
        with super().read(views) as txn:
            spy = self

            class Txn:
                def get(self, table: str, key: bytes) -> bytes | None:
                    spy.tables.add(table)
                    return txn.get(table, key)  # type: ignore[no-any-return]

                def items(self, table: str, prefix: bytes = b"") -> Any:
                    spy.tables.add(table)
                    return txn.items(table, prefix)

                def keys(self, table: str, prefix: bytes = b"") -> Any:
                    spy.tables.add(table)
                    return txn.keys(table, prefix)

            yield Txn()


def test_inference_reads_no_chunks_of_other_versions(tmp_path: Path,
                                                     family: dict[str, dict[str, np.ndarray]]) -> None:
    store = SpyStore()
    with Repo.init(store=store) as repo:
        import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft", "sibling")})
        store.tables.clear()
        found = repo.infer_parents({"model.safetensors": save(tmp_path / "x", family["ft2"]) / "model.safetensors"})
        assert found is not None and found.parent.ref == "ft@1"
        assert "chunks" not in store.tables and "files" not in store.tables, store.tables


def test_a_draft_in_a_new_model_directory_is_inferred_from_the_weights(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    """What the mount does when a new model directory gets its first checkpoint file."""
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft")})
    src = save(tmp_path / "new", family["sibling"]) / "model.safetensors"
    repo.drafts().stage_file("sib", "model.safetensors", src)
    v = repo.drafts().commit("sib")
    assert v is not None and refs(repo, "sib") == ["base@1"]
    assert v.provenance["inferred_parent"] == "base@1"
    assert v.provenance["inference"]["candidates"][0][0] == "base@1"
    # the committed draft has a sketch too, so it is a candidate for the next one
    found = repo.infer_parents({"model.safetensors": save(tmp_path / "n2", tune(family["sibling"], 7, 1e-4))
                                / "model.safetensors"})
    assert found is not None and found.parent.ref == "sib@1"


def test_a_store_without_sketches_falls_back_to_tensor_overlap(
        repo: Repo, tmp_path: Path, family: dict[str, dict[str, np.ndarray]]) -> None:
    """Stores made before sketches: today's rule (the most shared signatures, then the newest)."""
    import_all(repo, tmp_path, {k: family[k] for k in ("base", "ft")})
    with repo.store.write() as txn:  # as if recorded before this change
        for k in list(txn.keys("sketch")):
            txn.delete("sketch", k)
    repo.import_dir(save(tmp_path / "sibling", family["sibling"]), "sibling")
    inf = repo.last_inference
    assert inf is not None and inf.method == "tensor overlap"
    assert inf.describe() == "parent inferred from tensor overlap: ft@1"
    assert repo.resolve("sibling").provenance["inferred_parent"] == "ft@1"
    # a reimport of an old file gets its sketch, so its new version can be compared by weight
    repo.import_dir(tmp_path / "ft", "ft-again")
    found = repo.infer_parents({"model.safetensors": save(tmp_path / "ft3", tune(family["ft"], 8, 1e-4))
                                / "model.safetensors"})
    assert found is not None and found.parent.ref == "ft-again@1" and found.method == "weights"


# -- the real lineage ------------------------------------------------------------------------------------
def _merge_and_task_head(trained: Any, root: Path) -> tuple[Path, Path]:
    """A weight average of ft and ft_sibling, and a classifier fine-tuned from ft_sibling."""
    import torch
    from transformers import AutoModel, BertForSequenceClassification

    torch.manual_seed(0)
    a = AutoModel.from_pretrained(str(trained.ft), local_files_only=True)
    b = AutoModel.from_pretrained(str(trained.ft_sibling), local_files_only=True).state_dict()
    a.load_state_dict({k: (v + b[k]) / 2 if v.is_floating_point() else v for k, v in a.state_dict().items()})
    a.save_pretrained(str(root / "merge"))
    m = BertForSequenceClassification.from_pretrained(str(trained.ft_sibling), num_labels=2,
                                                      local_files_only=True)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    m(input_ids=torch.randint(1000, 2000, (4, 16)), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    opt.step()
    m.save_pretrained(str(root / "task"))
    return root / "merge", root / "task"


@pytest.mark.slow
def test_every_true_edge_of_the_real_lineage_is_inferred(tmp_path: Path, trained: Any) -> None:
    merge, task = _merge_and_task_head(trained, tmp_path)
    truth = [("base", trained.base, []), ("ft", trained.ft, ["base@1"]),
             ("ft_sibling", trained.ft_sibling, ["base@1"]), ("partial", trained.partial, ["ft@1"]),
             ("ft2", trained.ft2, ["ft@1"]), ("fp16", trained.fp16, ["ft@1"]),
             ("sharded", trained.sharded, ["ft@1"]), ("merge", merge, ["ft@1", "ft_sibling@1"]),
             ("task", task, ["ft_sibling@1"])]
    found = {}
    with Repo.init(tmp_path / "store") as repo:
        for name, src, _ in truth:
            repo.import_dir(src, name)
            found[name] = refs(repo, name)
        assert found == {name: parents for name, _, parents in truth}
        bert = [t for t in repo.file_record(repo.resolve("task").files["model.safetensors"]).tensors()
                if t.name.startswith("bert.")]
        assert len(bert) > 100  # the task model really renamed every tensor
        # the merge is stored against the average of its two parents: almost nothing
        m = repo.maintenance().du()["models"]["merge"]
        assert m["stored"] < 0.01 * m["logical"], m
