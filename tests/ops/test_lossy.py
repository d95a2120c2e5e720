"""Lossy mode end to end (docs/lossy.md): the gate, what is stored, what a reader gets back.

Real parts throughout: an MLP trained by Adam (tests/lossyhelp.py) with a held-out loss as the
gate's test, run as a real command; the real MiniLM fine-tuned on the CPU (the `trained`
fixture) for the storage figures; the real CLI in a subprocess; a real FUSE mount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lossyhelp import heldout_cmd, init_mlp, train_mlp  # noqa: E402

from modelfs.ops.checks import Checks  # noqa: E402
from modelfs.ops.lossy import GateOptions, gate, import_lossy  # noqa: E402
from modelfs.repo import CHANGE_LIMIT, Repo, source_files  # noqa: E402


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base, ft (3 Adam steps on base), ft2 (2 more on ft), and the held-out test command."""
    d = tmp_path_factory.mktemp("mlp")
    base = init_mlp(d / "base")
    ft = train_mlp(base, d / "ft", steps=3, seed=1)
    ft2 = train_mlp(ft, d / "ft2", steps=2, seed=2)
    (d / "cmd").write_text(heldout_cmd(d))
    return {"base": base, "ft": ft, "ft2": ft2, "dir": d}


def _heldout(cmd: str, path: Path) -> float:
    out = subprocess.run(cmd.replace("{path}", str(path)), shell=True, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["loss"])


def _repo_with_base(tmp_path: Path, mlp: dict[str, Path]) -> Repo:
    repo = Repo.init(tmp_path / "store")
    repo.import_dir(mlp["base"], "mlp")
    Checks(repo).add("heldout", (mlp["dir"] / "cmd").read_text())
    return repo


def test_reconstruction_read_back_is_what_the_gate_checked(tmp_path: Path, mlp: dict[str, Path]) -> None:
    """The bytes the gate's tests ran on are the bytes export and reads give, bit for bit; a
    lossy child of a lossy parent is predicted from the parent's reconstruction."""
    repo = _repo_with_base(tmp_path, mlp)
    try:
        files = source_files(mlp["ft"])
        decision, work = gate(repo, "ft", files, [repo.resolve("mlp")], GateOptions(("heldout",)))
        assert decision.lossy and work is not None
        checked = {p: Path(src).read_bytes() for p, src in decision.plan.files.items()}
        v = repo.commit_files("ft", decision.plan.files, parents=["mlp"], hints=decision.plan.chunk_hints,
                              provenance=decision.provenance())
        work.cleanup()
        repo.export("ft", tmp_path / "out")
        assert {p: (tmp_path / "out" / p).read_bytes() for p in v.files} == checked
        assert checked["model.safetensors"] != (mlp["ft"] / "model.safetensors").read_bytes()
        assert checked["config.json"] == (mlp["ft"] / "config.json").read_bytes()
        rec = v.provenance["lossy"]
        assert rec["decision"] == "lossy" and 0 < rec["max_error_ratio"] < CHANGE_LIMIT
        test = rec["attempts"][-1]["tests"]["heldout"]
        assert test["passed"] and test["relative_change"]["loss"] <= 0.005
        assert test["reconstruction"]["loss"] == _heldout((mlp["dir"] / "cmd").read_text(), tmp_path / "out")
        # stored as quantised deltas against the parent's chunks
        parent = {t.name: t for t in repo.file_record(repo.resolve("mlp").files["model.safetensors"]).tensors()}
        mine = {t.name: t for t in repo.file_record(v.files["model.safetensors"]).tensors()}
        r = repo.chunk_record(mine["l1.weight"].chunks[0])
        assert r.codec == "qdelta" and r.bases[0][0] == parent["l1.weight"].chunks[0]
        assert repo.chunk_record(mine["step"].chunks[0]).codec != "qdelta"  # integers stay exact

        # a lossy child of the lossy version: its change is measured from the reconstruction
        res = import_lossy(repo, mlp["ft2"], "ft", options=GateOptions(("heldout",)))
        assert res.decision.lossy
        v2 = res.version
        mine2 = {t.name: t for t in repo.file_record(v2.files["model.safetensors"]).tensors()}
        assert repo.chunk_record(mine2["l1.weight"].chunks[0]).bases[0][0] == mine["l1.weight"].chunks[0]
        recon1 = load_file(str(tmp_path / "out" / "model.safetensors"))["l1.weight"].astype(np.float64)
        orig2 = load_file(str(mlp["ft2"] / "model.safetensors"))["l1.weight"].astype(np.float64)
        repo.export("ft@2", tmp_path / "out2")
        recon2 = load_file(str(tmp_path / "out2" / "model.safetensors"))["l1.weight"].astype(np.float64)
        # the change is measured from the parent's reconstruction, less the parent's own error:
        # never more than the true change from the parent's original
        e1 = v.provenance["lossy"]["errors"]["l1.weight"]
        assert e1 == pytest.approx(np.linalg.norm(recon1 - load_file(str(mlp["ft"] / "model.safetensors"))
                                                  ["l1.weight"].astype(np.float64)), rel=1e-6)
        err = np.linalg.norm(recon2 - orig2)
        ratio = err / (np.linalg.norm(orig2 - recon1) - e1)
        assert ratio == pytest.approx(v2.provenance["lossy"]["per_tensor"]["l1.weight"][0], rel=1e-3)
        orig1 = load_file(str(mlp["ft"] / "model.safetensors"))["l1.weight"].astype(np.float64)
        assert ratio < CHANGE_LIMIT and err / np.linalg.norm(orig2 - orig1) < CHANGE_LIMIT
        report = repo.maintenance().fsck()
        assert report.ok, report  # the reconstruction's blake3 is what fsck verifies
    finally:
        repo.close()


def test_gate_refuses_a_too_coarse_step_then_takes_a_finer_one(tmp_path: Path, mlp: dict[str, Path]) -> None:
    repo = _repo_with_base(tmp_path, mlp)
    try:
        res = import_lossy(repo, mlp["ft"], "ft", ["mlp"], GateOptions(("heldout",), aims=(0.5, 0.05)))
        rec = res.version.provenance["lossy"]
        first, second = rec["attempts"]
        assert not first["passed"] and first["change_check"] is False and first["max_error_ratio"] > CHANGE_LIMIT
        assert "of its change" in first["why"]
        assert second["passed"] and second["max_error_ratio"] < 0.05
        assert rec["aim"] == 0.05 and rec["max_error_ratio"] == second["max_error_ratio"]
    finally:
        repo.close()


def test_gate_refusing_every_step_stores_the_original_exactly(tmp_path: Path, mlp: dict[str, Path],
                                                              blake3_of_file: Callable[[Path], str]) -> None:
    repo = _repo_with_base(tmp_path, mlp)
    try:
        res = import_lossy(repo, mlp["ft"], "ft", ["mlp"], GateOptions(("heldout",), tolerance=1e-9))
        v = res.version
        assert not res.decision.lossy and "lossy" not in v.provenance
        rec = v.provenance["lossy_gate"]
        assert rec["decision"].startswith("exact") and len(rec["attempts"]) == 2
        assert all(not a["passed"] and "tolerance" in a["why"] for a in rec["attempts"])
        assert v.files["model.safetensors"].blake3_hex == blake3_of_file(mlp["ft"] / "model.safetensors")
    finally:
        repo.close()


def test_real_minilm_fine_tune_stores_small_and_keeps_its_change(tmp_path: Path, trained: Any) -> None:
    """A real CPU fine-tune of MiniLM: every changed tensor's error < 10% of its change, and
    the codes far smaller than the lossless delta."""
    repo = Repo.init(tmp_path / "store")
    try:
        repo.import_dir(trained.base, "base")
        res = import_lossy(repo, trained.ft, "ft", ["base"])
        rec = res.version.provenance["lossy"]
        assert res.decision.lossy and rec["tensors_lossy"] > 50
        assert rec["max_error_ratio"] < CHANGE_LIMIT
        assert rec["lossy_bytes"] * 3 < rec["exact_delta_bytes"]
        assert all(r < CHANGE_LIMIT for r, _ in rec["per_tensor"].values())
        report = repo.maintenance().fsck()
        assert report.ok, report
    finally:
        repo.close()


def test_cli_lossy_import_shows_everywhere(tmp_path: Path, mlp: dict[str, Path], cli: Callable[..., Any]) -> None:
    s = tmp_path / "s"
    assert cli("init", store=s).returncode == 0
    assert cli("import", mlp["base"], "--model", "mlp", store=s).returncode == 0
    assert cli("test", "add", "heldout", "--cmd", (mlp["dir"] / "cmd").read_text(), store=s).returncode == 0
    r = cli("import", mlp["ft"], "--model", "ft", "--parent", "mlp", "--lossy", "--gate", "heldout", store=s)
    assert r.returncode == 0, r.stderr
    assert "lossy: error at worst" in r.stdout and "gate heldout: loss" in r.stdout and "lossily" in r.stdout
    assert r.stdout.count("kept exact") == 1  # the integer tensor, said once
    show = cli("show", "ft", store=s).stdout
    assert "lossy    yes: error at worst" in show and "original bytes are not kept" in show
    assert "aim 0.097" in show and "accepted" in show
    assert "lossy (error" in cli("log", "ft", store=s).stdout
    du = cli("du", store=s).stdout.splitlines()
    assert "lossy" in du[0].split() and du[[ln.split()[0] for ln in du].index("ft")].split()[2] == "1"
    assert json.loads(cli("du", "--json", store=s).stdout)["models"]["ft"]["lossy_versions"] == 1
    # the next version, lossy with a recipe: the recipe is kept as for a plain import
    r = cli("import", mlp["ft2"], "--model", "ft", "--lossy", "--recipe", "cp -r {parent}/. {out}", store=s)
    assert r.returncode == 0 and "lossily" in r.stdout, r.stderr
    assert "cp -r" in cli("recipe", "show", "ft", store=s).stdout


def test_cli_bad_input_is_one_line_and_stores_nothing_wrong(tmp_path: Path, mlp: dict[str, Path],
                                                             cli: Callable[..., Any], make_safetensors: Any,
                                                             blake3_of_file: Callable[[Path], str]) -> None:
    s = tmp_path / "s"
    cli("init", store=s)
    cli("import", mlp["base"], "--model", "mlp", store=s)
    for args, says in [(["--tolerance", "0.01"], "give --lossy too"),
                       (["--lossy", "--gate", "nosuch"], "unknown test 'nosuch'"),
                       (["--lossy", "--tolerance", "2"], "--tolerance must be between 0 and 1")]:
        r = cli("import", mlp["ft"], "--model", "ft", "--parent", "mlp", *args, store=s)
        assert r.returncode != 0 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "ft" not in cli("du", store=s).stdout
    # integers and blobs only: stored exactly, said once
    ints = tmp_path / "ints"
    make_safetensors(ints / "model.safetensors", {"ids": np.arange(1000, dtype=np.int64)})
    (ints / "notes.bin").write_bytes(os.urandom(5000))
    cli("import", ints, "--model", "ints", store=s)
    (ints / "notes.bin").write_bytes(os.urandom(5000))
    make_safetensors(ints / "model.safetensors", {"ids": np.arange(1000, dtype=np.int64) * 2})
    r = cli("import", ints, "--model", "ints", "--lossy", store=s)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("lossy: stored exactly") == 1 and "integer tensors" in r.stdout
    v = json.loads(cli("show", "ints", "--json", store=s).stdout)
    assert "lossy" not in v["provenance"] and v["provenance"]["lossy_gate"]["decision"].startswith("exact")
    assert v["files"]["model.safetensors"]["key"] == blake3_of_file(ints / "model.safetensors")
    # the base of a lineage is always exact
    r = cli("import", mlp["base"], "--model", "fresh", "--lossy", "--no-infer", store=s)
    assert r.returncode == 0 and "a lineage's base always is" in r.stdout


def test_mount_writes_of_a_lossy_model_commit_lossily(tmp_path: Path, mlp: dict[str, Path],
                                                     cli: Callable[..., Any]) -> None:
    """`modelfs config M lossy on`: a file copied into M's directory in the mount commits as a
    gated lossy version, marked in info.json and the user.modelfs.lossy xattr."""
    from fs.mounthelp import FUSE_MISSING, start_mount, wait_for

    if FUSE_MISSING:
        pytest.fail(FUSE_MISSING)
    s = tmp_path / "s"
    cli("init", store=s)
    cli("import", mlp["base"], "--model", "ft", store=s)
    cli("test", "add", "heldout", "--cmd", (mlp["dir"] / "cmd").read_text(), store=s)
    for k, val in (("lossy", "on"), ("lossy-gate", "heldout")):
        assert cli("config", "ft", k, val, store=s).returncode == 0
    mnt = tmp_path / "mnt"
    m = start_mount(s, mnt, tmp_path / "mount.log")
    try:
        shutil.copyfile(mlp["ft"] / "model.safetensors", mnt / "ft" / "model.safetensors")
        assert wait_for(lambda: os.getxattr(mnt / "ft", "user.modelfs.ref") == b"ft@2", 60), m.log_text()
        info = json.loads((mnt / ".lineage" / "ft@2" / "info.json").read_text())
        assert info["lossy"] is True and info["provenance"]["lossy"]["decision"] == "lossy"
        mark = json.loads(os.getxattr(mnt / "ft@2", "user.modelfs.lossy"))
        assert 0 < mark["max_error_ratio"] < CHANGE_LIMIT
        assert "user.modelfs.lossy" not in os.listxattr(mnt / "ft@1")
        got = (mnt / "ft@2" / "model.safetensors").read_bytes()
        assert got != (mlp["ft"] / "model.safetensors").read_bytes()  # the reconstruction
    finally:
        m.stop()
    assert cli("fsck", store=s).returncode == 0


def test_a_lossy_parents_untouched_tensors_are_inherited_and_a_prune_keeps_its_zeros(
        tmp_path: Path, mlp: dict[str, Path], make_safetensors: Any) -> None:
    """A child that changed only some tensors of a lossy parent stores the rest as the parent's
    reconstruction (the same chunks, nothing new); a magnitude prune keeps its exact zeros."""
    repo = _repo_with_base(tmp_path, mlp)
    try:
        import_lossy(repo, mlp["ft"], "ft", ["mlp"])
        parent = {t.name: t for t in repo.file_record(repo.resolve("ft").files["model.safetensors"]).tensors()}
        t = load_file(str(mlp["ft"] / "model.safetensors"))
        w = t["l1.weight"].copy()
        w[np.abs(w) < np.quantile(np.abs(w), 0.3)] = 0.0
        child = tmp_path / "pruned"
        make_safetensors(child / "model.safetensors", {**t, "l1.weight": w})
        res = import_lossy(repo, child, "pruned", ["ft"])
        rec = res.version.provenance["lossy"]
        assert res.decision.lossy and rec["tensors_inherited"] == 3 and rec["tensors_lossy"] == 1
        mine = {t.name: t for t in repo.file_record(res.version.files["model.safetensors"]).tensors()}
        for name in ("l1.bias", "l2.weight", "l2.bias"):
            assert mine[name].chunks == parent[name].chunks
        assert repo.chunk_record(mine["l1.weight"].chunks[0]).codec == "qdelta-prune"
        repo.export("pruned", tmp_path / "out")
        got = load_file(str(tmp_path / "out" / "model.safetensors"))["l1.weight"]
        assert np.array_equal(got == 0, w == 0)  # the prune's zeros, exactly, and no others
        assert rec["max_error_ratio"] < CHANGE_LIMIT
    finally:
        repo.close()
