"""Bugs a new user met in everyday use (issue 14), each checked as the user met it: real
checkpoints written by safetensors and transformers, the real `modelfs` in a subprocess.

- merging two different models (a tiny GPT-2 and a tiny BERT; two configs naming different
  architectures) is a conflict listed before anything is written;
- `du` of a model whose every chunk is shared says so instead of `0.0x`;
- `diff A A --stat` says nothing is new instead of `infx smaller`;
- the diff's element totals run over every tensor, and config files are not tensors;
- a closed pipe ends the diff quietly;
- fsck says what unreachable chunks may come from (an overwritten save too).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfs.repo import Repo
from modelfs.store import TABLES


def snapshot(store: Path) -> tuple[list[str], dict[str, int]]:
    """Every version id and the size of every table: what "changed nothing" compares."""
    with Repo.open(store) as repo, repo.store.read() as txn:
        return ([v.id for v in repo.all_versions()], {t: sum(1 for _ in txn.keys(t)) for t in TABLES})


def _save(d: Path, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    return d


def _w(seed: int, shape: tuple[int, ...] = (32, 16)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpt2@1 and bert@1 (tiny, by transformers), enc@1..2, encx@1 (another model_type),
    twin@1 (enc@1's bytes again)."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    root = tmp_path_factory.mktemp("everyday")
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
              ).save_pretrained(str(root / "gpt2"))
    BertModel(BertConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16,
                         intermediate_size=32, vocab_size=64, max_position_embeddings=32)
              ).save_pretrained(str(root / "bert"))
    enc = {"enc.w": _w(0), "enc.b": np.zeros(16, np.float32), "head.w": _w(5, (16, 4))}
    _save(root / "enc1", enc, {"model_type": "bert", "architectures": ["BertModel"]})
    _save(root / "enc2", {**enc, "enc.w": _w(1)}, {"model_type": "bert", "architectures": ["BertModel"]})
    _save(root / "encx", {**enc, "enc.w": _w(2)}, {"model_type": "roberta", "architectures": ["RobertaModel"]})
    s = root / "store"
    with Repo.init(s) as repo:
        for model, d in [("gpt2", "gpt2"), ("bert", "bert"), ("enc", "enc1"), ("enc", "enc2"),
                         ("encx", "encx"), ("twin", "enc1")]:
            repo.import_dir(root / d, model, infer_parent=False)
    return s


def _one_line(r: Any, *words: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def test_merging_a_gpt2_and_a_bert_is_a_conflict_and_writes_nothing(store: Path, cli: Callable[..., Any]) -> None:
    before = snapshot(store)
    for extra in ([], ["--dry-run"]):
        r = cli("merge", "gpt2", "bert", "--strategy", "weighted-average", "--into", "mm", *extra, store=store)
        err = _one_line(r, "conflict", "share no tensor", "nothing was written")
        assert "gpt2@1 and bert@1" in err
    assert snapshot(store) == before
    assert cli("show", "mm", store=store).returncode == 1


def test_merging_models_whose_configs_disagree_is_a_conflict(store: Path, cli: Callable[..., Any]) -> None:
    before = snapshot(store)
    r = cli("merge", "enc", "encx", "--strategy", "weighted-average", "--into", "mx", store=store)
    err = _one_line(r, "conflict: config.json", "model_type", '"bert"', '"roberta"', "architectures")
    assert "nothing was written" in err
    assert snapshot(store) == before
    # same architecture: still merges (the check does not get in the way of a real merge)
    r = cli("merge", "enc@1", "enc@2", "--strategy", "weighted-average", "--into", "ok", store=store)
    assert r.returncode == 0 and "merged enc@1 + enc@2" in r.stdout, r.stderr
    # and an explicit rule on the config says the user knows better
    r = cli("merge", "enc", "encx", "-s", "weighted-average", "--rule", "config.json=take-a",
            "--dry-run", store=store)
    assert r.returncode == 0 and "no conflicts" in r.stdout, r.stderr


def test_du_of_a_model_made_of_shared_chunks_says_shared(store: Path, cli: Callable[..., Any]) -> None:
    r = cli("du", store=store)
    assert r.returncode == 0, r.stderr
    twin = next(ln for ln in r.stdout.splitlines() if ln.startswith("twin"))
    assert "0.0x" not in r.stdout and "shared" in twin and "references" in twin and "0 B" in twin
    d = json.loads(cli("du", "--json", store=store).stdout)["models"]["twin"]
    assert d["stored"] == 0 and d["referenced"] > 0 and d["shared"] == d["referenced"]
    assert d["referenced_ratio"] > 0


def test_diff_of_a_version_with_itself_is_not_infinitely_smaller(store: Path, cli: Callable[..., Any]) -> None:
    r = cli("diff", "enc@1", "enc@1", "--stat", store=store)
    assert r.returncode == 0, r.stderr
    assert "inf" not in r.stdout and "nothing new to store" in r.stdout


def test_diff_totals_count_every_tensor_and_not_config_files(store: Path, cli: Callable[..., Any]) -> None:
    # enc@1 -> enc@2 changes enc.w (512 elements) of 512 + 16 + 64 elements; config.json is a file
    r = cli("diff", "enc@1", "enc@2", store=store)
    assert r.returncode == 0, r.stderr
    total = next(ln for ln in r.stdout.splitlines() if ln.startswith("total:"))
    assert "tensors: 1 changed, 2 unchanged" in total, total
    assert "1 with tensors, 1 other" in total, total
    changed = int(np.count_nonzero(_w(0) != _w(1)))
    assert f"{changed} of 592 elements differ" in total, total
    doc = json.loads(cli("diff", "enc@1", "enc@2", "--json", store=store).stdout)["total"]
    assert doc["element_count"] == 592 and doc["differing_elements"] == changed
    assert doc["tensors"] == {"changed": 1, "unchanged": 2, "added": 0, "removed": 0}
    assert doc["other_files"] == 1 and doc["tensor_files"] == 1


@pytest.mark.parametrize("args", [[], ["--stat"], ["--all"], ["--json"]])
def test_a_closed_pipe_ends_the_diff_quietly(store: Path, modelfs_cmd: list[str], args: list[str]) -> None:
    """`modelfs diff ... | head -1`: a real pipe whose reader leaves after the first line."""
    p = subprocess.Popen([*modelfs_cmd, "--store", str(store), "diff", "gpt2", "bert", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) in (0, 141) and err == "", (p.returncode, err)


def test_fsck_says_what_unreachable_chunks_may_come_from(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """A save into a model's head that is dropped before it becomes a version leaves its chunks."""
    s = tmp_path / "s"
    src = _save(tmp_path / "m", {"w": _w(7)}, {})
    with Repo.init(s) as repo:
        repo.import_dir(src, "m", infer_parent=False)
        over = _save(tmp_path / "over", {"w": _w(8)}, {})
        repo.drafts().stage_file("m", "model.safetensors", over / "model.safetensors")
        repo.drafts().discard("m")  # what an overwritten save leaves: stored, reached by nothing
    r = cli("fsck", store=s)
    assert r.returncode == 0, r.stderr
    assert "overwritten before it became a version" in r.stdout and "interrupted import" in r.stdout
    assert "`modelfs gc` frees them" in r.stdout
