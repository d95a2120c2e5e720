"""Tests over the lineage, for real: definitions in a real store, commands run through a real
FUSE mount of it (one read-only mount for the module), results stored and reused.

The lineage: base@1 -> base@2 -> ft@1 [finetune] -> ft@2 ; big@1 [cast] from base@2 (its
tensor's norm is over the threshold, so the norm test fails there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkhelp import FUSE_MISSING, norm_cmd, runs, tiny, write_script

from modelfs.cli.version_dirs import MountedVersions
from modelfs.errors import Conflict, InvalidName, ModelfsError, NotFound
from modelfs.fs import control
from modelfs.ops.checks import Check, Checks, check_command, fill_command
from modelfs.ops.executors import get_executor
from modelfs.ops.results import (
    Results,
    Runner,
    metrics_of,
    pairs,
    remove_test,
    select_versions,
    status_by_version,
)
from modelfs.repo import Repo, Version

pytestmark = [pytest.mark.mount, pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)]


@dataclass
class World:
    root: Path
    repo: Repo
    dirs: MountedVersions
    script: Path
    v: dict[str, Version]

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def runner(self, jobs: int = 1, timeout: float | None = None) -> Runner:
        return Runner(self.repo, self.dirs, None, jobs, timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("checks")
    repo = Repo.init(root / "store")
    v = {"base@1": repo.import_dir(tiny(root / "src" / "b1", 1.0), "base", infer_parent=False),
         "base@2": repo.import_dir(tiny(root / "src" / "b2", 1.1), "base")}
    v["ft@1"] = repo.import_dir(tiny(root / "src" / "f1", 1.2), "ft", parents=["base@2"], how="finetune")
    v["ft@2"] = repo.import_dir(tiny(root / "src" / "f2", 1.3), "ft")
    v["big@1"] = repo.import_dir(tiny(root / "src" / "g1", 9.0), "big", parents=["base@2"], how="cast")
    try:
        with MountedVersions(root / "store") as dirs:
            yield World(root, repo, dirs, write_script(root), v)
    finally:
        repo.close()


# -- definitions -------------------------------------------------------------------------------
def test_placeholders_are_checked_and_filled_shell_quoted() -> None:
    assert check_command("python t.py {path} {model} {version} {ref}") == ["path", "model", "version", "ref"]
    assert check_command("echo '{{\"a\": 1}}' {path}") == ["path"]  # literal braces
    for bad, why in [("echo {oops}", "unknown placeholder {oops}"), ("echo {path!r}", "no format"),
                     ("echo {path:>9}", "no format"), ("echo {path", "bad command"), ("echo }", "bad command"),
                     ("echo {}", "unknown placeholder"), ("   ", "empty")]:
        with pytest.raises(ModelfsError, match=why.replace("{", r"\{").replace("}", r"\}")):
            check_command(bad)
    assert fill_command("ls {path} {{x}}", {"path": "/m n/a@1"}) == "ls '/m n/a@1' {x}"


def test_definitions_add_list_rm_and_the_hash_keys_what_runs(repo: Repo) -> None:
    checks = Checks(repo)
    a = checks.add("norm", "check {path}", models="ft*")
    assert checks.get("norm") == a and [c.name for c in checks.all()] == ["norm"]
    with pytest.raises(Conflict, match="already exists"):
        checks.add("norm", "other {path}")
    renamed = Check("other-name", a.cmd, a.timeout, None, "lora")
    assert renamed.hash == a.hash  # name and matching rules do not key results
    assert Check("norm", a.cmd, 5.0).hash != a.hash  # what runs does
    assert Check("norm", "check2 {path}").hash != a.hash
    b = checks.add("norm", "check2 {path}", replace=True)
    assert checks.get("norm").cmd == "check2 {path}" and b.hash != a.hash
    for args, err in [(("bad name!", "x {path}"), InvalidName), (("n", "x {nope}"), ModelfsError)]:
        with pytest.raises(err):
            checks.add(*args)
    with pytest.raises(ModelfsError, match="more than 0"):
        checks.add("t0", "x {path}", timeout=0)
    assert [c.name for c in checks.all()] == ["norm"]  # the refused ones stored nothing
    assert checks.remove("norm")[0].name == "norm"
    with pytest.raises(NotFound, match="unknown test 'norm'"):
        checks.get("norm")
    with pytest.raises(NotFound, match="no tests are defined"):
        checks.select()


def test_matching_by_glob_how_both_or_all(world: World) -> None:
    v = world.v
    every = [v[r] for r in ("base@1", "base@2", "ft@1", "ft@2", "big@1")]

    def refs(c: Check) -> list[str]:
        return [x.ref for x in every if c.matches(x)]

    assert refs(Check("a", "x")) == [x.ref for x in every]
    assert refs(Check("a", "x", models="ft*")) == ["ft@1", "ft@2"]
    assert refs(Check("a", "x", how="finetune")) == ["ft@1"]  # the version's how: ft@2 has none
    assert refs(Check("a", "x", models="b*", how="cast")) == ["big@1"]
    with pytest.raises(NotFound, match="no version matches"):
        pairs([Check("a", "x", models="zzz*")], every)


def test_selection_one_version_a_subtree_or_all(world: World) -> None:
    r = world.repo
    assert [x.ref for x in select_versions(r, ref="ft@1")] == ["ft@1"]
    assert [x.ref for x in select_versions(r, under="ft")] == ["ft@1", "ft@2"]
    assert {x.ref for x in select_versions(r, under="base")} >= {"base@1", "base@2", "ft@1", "ft@2", "big@1"}
    assert [x.id for x in select_versions(r)] == [x.id for x in r.all_versions()]
    with pytest.raises(ModelfsError, match="not both"):
        select_versions(r, under="ft", ref="ft@1")
    with pytest.raises(NotFound):
        select_versions(r, under="nope")


def test_metrics_are_the_last_stdout_line_when_it_is_a_json_object() -> None:
    assert metrics_of('loading\n{"loss": 0.31, "acc": 0.91}\n\n') == {"loss": 0.31, "acc": 0.91}
    assert metrics_of('{"loss": 1}\ndone\n') is None
    assert metrics_of("[1, 2]\n") is None and metrics_of("") is None and metrics_of("{bad\n") is None


# -- running through the mount -------------------------------------------------------------------
def test_results_are_stored_per_version_and_known_ones_never_run_again(world: World) -> None:
    log = world.log("norm")
    checks = Checks(world.repo)
    c = checks.add("norm", norm_cmd(world.script, log, 5.0, lib=True))
    todo = pairs([c], [world.v[r] for r in ("base@1", "base@2", "ft@1", "ft@2", "big@1")])
    out = {o.version.ref: o for o in world.runner(jobs=2).run(todo)}
    assert sorted(runs(log)) == sorted(out) == ["base@1", "base@2", "big@1", "ft@1", "ft@2"]
    for ref, o in out.items():
        assert not o.cached
        assert o.result.passed == (ref != "big@1")
        assert o.result.metrics is not None and abs(o.result.metrics["norm"] - float(
            {"base@1": 1.0, "base@2": 1.1, "ft@1": 1.2, "ft@2": 1.3, "big@1": 9.0}[ref])) < 1e-4
        assert o.result.output[-2:] == (f"checked {ref}", f'{{"norm": {o.result.metrics["norm"]}}}')
        assert Results(world.repo).get(c.hash, o.version.id) == o.result
    assert out["big@1"].result.exit_code == 1 and not out["big@1"].result.timed_out
    # {path} was the mount's read-only directory of that version, never a copy
    mnt = world.dirs.root
    assert mnt is not None and control.find_mount(mnt) is not None
    for line in log.read_text().splitlines():
        ref, path, wrote = line.split()
        assert Path(path) == mnt / ref and wrote == "refused"

    again = list(world.runner().run(todo))
    assert all(o.cached for o in again) and len(runs(log)) == 5  # nothing ran
    assert [o.result for o in again] == [out[o.version.ref].result for o in again]
    forced = list(world.runner().run(pairs([c], [world.v["ft@2"]]), force=True))
    assert not forced[0].cached and runs(log)[-1] == "ft@2" and len(runs(log)) == 6

    status = status_by_version(world.repo)
    assert status[world.v["big@1"].id] == (0, 1) and status[world.v["ft@1"].id] == (1, 0)
    remove_test(world.repo, "norm")
    assert status_by_version(world.repo) == {}


def test_a_model_added_later_gets_the_test_and_only_it_runs(world: World) -> None:
    log = world.log("later")
    checks = Checks(world.repo)
    c = checks.add("later", norm_cmd(world.script, log, 5.0), models="ft*")
    assert {o.version.ref for o in world.runner().run(pairs([c], select_versions(world.repo)))} == {"ft@1", "ft@2"}
    new = world.repo.import_dir(tiny(world.root / "src" / "ft3", 1.4), "ft-late", parents=["ft@2"], how="finetune")
    out = list(world.runner().run(pairs([c], select_versions(world.repo))))
    assert [(o.version.ref, o.cached) for o in out] == [("ft@1", True), ("ft@2", True), ("ft-late@1", False)]
    assert sorted(runs(log)[:2]) == ["ft@1", "ft@2"] and runs(log)[2:] == ["ft-late@1"]
    assert out[-1].version.id == new.id and out[-1].result.passed
    # rm drops the results, unless another test runs the same definition
    twin = checks.add("later-twin", c.cmd, how="finetune")
    assert remove_test(world.repo, "later") == (c, 0)
    assert len(Results(world.repo).of_test(c.hash)) == 3
    assert remove_test(world.repo, "later-twin")[1] == 3 and twin.hash == c.hash
    assert Results(world.repo).of_test(c.hash) == {}


def test_a_test_that_hangs_is_killed_at_its_timeout_and_recorded_as_a_failure(world: World) -> None:
    checks = Checks(world.repo)
    c = checks.add("hangs", "echo starting {ref}; sleep 60", timeout=0.5, models="base")
    t = time.monotonic()
    (o,) = world.runner().run(pairs([c], [world.v["base@1"]]))
    assert time.monotonic() - t < 10
    r = o.result
    assert not r.passed and r.timed_out and r.status == "TIMEOUT" and r.timeout == 0.5
    assert r.output == ("starting base@1",)
    assert Results(world.repo).get(c.hash, world.v["base@1"].id) == r
    # a --timeout given to the run overrides the test's own
    (o2,) = world.runner(timeout=0.2).run(pairs([c], [world.v["base@2"]]))
    assert o2.result.timed_out and o2.result.timeout == 0.2
    remove_test(world.repo, "hangs")


def test_an_executor_handed_in_is_used_and_left_open(world: World) -> None:
    log = world.log("shared-ex")
    c = Checks(world.repo).add("shared-ex", norm_cmd(world.script, log, 5.0), models="ft")
    ex = get_executor("local", 2)
    try:
        r = Runner(world.repo, world.dirs, ex)
        assert [o.result.passed for o in r.run(pairs([c], world.repo.versions("ft")))] == [True, True]
        assert r.runs == 2
        assert r.one(c, world.v["ft@1"], force=True).result.passed and r.runs == 3
    finally:
        ex.close()
        remove_test(world.repo, "shared-ex")
