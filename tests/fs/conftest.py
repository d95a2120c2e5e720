"""Real FUSE mounts for the mount tests (pyfuse3's test/util.py and borg's conftest, adapted).

The filesystem always runs in a spawned subprocess (``python -m modelfs.fs.daemon``), never
in a fork of this process, which holds LMDB environments open. Mounts are waited for by
polling mountinfo, torn down with SIGTERM and then ``fusermount3 -u -z``, and mounts left
over by an earlier, killed test run are swept at session start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mounthelp import FUSE_MISSING, FsLineage, Mounted, start_mount, sweep_stale_mounts

from modelfs.repo import Repo, Version


def _tiny_model(root: Path, scale: float) -> Path:
    """A small checkpoint with both a safetensors file and a torch pickle."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(int(scale * 1000))
    sd = {"w": torch.randn(64, 32, generator=g) * scale, "b": torch.zeros(32)}
    save_file(sd, str(root / "model.safetensors"), metadata={"format": "pt"})
    torch.save(sd, root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({"scale": scale}) + "\n")
    return root


@pytest.fixture(scope="session")
def fs_lineage(tmp_path_factory: pytest.TempPathFactory, trained: Any) -> FsLineage:
    """MiniLM and checkpoints derived from it by real training, imported into one store.

    minilm@1 (shipped) -> minilm@2 (fine-tune) -> minilm@3 (another step);
    minilm-half@1 (fp16 cast of minilm@2); minilm-part@1 (partial fine-tune of minilm@2);
    minilm-shards@1 (minilm@2 in shards); sibling@1 (fine-tune of minilm@1, other seed);
    tiny@1 (a small model with a pytorch_model.bin).
    """
    if FUSE_MISSING:
        pytest.fail(FUSE_MISSING)
    t = trained
    root = tmp_path_factory.mktemp("fs-store")
    store = root / "store"
    plan: list[tuple[str, Path, list[str], str | None]] = [
        ("minilm@1", t.base, [], None),
        ("minilm@2", t.ft, [], "finetune"),
        ("minilm@3", t.ft2, [], "finetune"),
        ("minilm-half@1", t.fp16, ["minilm@2"], "cast"),
        ("minilm-part@1", t.partial, ["minilm@2"], "finetune"),
        ("minilm-shards@1", t.sharded, ["minilm@2"], "reshard"),
        ("sibling@1", t.ft_sibling, ["minilm@1"], "finetune"),
        ("tiny@1", _tiny_model(root / "tiny1", 1.0), [], None),
    ]
    sources: dict[str, Path] = {}
    versions: dict[str, Version] = {}
    with Repo.init(store) as repo:
        for ref, src, parents, how in plan:
            model = ref.split("@")[0]
            v = repo.import_dir(src, model=model, parents=parents, how=how, infer_parent=False)
            assert v.ref == ref
            sources[ref] = src
            versions[ref] = v
    return FsLineage(store, sources, versions)


@pytest.fixture(scope="session")
def fs_repo(fs_lineage: FsLineage) -> Iterator[Repo]:
    """The shared store, opened once in this process (LMDB allows one env per process)."""
    with Repo.open(fs_lineage.store) as repo:
        yield repo


@pytest.fixture(scope="session")
def mounted(fs_lineage: FsLineage, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Mounted]:
    """The shared store mounted for the whole session (read-only tests share it)."""
    sweep_stale_mounts()
    root = tmp_path_factory.mktemp("mnt")
    m = start_mount(fs_lineage.store, root / "mnt", root / "daemon.log", extra=("--read-only",))
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def fresh_mount(fs_lineage: FsLineage, tmp_path: Path) -> Iterator[Callable[..., Mounted]]:
    """A factory for private mounts: a cold kernel page cache and a cold chunk cache."""
    made: list[Mounted] = []

    def make(cache_mb: int = 256) -> Mounted:
        n = len(made)
        m = start_mount(fs_lineage.store, tmp_path / f"mnt{n}", tmp_path / f"daemon{n}.log",
                        cache_mb=cache_mb, extra=("--read-only",))
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.stop()


