"""A commit that must first store what a killed mount left reports its progress in bytes.

What a progress bar on a long commit counts (``Drafts.to_recover``, then ``progress`` calls
from storing each staged file): the sum equals the staged bytes, and a small draft is fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from modelfs.repo import Repo


def test_commit_progress_counts_the_staged_bytes(repo: Repo, tmp_path: Path) -> None:
    dead = repo.path / "staging" / "mount-999-dead"  # no lock held: its mount is gone
    dead.mkdir(parents=True)
    a, b = dead / "00000001", dead / "00000002"
    save_file({"w": np.arange(300_000, dtype=np.float32)}, str(a))
    b.write_bytes(os.urandom(5000))
    d = repo.drafts()
    d.record_staged("m", "model.safetensors", a)
    d.record_staged("m", "notes.bin", b)
    total = d.to_recover("m")
    assert total == a.stat().st_size + b.stat().st_size
    ticks: list[int] = []
    v = d.commit("m", progress=ticks.append)
    assert v is not None and sorted(v.files) == ["model.safetensors", "notes.bin"]
    assert sum(ticks) == total and len(ticks) >= 2
    assert d.to_recover("m") == 0 and not a.exists()
