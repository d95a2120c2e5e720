"""Recipes: stored per model, checked before anything is stored, run on a real mount of the store."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from recipehelp import Lineage, build_lineage

from modelfs.cli.version_dirs import MountedVersions
from modelfs.errors import ModelfsError, NotFound
from modelfs.ops.executors import LocalExecutor
from modelfs.ops.recipes import (
    Recipe,
    RecipeFailed,
    Recipes,
    check_command,
    make_version,
    parse_resources,
    wait_visible,
)


@pytest.fixture(scope="module")
def lin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lineage]:
    lin = build_lineage(tmp_path_factory.mktemp("recipes"), {"ft": (["base"], None)})
    try:
        yield lin
    finally:
        lin.repo.close()


@pytest.fixture(scope="module")
def dirs(lin: Lineage) -> Iterator[MountedVersions]:
    with MountedVersions(lin.store) as d:
        yield d


@pytest.fixture
def ex() -> Iterator[LocalExecutor]:
    e = LocalExecutor(1)
    try:
        yield e
    finally:
        e.close()


def test_set_show_remove_and_the_input_hashes(lin: Lineage, tmp_path: Path) -> None:
    data = tmp_path / "data.npy"
    data.write_bytes(b"training data")
    rs = Recipes(lin.repo)
    r = rs.set("ft", lin.s.train_cmd("--data", str(data)), [data], timeout=30, resources={"num_cpus": 1})
    assert r.inputs == {str(data): blake3.blake3(b"training data").hexdigest()}
    assert rs.show("ft") == r and rs.all() == {"ft": r}
    assert rs.remove("ft") == r and rs.get("ft") is None
    with pytest.raises(NotFound, match="has no recipe"):
        rs.show("ft")
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        rs.show("nope")


@pytest.mark.parametrize(("cmd", "why"), [
    ("train {parnet} {out}", "unknown placeholder {parnet}"),
    ("echo ${HOME} > {out}/x", "unknown placeholder {HOME}"),
    ("train {parent!r} {out}", "takes no format or conversion"),
    ("train {parent", "bad recipe command"),
    ("   ", "empty"),
])
def test_a_bad_command_is_refused_in_one_line_and_nothing_is_stored(lin: Lineage, cmd: str, why: str) -> None:
    with pytest.raises(ModelfsError, match=why.replace("{", r"\{").replace("$", r"\$")) as e:
        Recipes(lin.repo).set("ft", cmd)
    assert "\n" not in str(e.value)
    assert Recipes(lin.repo).get("ft") is None
    assert check_command("echo ${{HOME}} {out} {{}}") == ["out"]  # literal braces are doubled


def test_bad_inputs_and_resources_are_refused(lin: Lineage, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="unknown model"):
        Recipes(lin.repo).set("nope", "true {out}")
    with pytest.raises(NotFound, match="is not a file"):
        Recipes(lin.repo).set("ft", "true {out}", [tmp_path / "missing.npy"])
    with pytest.raises(ModelfsError, match="more than 0"):
        Recipes(lin.repo).set("ft", "true {out}", timeout=0)
    assert parse_resources("num_cpus=2, num_gpus=0.5") == {"num_cpus": 2.0, "num_gpus": 0.5}
    with pytest.raises(ModelfsError, match="NAME=AMOUNT"):
        parse_resources("num_gpus")
    assert Recipes(lin.repo).get("ft") is None


def test_a_recipe_run_trains_from_the_mounted_parent_and_records_how(lin: Lineage, dirs: MountedVersions,
                                                                     ex: LocalExecutor, tmp_path: Path) -> None:
    data = tmp_path / "data.npy"
    import numpy as np

    np.save(data, np.random.default_rng(5).standard_normal((32, 16)).astype(np.float32))
    base = lin.repo.resolve("base")
    r = Recipe("run-a", lin.s.train_cmd("--data", str(data)), {str(data): "stale"}, 60.0, how="finetune")
    v = make_version(lin.repo, r, [base], dirs, ex)
    assert (v.ref, v.derived_from, v.how) == ("run-a@1", (base.id,), "finetune")
    prov = v.provenance["recipe"]
    assert prov["cmd"] == r.cmd and prov["parents"] == [base.id] and prov["exit_status"] == 0
    assert prov["inputs"] == {str(data): blake3.blake3(data.read_bytes()).hexdigest()}
    assert prov["inputs_changed"] == [str(data)]  # the hash at `set` differs from the run's
    assert prov["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert prov["torch"].startswith("2.") and prov["seconds"] > 0
    assert str(dirs.path(base)) in prov["command"]  # the parent read in place, from the mount
    # the same training run on a plain copy gives the same bytes: the mount served the parent exactly
    ref = lin.s.run(r.cmd, [dirs.path(base)], tmp_path / "direct", "run-a")
    assert v.files["model.safetensors"].key == blake3.blake3((ref / "model.safetensors").read_bytes()).digest()
    assert lin.s.runs() == {"run-a": 2}


@pytest.mark.parametrize(("extra", "why"), [
    (("--fail",), "exited with status 3"),
    (("--nothing",), "wrote nothing into {out}"),
    (("--sleep", "30"), "ran out of time"),
])
def test_a_failed_run_makes_no_version_and_says_why(lin: Lineage, dirs: MountedVersions, ex: LocalExecutor,
                                                    extra: tuple[str, ...], why: str) -> None:
    r = Recipe("run-bad", lin.s.train_cmd(*extra), timeout=1.5)
    with pytest.raises(RecipeFailed, match=why.replace("{", r"\{")) as e:
        make_version(lin.repo, r, [lin.repo.resolve("base")], dirs, ex)
    if "--fail" in extra:
        assert e.value.tail[-1] == "training run-bad: loss is nan at step 1"
    with pytest.raises(NotFound):
        lin.repo.model("run-bad")
    assert not list(Path(tempfile.gettempdir()).glob("modelfs-recipe-run-bad-*"))  # {out} removed


def test_the_parent_directory_is_read_only(lin: Lineage, dirs: MountedVersions, ex: LocalExecutor) -> None:
    r = Recipe("run-ro", "touch {parent}/scribble && cp {parent}/* {out}/", timeout=10)
    with pytest.raises(RecipeFailed, match="exited with status 1") as e:
        make_version(lin.repo, r, [lin.repo.resolve("base")], dirs, ex)
    assert "Read-only file system" in "\n".join(e.value.tail)


TORCH_TRAIN = r'''
import sys, torch
from safetensors.torch import load_file, save_file
parent, out = sys.argv[1:3]
torch.manual_seed(0)
sd = load_file(f"{parent}/model.safetensors")
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
net.load_state_dict({k.replace("fc1", "0").replace("fc2", "2"): v for k, v in sd.items()})
opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
x = torch.randn(64, 16)
for _ in range(2):
    loss = torch.nn.functional.mse_loss(net(x), torch.sin(x[:, :4]))
    opt.zero_grad(); loss.backward(); opt.step()
save_file({k.replace("0.", "fc1.").replace("2.", "fc2."): v.detach().contiguous()
           for k, v in net.state_dict().items()}, f"{out}/model.safetensors")
'''


def test_a_torch_recipe_really_trains(lin: Lineage, dirs: MountedVersions, ex: LocalExecutor,
                                      tmp_path: Path) -> None:
    script = tmp_path / "torch_train.py"
    script.write_text(TORCH_TRAIN)
    r = Recipe("run-torch", f"{sys.executable} {script} {{parent}} {{out}}", timeout=60)
    v = make_version(lin.repo, r, [lin.repo.resolve("base")], dirs, ex)
    from safetensors.numpy import load_file

    new = load_file(str(wait_visible(dirs, [v])[0] / "model.safetensors"))  # a mount shows it soon
    old = load_file(str(dirs.path(lin.repo.resolve("base")) / "model.safetensors"))
    assert set(new) == set(old) and all((new[k] != old[k]).any() for k in new)  # every tensor moved
