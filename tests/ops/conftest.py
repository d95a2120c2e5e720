"""Fixtures for diff, merge and update tests: one store of real MiniLM versions per session.

The versions come from real CPU training (the shared `trained` fixture) and the demo lineage
builder's LoRA step (real rank-8 factors, merged the way PEFT merges them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfs.repo import Repo


@dataclass(frozen=True)
class LoraDirs:
    base: Path
    merged: Path
    adapter: Path


@pytest.fixture(scope="session")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory) -> LoraDirs:
    """minilm@1 and a LoRA child (merged weights + PEFT adapter dir), by real training."""
    from modelfs.demo import lineage

    try:
        lineage.minilm_dir()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.fail(str(e))
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = tmp_path_factory.mktemp("lora-lineage")
    steps = {s.ref: s for s in lineage.build_lineage(out, steps=2, kinds={"lora"})}
    lora = steps["minilm-lora@1"]
    assert lora.adapter_dir is not None
    return LoraDirs(steps["minilm@1"].dir, lora.dir, lora.adapter_dir)


@pytest.fixture(scope="session")
def ops_repo(tmp_path_factory: pytest.TempPathFactory, trained: object, lora_dirs: LoraDirs) -> Iterator[Repo]:
    """base (shipped MiniLM), ft and sib (two real fine-tunes), fp16 (ft cast), lora (merged LoRA)."""
    repo = Repo.init(tmp_path_factory.mktemp("ops") / "store")
    t = trained
    repo.import_dir(t.base, "base")  # type: ignore[attr-defined]
    repo.import_dir(t.ft, "ft", parents=["base"])  # type: ignore[attr-defined]
    repo.import_dir(t.ft_sibling, "sib", parents=["base"])  # type: ignore[attr-defined]
    repo.import_dir(t.fp16, "fp16", parents=["ft"])  # type: ignore[attr-defined]
    repo.import_dir(lora_dirs.merged, "lora", parents=["base"])
    try:
        yield repo
    finally:
        repo.close()

