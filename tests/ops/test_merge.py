"""`modelfs merge`: every strategy against a direct numpy/torch computation on real fine-tunes,
the merged model loads with from_pretrained, rules, conflicts, and bad input writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st_numpy
import torch

from modelfs.errors import ModelfsError
from modelfs.ops.merge import MergeConflicts, Rule, merge, parse_rules
from modelfs.repo import Repo

F = np.float32


def load(path: Path) -> dict[str, np.ndarray]:
    return st_numpy.load_file(str(path / "model.safetensors"))


def merged_tensors(repo: Repo, ref: str, tmp: Path) -> dict[str, np.ndarray]:
    out = tmp / ref.replace("@", "_")
    repo.export(ref, out)
    return load(out)


def keep_agreed(ref: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    same = np.ones(ref.shape, dtype=bool)
    for x in inputs[1:]:
        same &= x.view(np.uint32) == inputs[0].view(np.uint32)
    return np.where(same, inputs[0], ref)


def ties_reference(a: np.ndarray, b: np.ndarray, base: np.ndarray, density: float, lam: float) -> np.ndarray:
    """TIES written out in torch, independently of modelfs's numpy code."""
    tb = torch.from_numpy(base)
    taus = []
    for x in (a, b):
        tau = torch.from_numpy(x) - tb
        k = max(1, math.ceil(density * tau.numel()))
        if k < tau.numel():
            thr = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
            tau = torch.where(tau.abs() >= thr, tau, torch.zeros_like(tau))
        taus.append(tau)
    sign = torch.sign(taus[0] + taus[1])
    agree = [(torch.sign(t) == sign) & (t != 0) for t in taus]
    acc = torch.where(agree[0], taus[0], 0.0) + torch.where(agree[1], taus[1], 0.0)
    count = agree[0].to(torch.float32) + agree[1].to(torch.float32)
    mean = torch.where(count > 0, acc / count.clamp(min=1), 0.0)
    out = (tb + mean * lam).numpy()
    return keep_agreed(out, base, a, b)


def reference(strategy: str, a: np.ndarray, b: np.ndarray, base: np.ndarray | None,
              params: dict[str, float]) -> np.ndarray:
    """The merged tensor computed directly, with the strategy's documented defaults."""
    if strategy == "weighted-average":  # alpha: the weight of B
        alpha = params.get("alpha", 0.5)
        return keep_agreed(F(1.0 - alpha) * a + F(alpha) * b, a, b)
    assert base is not None
    if strategy == "average-3":
        w = F(1 / 3)
        return keep_agreed(w * a + w * b + w * base, a, b, base)
    if strategy == "task-arithmetic":  # lambda = alpha, as (1 - 2l) base + l a + l b
        lam = params.get("alpha", 1.0)
        return keep_agreed(F(1.0 - 2.0 * lam) * base + F(lam) * a + F(lam) * b, base, a, b)
    if strategy == "ties":
        return ties_reference(a, b, base, params.get("density", 0.2), params.get("alpha", 1.0))
    raise AssertionError(strategy)


def assert_merged(out: dict[str, np.ndarray], strategy: str, a: dict[str, np.ndarray],
                  b: dict[str, np.ndarray], base: dict[str, np.ndarray], params: dict[str, float]) -> None:
    """Every merged tensor has exactly the bits of the direct computation."""
    assert set(out) == set(a)
    for name in a:
        ref = reference(strategy, a[name], b[name], base.get(name), params)
        assert np.array_equal(out[name].view(np.uint32), ref.view(np.uint32)), name


PARAMS = {"weighted-average": {"alpha": 0.3}, "average-3": {}, "task-arithmetic": {"alpha": 0.4},
          "ties": {"density": 0.3, "alpha": 0.8}}


@pytest.mark.parametrize("strategy", sorted(PARAMS))
def test_value_strategies_match_a_direct_computation(ops_repo: Repo, trained: Any, tmp_path: Path,
                                                     strategy: str) -> None:
    a, b, base = load(trained.ft), load(trained.ft_sibling), load(trained.base)
    v = merge(ops_repo, ops_repo.resolve("ft"), ops_repo.resolve("sib"), strategy=strategy,
              params=PARAMS[strategy], into=f"m-{strategy}")
    assert v.derived_from == (ops_repo.resolve("ft").id, ops_repo.resolve("sib").id)
    assert v.how == "merge" and v.provenance["merge"]["base"] == "base@1"
    out = merged_tensors(ops_repo, v.ref, tmp_path)
    assert_merged(out, strategy, a, b, base, PARAMS[strategy])
    if strategy == "task-arithmetic":  # the textbook formula, up to float32 rounding
        name = "encoder.layer.3.output.dense.weight"
        lam = F(0.4)
        text = base[name] + lam * (a[name] - base[name]) + lam * (b[name] - base[name])
        np.testing.assert_allclose(out[name], text, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy,source", [("take-a", "ft"), ("take-b", "sib")])
def test_take_strategies_copy_one_side(ops_repo: Repo, strategy: str, source: str) -> None:
    v = merge(ops_repo, ops_repo.resolve("ft"), ops_repo.resolve("sib"), strategy=strategy,
              into=f"m-{strategy}")
    src = ops_repo.resolve(source)
    assert v.files["model.safetensors"].key == src.files["model.safetensors"].key  # carried whole
    assert v.files["config.json"].key == ops_repo.resolve("ft").files["config.json"].key  # A's config


def test_take_base_and_rules(ops_repo: Repo, trained: Any, tmp_path: Path) -> None:
    a, b, base = load(trained.ft), load(trained.ft_sibling), load(trained.base)
    rules = [Rule("encoder.layer.0.*", "take-b"), Rule("embeddings.*", "take-base"),
             *parse_rules("# comment\nencoder.layer.1.* = weighted-average alpha=0.9\n", "rules")]
    v = merge(ops_repo, ops_repo.resolve("ft"), ops_repo.resolve("sib"), strategy="weighted-average",
              rules=rules, into="m-rules")
    out = merged_tensors(ops_repo, v.ref, tmp_path)
    for name, t in out.items():
        if name.startswith("encoder.layer.0."):
            assert np.array_equal(t, b[name])
        elif name.startswith("embeddings."):
            assert np.array_equal(t, base[name])
        elif name.startswith("encoder.layer.1."):
            assert np.array_equal(t, keep_agreed(F(0.1) * a[name] + F(0.9) * b[name], a[name], b[name]))
        else:
            assert np.array_equal(t, keep_agreed(F(0.5) * a[name] + F(0.5) * b[name], a[name], b[name]))
    assert "embeddings.position_ids" in out  # take-base keeps what only the base has


def _new_chunks_stored(repo: Repo, v: Any, *inputs: Any) -> int:
    have = {k for x in inputs for e in x.files.values() for t in repo.file_record(e).tensors() for k in t.chunks}
    new = {k for e in v.files.values() for t in repo.file_record(e).tensors() for k in t.chunks} - have
    return repo.stored_size_of(new)


def test_average_merge_loads_and_costs_little(ops_repo: Repo, trained: Any, tmp_path: Path) -> None:
    import transformers
    ft, sib = ops_repo.resolve("ft"), ops_repo.resolve("sib")
    v = merge(ops_repo, ft, sib, strategy="weighted-average", into="soup")
    a, b = load(trained.ft), load(trained.ft_sibling)
    out = tmp_path / "soup"
    ops_repo.export(v.ref, out)
    assert_merged(load(out), "weighted-average", a, b, {}, {})
    model = transformers.AutoModel.from_pretrained(str(out), local_files_only=True)
    loaded = {n: t.detach().numpy() for n, t in model.state_dict().items()}
    assert set(a) <= set(loaded)  # every merged weight is a weight of the model
    for name in a:  # the model holds the merged values, not a re-initialisation
        assert np.array_equal(loaded[name], reference("weighted-average", a[name], b[name], None, {})), name
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.no_grad():
        h = model(input_ids=ids).last_hidden_state
        h_ft = transformers.AutoModel.from_pretrained(str(trained.ft), local_files_only=True)(
            input_ids=ids).last_hidden_state
    assert torch.isfinite(h).all() and not torch.equal(h, h_ft)
    base = ops_repo.resolve("base")
    assert _new_chunks_stored(ops_repo, v, ft, sib, base) < v.logical_size * 0.01  # the rounding residual


@pytest.mark.parametrize("strategy", ["weighted-average", "task-arithmetic", "ties"])
def test_predictable_merges_store_small_with_hints(ops_repo: Repo, trained: Any, tmp_path: Path,
                                                   strategy: str) -> None:
    ft, sib, base = ops_repo.resolve("ft"), ops_repo.resolve("sib"), ops_repo.resolve("base")
    params = {"alpha": 0.35}
    v = merge(ops_repo, ft, sib, strategy=strategy, params=params, into=f"h-{strategy}")
    assert_merged(merged_tensors(ops_repo, v.ref, tmp_path), strategy, load(trained.ft),
                  load(trained.ft_sibling), load(trained.base), params)
    assert _new_chunks_stored(ops_repo, v, ft, sib, base) < v.logical_size * 0.01


# -- conflicts and bad input -------------------------------------------------------------------------
def _store_state(repo: Repo) -> tuple[int, int, int]:
    with repo.read_txn() as txn:
        return (sum(1 for _ in txn.keys("versions")), sum(1 for _ in txn.keys("chunks")),
                sum(1 for _ in txn.keys("files")))


@pytest.fixture
def small(repo: Repo, tmp_path: Path, make_safetensors: Any) -> Repo:
    """x@1 -> y@1 (w reshaped, u changed, gone removed), x@1 -> z@1 (gone changed); q unrelated."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(F)
    u = rng.standard_normal(8).astype(F)
    gone = rng.standard_normal(3).astype(F)
    ids = np.arange(5, dtype=np.int64)
    make_safetensors(tmp_path / "x" / "model.safetensors", {"w": w, "u": u, "gone": gone, "ids": ids})
    make_safetensors(tmp_path / "y" / "model.safetensors", {"w": np.zeros((4, 5), F), "u": u + 1, "ids": ids})
    make_safetensors(tmp_path / "z" / "model.safetensors",
                     {"w": w * 2, "u": u - 1, "gone": gone * 3, "ids": ids + 1})
    make_safetensors(tmp_path / "q" / "model.safetensors", {"w": w + 1, "u": u})
    repo.import_dir(tmp_path / "x", "x")
    repo.import_dir(tmp_path / "y", "y", parents=["x"])
    repo.import_dir(tmp_path / "z", "z", parents=["x"])
    repo.import_dir(tmp_path / "q", "q", infer_parent=False)
    return repo


def test_conflicts_are_listed_and_nothing_is_written(small: Repo) -> None:
    before = _store_state(small)
    with pytest.raises(MergeConflicts) as e:
        merge(small, small.resolve("y"), small.resolve("z"), strategy="weighted-average")
    text = "\n".join(e.value.conflicts)
    assert "model.safetensors:w: A has F32[4, 5], B has F32[4, 4]" in text
    assert "model.safetensors:gone: tensor changed in B (z@1) but removed in A (y@1)" in text
    assert "ids" in text and "floating-point" in text  # int64 values differ: needs a take rule
    assert _store_state(small) == before
    v = merge(small, small.resolve("y"), small.resolve("z"), strategy="weighted-average",
              rules=[Rule("w", "take-a"), Rule("gone", "take-a"), Rule("ids", "take-b")])
    # merged into A's own model: A is the versioning parent, B the provenance one
    assert v.model == "y" and v.parents == (small.resolve("y@1").id, small.resolve("z").id)
    assert v.previous == small.resolve("y@1").id and v.derived_from == (small.resolve("z").id,)


def test_missing_base_and_unknown_strategy(small: Repo) -> None:
    before = _store_state(small)
    with pytest.raises(MergeConflicts) as e:
        merge(small, small.resolve("x"), small.resolve("q"), strategy="task-arithmetic")
    assert "no common ancestor; pass --base" in e.value.conflicts[0]
    with pytest.raises(ModelfsError, match="unknown merge strategy 'nope'; known: .*ties"):
        merge(small, small.resolve("x"), small.resolve("z"), strategy="nope")
    assert _store_state(small) == before
    merge(small, small.resolve("x"), small.resolve("q"), strategy="weighted-average", into="xq")


def test_cli_merge_errors_are_one_line_and_write_nothing(small: Repo, cli: Any, tmp_path: Path) -> None:
    store = small.path
    before = _store_state(small)
    for args, needle in [
        (["merge", "x", "z", "-s", "nope"], "unknown merge strategy"),
        (["merge", "x", "q", "-s", "ties"], "conflict"),
        (["merge", "x", "z", "-s", "ties", "--base", "ghost"], "ghost"),
        (["merge", "y", "z", "-s", "weighted-average"], "conflict"),
        (["merge", "x", "z", "-s", "weighted-average", "--rule", "novalue"], "PATTERN=STRATEGY"),
        (["merge", "x", "z", "-s", "weighted-average", "--into", "../bad"], "model name"),
        (["merge", "x", "z", "-s", "weighted-average", "--rules", str(tmp_path / "none.txt")], "none.txt"),
    ]:
        r = cli(*args, store=store)
        assert r.returncode != 0, args
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("Error:")
    assert _store_state(small) == before
    rules = tmp_path / "rules.txt"
    rules.write_text("w = take-a\ngone=take-a  # keep A's\nids=take-b\n")
    r = cli("merge", "y", "z", "-s", "weighted-average", "--rules", str(rules), "--into", "yz", "--json",
            store=store)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ref"] == "yz@1" and out["base"] == "x@1"
    r = cli("merge", "y", "z", "-s", "weighted-average", "--dry-run", store=store)
    assert r.returncode != 0 and "conflict:" in r.stderr
