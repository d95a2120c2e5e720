"""`modelfs diff`: numbers checked against numpy/torch, hashes answer 'unchanged', CLI shapes.

Real versions: two fine-tunes of MiniLM, an fp16 cast, a merged LoRA; synthetic pairs for
bf16, fp8 and int8, whose math torch does (numpy has no bf16/fp8).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st_numpy
import safetensors.torch as st_torch
import torch

from modelfs.ops.diff import DiffTotal, FileDiff, TensorDiff, diff_versions
from modelfs.repo import Repo


def events(repo: Repo, a: str, b: str, **kw: Any) -> list[Any]:
    return list(diff_versions(repo, repo.resolve(a), repo.resolve(b), **kw))


def tensor_diffs(evs: list[Any], path: str = "model.safetensors") -> dict[str, TensorDiff]:
    return {e.name: e for e in evs if isinstance(e, TensorDiff) and e.path == path}


def reference(a: np.ndarray, b: np.ndarray, same_dtype: bool = True) -> dict[str, float]:
    if same_dtype:
        changed = int(np.count_nonzero(a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}")))
    else:
        changed = int(np.count_nonzero(a.astype(np.float64) != b.astype(np.float64)))
    d = b.astype(np.float64) - a.astype(np.float64)
    return {"changed": changed, "l2": math.sqrt(float(np.sum(d * d))),
            "rel": math.sqrt(float(np.sum(d * d))) / math.sqrt(float(np.sum(a.astype(np.float64) ** 2))),
            "max_abs": float(np.max(np.abs(d))) if d.size else 0.0}


def check(td: TensorDiff, ref: dict[str, float]) -> None:
    s = td.stats
    assert s is not None
    assert s.changed == ref["changed"], td.name
    assert s.l2 == pytest.approx(ref["l2"], rel=1e-9, abs=1e-300), td.name
    assert s.rel == pytest.approx(ref["rel"], rel=1e-9), td.name
    assert s.max_abs == pytest.approx(ref["max_abs"], rel=1e-12), td.name


def test_finetune_numbers_match_numpy(ops_repo: Repo, trained: Any) -> None:
    a = st_numpy.load_file(str(trained.base / "model.safetensors"))
    b = st_numpy.load_file(str(trained.ft / "model.safetensors"))
    tds = tensor_diffs(events(ops_repo, "base", "ft"))
    assert set(tds) == set(a) | set(b)
    for name in set(a) & set(b):
        td = tds[name]
        assert td.status in ("changed", "unchanged")
        if td.status == "changed":
            check(td, reference(a[name], b[name]))
        else:
            assert np.array_equal(a[name], b[name])
    for name in set(a) - set(b):
        assert tds[name].status == "removed"


def test_cast_to_fp16_compares_values(ops_repo: Repo, trained: Any) -> None:
    a = st_numpy.load_file(str(trained.ft / "model.safetensors"))
    b = st_numpy.load_file(str(trained.fp16 / "model.safetensors"))
    tds = tensor_diffs(events(ops_repo, "ft", "fp16"))
    name = "encoder.layer.0.attention.self.query.weight"
    td = tds[name]
    assert td.retyped and td.a is not None and td.b is not None
    assert (td.a.dtype.name, td.b.dtype.name) == ("F32", "F16")
    check(td, reference(a[name], b[name], same_dtype=False))


def _synthetic(tmp: Path, name: str, tensors: dict[str, Any]) -> Path:
    d = tmp / name
    d.mkdir()
    st_torch.save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, torch.int8,
                                   torch.float16, torch.float32])
def test_low_precision_dtypes_use_torch_math(tmp_path: Path, repo: Repo, dtype: Any) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(700, 33, generator=g)
    a = (base * 20).to(dtype) if dtype == torch.int8 else base.to(dtype)
    b = a.clone()
    b.view(-1)[::7] = (b.view(-1)[::7].float() * 1.5 + 1).to(dtype)
    repo.import_dir(_synthetic(tmp_path, "a", {"w": a, "same": a[:3].clone()}), "a")
    repo.import_dir(_synthetic(tmp_path, "b", {"w": b, "same": a[:3].clone()}), "b", parents=["a"])
    tds = tensor_diffs(events(repo, "a", "b"))
    assert tds["same"].status == "unchanged"
    s = tds["w"].stats
    assert s is not None
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    assert s.changed == int((a.view(bits) != b.view(bits)).sum())
    d = b.double() - a.double()
    assert s.l2 == pytest.approx(float(d.norm()), rel=1e-9)
    assert s.rel == pytest.approx(float(d.norm() / a.double().norm()), rel=1e-9)
    assert s.max_abs == pytest.approx(float(d.abs().max()), rel=1e-12)


def test_unchanged_is_answered_from_hashes(ops_repo: Repo) -> None:
    before = ops_repo.counters.chunks_decoded
    evs = events(ops_repo, "ft", "ft")
    total = evs[-1]
    assert isinstance(total, DiffTotal)
    assert total.files["changed"] == 0 and total.delta_bytes == 0
    names = events(ops_repo, "base", "lora", numbers=False)
    assert ops_repo.counters.chunks_decoded == before  # nothing decoded for either
    changed = {e.name for e in names if isinstance(e, TensorDiff) and e.status == "changed"}
    changed.discard("")  # config.json differs too
    assert len(changed) == 12 and all(n.endswith(("query.weight", "value.weight")) for n in changed)


def test_delta_size_is_what_the_store_paid(ops_repo: Repo) -> None:
    total = events(ops_repo, "base", "ft")[-1]
    du = ops_repo.maintenance().du()["models"]["ft"]
    assert isinstance(total, DiffTotal)
    assert total.delta_bytes == pytest.approx(du["stored"], rel=0.02)
    assert 0 < total.delta_bytes < total.b_logical / 2


def test_cli_json_stat_and_errors(ops_repo: Repo, cli: Any) -> None:
    store = ops_repo.path
    r = cli("diff", "base", "lora", "--json", store=store)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["a"]["ref"] == "base@1" and doc["b"]["ref"] == "lora@1"
    model = next(f for f in doc["files"] if f["path"] == "model.safetensors")
    assert model["status"] == "changed" and model["tensors"]["changed"] == 12
    q = next(t for t in model["tensor_diffs"] if t["name"].endswith("layer.0.attention.self.query.weight"))
    assert q["stats"]["changed_fraction"] > 0.9 and q["stats"]["rel"] > 0
    assert doc["total"]["delta_stored_bytes"] > 0
    r = cli("diff", "base", "ft", "--stat", store=store)
    assert r.returncode == 0 and "M model.safetensors" in r.stdout and "stored size of ft@1" in r.stdout
    assert "~ " not in r.stdout  # --stat: no per-tensor lines
    r = cli("diff", "base", "nosuch", store=store)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "nosuch" in r.stderr
    assert "Traceback" not in r.stderr


def test_file_level_statuses(ops_repo: Repo) -> None:
    files = {e.path: e for e in events(ops_repo, "base", "lora") if isinstance(e, FileDiff)}
    assert files["vocab.txt"].status == "unchanged"  # the lineage builder copies tokenizer files
    assert files["model.safetensors"].status == "changed"
    files = {e.path: e for e in events(ops_repo, "base", "ft") if isinstance(e, FileDiff)}
    assert files["vocab.txt"].status == "removed"  # a bare save_pretrained has no tokenizer
    back = {e.path: e for e in events(ops_repo, "ft", "base") if isinstance(e, FileDiff)}
    assert back["vocab.txt"].status == "added" and back["vocab.txt"].delta_bytes > 0


def test_progress_counts_every_byte_of_the_differing_files_once(ops_repo: Repo) -> None:
    a, b = ops_repo.resolve("base"), ops_repo.resolve("ft")
    work = sum(e.size for p, e in b.files.items() if p not in a.files or a.files[p].key != e.key)
    seen: list[int] = []
    evs = events(ops_repo, "base", "ft", progress=seen.append)
    assert work > 0 and sum(seen) == work
    assert all(n >= 0 for n in seen) and len(seen) > 3  # it moves during the diff, not only at the end
    assert isinstance(evs[-1], DiffTotal)
    same: list[int] = []
    events(ops_repo, "ft", "ft", progress=same.append)
    assert sum(same) == 0
