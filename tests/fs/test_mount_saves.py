"""Each complete save is a version (issue 14), through a real FUSE mount.

Saves that come faster than the settle time were one version: a second save of the same
files (the weights renamed over again, config.json rewritten) now cuts the burst, so the
save before it commits first. A model's own settle time (``modelfs config M settle``) is
honoured by the mount, and a head tells what it last committed in an xattr.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mounthelp import Mounted, empty_store, head_ref, module_mount, wait_for, wait_ref
from safetensors.torch import load_file, save_file

from modelfs.repo import Repo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def sstore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return empty_store(tmp_path_factory, "sstore")


@pytest.fixture(scope="module")
def smount(sstore: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    yield from module_mount(sstore, tmp_path_factory, "smnt")


def weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)}


def test_three_quick_saves_are_three_versions(smount: Mounted, sstore: Path) -> None:
    d = smount.path / "quick"
    d.mkdir()
    for i in range(3):  # like save_pretrained three times in a second: config, then weights
        (d / "config.json").write_text(json.dumps({"save": i}))
        save_file(weights(i), str(d / "model.safetensors"))  # a temp file renamed over it
    wait_ref(d, "quick@3")
    with Repo.open(sstore) as repo:
        vs = repo.versions("quick")
        assert [v.number for v in vs] == [1, 2, 3]
        for i, v in enumerate(vs):
            got = load_file(str(smount.path / v.ref / "model.safetensors"))
            assert torch.equal(got["w"], weights(i)["w"]), v.ref  # each save whole, in order
            assert json.loads((smount.path / v.ref / "config.json").read_text()) == {"save": i}
            assert sorted(v.files) == ["config.json", "model.safetensors"]  # no temp file
    info = json.loads(os.getxattr(d, "user.modelfs.committed"))
    assert info["ref"] == "quick@3" and info["why"] in ("settled", "a new save")


def test_renames_alone_cut_the_burst(smount: Mounted, sstore: Path) -> None:
    """save_file alone (no config): the second rename over the weights ends the first save."""
    d = smount.path / "renames"
    d.mkdir()
    for i in range(2):
        save_file(weights(10 + i), str(d / "model.safetensors"))
    wait_ref(d, "renames@2")
    with Repo.open(sstore) as repo:
        v1 = repo.resolve("renames@1")
        assert sorted(v1.files) == ["model.safetensors"]
    got = load_file(str(smount.path / "renames@1" / "model.safetensors"))
    assert torch.equal(got["w"], weights(10)["w"])


def test_files_of_one_save_still_make_one_version(smount: Mounted, sstore: Path) -> None:
    d = smount.path / "onesave"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file(weights(1), str(d / "a.safetensors"))
    save_file(weights(2), str(d / "b.safetensors"))
    with open(d / "log.txt", "a") as f:  # appending to a file of the burst continues it
        f.write("one\n")
    with open(d / "log.txt", "a") as f:
        f.write("two\n")
    wait_ref(d, "onesave@1")
    time.sleep(1.3)
    assert head_ref(d) == "onesave@1"


def test_a_models_own_settle_time(smount: Mounted, sstore: Path) -> None:
    with Repo.open(sstore) as repo:
        repo.model_settings().set("patient", "settle", "3")
        repo.model_settings().set("eager", "settle", "0.1")
    for name in ("patient", "eager"):
        (smount.path / name).mkdir()
        (smount.path / name / "a.txt").write_text(name)
    t0 = time.monotonic()
    wait_ref(smount.path / "eager", "eager@1", timeout=5)
    assert time.monotonic() - t0 < 0.9  # the mount's own settle time is 1 s
    time.sleep(1.5)
    assert head_ref(smount.path / "patient") is None  # 3 s: not yet
    assert wait_for(lambda: head_ref(smount.path / "patient") == "patient@1", 5)
