"""The cascading update on real recipes (AdamW steps on a tiny MLP, a merge) over a real mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from recipehelp import Lineage, build_lineage, new_base
from safetensors.numpy import load_file

from modelfs.cli.version_dirs import MountedVersions
from modelfs.errors import ModelfsError, NotFound
from modelfs.fs import control
from modelfs.fs.handle import force_unmount
from modelfs.ops.cascade import CascadeLog, CycleError, make_plan
from modelfs.ops.cascade_run import checks_modules, run_cascade
from modelfs.ops.executors import LocalExecutor
from modelfs.ops.recipes import Recipes, wait_visible

DIAMOND = {"ft": (["base"], None), "ft2": (["ft"], None), "sib": (["base"], "SEED2"),
           "merged": (["ft", "sib"], "MERGE"), "plain": (["base"], "NONE"), "below": (["plain"], None)}


def _lineage(tmp: Path, spec: dict[str, tuple[list[str], str | None]]) -> Lineage:
    """`build_lineage`, each model first made by plain training (MERGE: the average of its
    parents), then given its recipe: None the plain training one, SEED2 another seed, MERGE
    the merge, NONE no recipe, anything else train.py options (--fail, --sleep 30 ...)."""
    from recipehelp import scripts

    s = scripts(tmp)
    lin = build_lineage(tmp, {n: (p, s.merge_cmd() if k == "MERGE" else s.train_cmd())
                              for n, (p, k) in spec.items()}, recipes=False)
    for name, (_, kind) in spec.items():
        if kind != "NONE":
            cmd = {None: s.train_cmd(), "SEED2": s.train_cmd("--seed", "2"), "MERGE": s.merge_cmd()}.get(
                kind) or s.train_cmd(*(kind or "").split())
            Recipes(lin.repo).set(name, cmd)
    return lin


@pytest.fixture
def ex() -> Iterator[LocalExecutor]:
    e = LocalExecutor(2)
    try:
        yield e
    finally:
        e.close()


def test_a_cascade_re_derives_each_descendant_once_from_the_new_parents(tmp_path: Path, ex: LocalExecutor) -> None:
    lin = _lineage(tmp_path, DIAMOND)
    mods = checks_modules()
    if mods is not None:  # tests over the lineage run on every new version
        mods[0].Checks(lin.repo).add("heldout", lin.s.check_cmd(100.0))
    old = {m: lin.repo.resolve(m) for m in ("ft", "ft2", "sib", "merged", "plain", "below")}
    new_base(lin)
    plan = make_plan(lin.repo, "base")
    # the plan: a merge after both its parents, each model once, stopping where a recipe is missing
    assert [n.model for n in plan.nodes] == ["ft", "ft2", "sib", "merged"]
    assert plan.node("merged").parents == ("ft", "sib") and plan.node("merged").head == old["merged"].id
    assert dict(plan.left) == {"plain": "no recipe"}  # and `below` is never reached through it
    assert plan.source_ref == "base@2"
    assert CascadeLog(lin.repo).history() == []  # planning stores nothing
    assert make_plan(lin.repo, "base", from_ref="base@1").nodes == ()  # what every child was made from
    with MountedVersions(lin.store) as dirs:
        rep = run_cascade(lin.repo, plan, dirs, ex)
        assert rep.failed == [] and rep.runs == 4
        assert lin.s.runs() == {"ft": 1, "ft2": 1, "sib": 1, "merged": 1}  # each node exactly once
        new = {m: lin.repo.resolve(m) for m in old}
        base2 = lin.repo.resolve("base@2")
        assert new["ft"].derived_from == (base2.id,) and new["ft"].previous == old["ft"].id
        assert new["ft2"].derived_from == (new["ft"].id,)
        assert new["merged"].derived_from == (new["ft"].id, new["sib"].id)
        assert new["merged"].how == "merge" and new["ft"].how == "finetune"  # as they were made before
        assert (new["plain"], new["below"]) == (old["plain"], old["below"])  # no recipe: left as is
        assert new["ft"].provenance["cascade"] == plan.id
        # the merge really averaged the new parents, read back through the mount
        p = {m: load_file(str(wait_visible(dirs, [new[m]])[0] / "model.safetensors")) for m in ("ft", "sib", "merged")}
        for k in p["merged"]:
            np.testing.assert_allclose(p["merged"][k], (p["ft"][k] + p["sib"][k]) / 2, rtol=1e-6)
    assert rep.modelfs_seconds < rep.wall and rep.recipe_seconds > 0
    if mods is not None:
        assert all(len(rep.nodes[m].tests) == 1 and rep.nodes[m].tests[0]["passed"] for m in rep.nodes)
        assert mods[1].Results(lin.repo).get(mods[0].Checks(lin.repo).get("heldout").hash, new["merged"].id)
    (rec,) = CascadeLog(lin.repo).history()
    assert rec["state"] == "finished"
    assert make_plan(lin.repo, "base").nodes == ()  # up to date now: a second update runs nothing


def test_a_failing_recipe_stops_only_its_own_subtree(tmp_path: Path, ex: LocalExecutor) -> None:
    lin = _lineage(tmp_path, {"bad": (["base"], "--fail"), "under": (["bad"], None),
                              "empty": (["base"], "--nothing"), "slow": (["base"], "--sleep 30"),
                              "good": (["base"], None), "mix": (["good", "bad"], "MERGE")})
    Recipes(lin.repo).set("slow", lin.s.train_cmd("--sleep", "30"), timeout=1.0)
    new_base(lin)
    before = {m.name: m.count for m in lin.repo.models()}
    with MountedVersions(lin.store) as dirs:
        rep = run_cascade(lin.repo, make_plan(lin.repo, "base"), dirs, ex)
    st = rep.nodes
    assert {m: s.state for m, s in st.items()} == {"bad": "failed", "empty": "failed", "slow": "failed",
                                                  "good": "done", "under": "blocked", "mix": "blocked"}
    assert "exited with status 3" in (st["bad"].error or "")
    assert st["bad"].tail[-1] == "training bad: loss is nan at step 1"
    assert "wrote nothing into {out}" in (st["empty"].error or "")
    assert "ran out of time (1 s)" in (st["slow"].error or "")
    assert sorted(rep.failed) == ["bad", "empty", "slow"]
    after = {m.name: m.count for m in lin.repo.models()}
    assert {m for m in after if after[m] != before[m]} == {"good"}  # no version from a failed node
    assert lin.s.runs().get("under") is None


def test_a_cycle_or_an_unknown_model_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    lin = _lineage(tmp_path, {"a": (["base"], None)})
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        make_plan(lin.repo, "nope")
    with pytest.raises(ModelfsError, match="not a version of base"):
        make_plan(lin.repo, "base", from_ref="a")
    src = lin.tmp / "src" / "a"
    lin.repo.import_dir(src, "base", parents=["a"])  # base's head now derives from its own child
    with pytest.raises(CycleError, match="cycle"):
        make_plan(lin.repo, "base")
    assert CascadeLog(lin.repo).history() == []


def test_gating_stores_a_failing_version_beside_the_head_and_skips_its_subtree(tmp_path: Path,
                                                                             ex: LocalExecutor) -> None:
    mods = checks_modules()
    if mods is None:
        pytest.skip("tests over the lineage (modelfs.ops.checks) are not installed")
    lin = _lineage(tmp_path, {"ft": (["base"], None), "ft2": (["ft"], None), "sib": (["base"], "SEED2")})
    checks = mods[0].Checks(lin.repo)
    checks.add("heldout", lin.s.check_cmd(100.0))  # a held-out loss every model passes
    checks.add("strict", lin.s.check_cmd(1e-9), models="ft")  # one no MLP reaches
    old = {m: lin.repo.resolve(m) for m in ("ft", "ft2", "sib")}
    new_base(lin)
    with MountedVersions(lin.store) as dirs:
        rep = run_cascade(lin.repo, make_plan(lin.repo, "base", gate=True), dirs, ex)
    assert rep.nodes["ft"].state == "gated" and not rep.nodes["ft"].head_moved
    assert rep.nodes["ft2"].state == "blocked" and rep.nodes["sib"].state == "done"
    assert lin.repo.resolve("ft").id == old["ft"].id  # the head stays on the good version
    gated = lin.repo.resolve("ft@2")
    assert gated.previous == old["ft"].id and gated.provenance["cascade"]  # stored, reachable
    assert lin.repo.resolve("sib").number == 2  # passed: made the head
    assert lin.repo.resolve("ft2").id == old["ft2"].id and "ft2" not in lin.s.runs()
    r = mods[1].Results(lin.repo).get(checks.get("strict").hash, gated.id)
    assert r is not None and not r.passed


def _done(lin: Lineage) -> int:
    return sum(1 for k, v in lin.repo.table("cascades").items() if b"\0" in k and v["state"] == "done")


def _sweep_mounts(store: Path) -> None:
    """The private mount of a killed `modelfs update` outlives it: take it down."""
    for m in control.mounts():
        try:
            if os.fsdecode(os.getxattr(m.mountpoint, control.STORE_XATTR)) != str(store):
                continue
        except OSError:
            continue
        pid = control.daemon_pid(Path(m.mountpoint))
        if pid:
            os.kill(pid, signal.SIGTERM)
            control.wait_exit(pid, 10)
        force_unmount(m.mountpoint)


def test_a_killed_cascade_resumes_without_redoing_finished_nodes(tmp_path: Path) -> None:
    chain = {f"n{i}": ([f"n{i - 1}" if i > 1 else "base"], "--sleep 0.2") for i in range(1, 6)}
    lin = _lineage(tmp_path, chain)
    new_base(lin)
    store = str(lin.store.resolve())
    cmd = [sys.executable, "-m", "modelfs.cli.main", "--store", store, "update"]
    try:
        log = tmp_path / "update.log"
        with open(log, "wb") as out:
            p = subprocess.Popen([*cmd, "base"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while _done(lin) < 2:
            assert p.poll() is None and time.monotonic() < deadline, \
                f"the cascade ended before it was killed: {log.read_text()}"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        finished = {k.split(b"\0")[1].decode() for k, v in lin.repo.table("cascades").items()
                    if b"\0" in k and v["state"] == "done"}
        assert 2 <= len(finished) < 5
        time.sleep(0.8)  # a recipe that was running when its cascade died may still finish
        r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "resuming cascade" in r.stderr
    finally:
        _sweep_mounts(lin.store.resolve())
    runs = lin.s.runs()
    assert all(runs[m] == 1 for m in finished), runs  # what had finished was not run again
    assert set(runs) == set(chain)
    for m in chain:  # exactly one new version each, derived from its parent's new one
        assert lin.repo.model(m).count == 2
    assert lin.repo.resolve("n5").derived_from == (lin.repo.resolve("n4").id,)
    assert CascadeLog(lin.repo).history()[0]["state"] == "finished"
    with pytest.raises(NotFound, match="no interrupted cascade"):
        CascadeLog(lin.repo).interrupted()
