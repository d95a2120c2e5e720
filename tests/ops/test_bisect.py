"""Bisect over real lineages: chains of 1, 2, 5 and 9 versions with the failure brought in at
different points (or at the root, or never), a path across models, known results reused,
--good and --path. Every probe is a real run of a real check through one FUSE mount.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkhelp import FUSE_MISSING, norm_cmd, runs, tiny, write_script

from modelfs.cli.version_dirs import MountedVersions
from modelfs.errors import ModelfsError
from modelfs.ops.bisect import (
    FOUND,
    NEVER_FAILS,
    ROOT_FAILS,
    ancestry,
    bisect,
    first_parent,
    given_path,
)
from modelfs.ops.checks import Check, Checks
from modelfs.ops.results import Runner
from modelfs.repo import Repo, Version

pytestmark = [pytest.mark.mount, pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)]

LIMIT = 3.0  # the norm test passes below this
# (chain length, index of the first failing version or None for never)
CHAINS = [(1, 0), (1, None), (2, 0), (2, 1), (2, None), (5, 0), (5, 2), (5, 4), (5, None),
          (9, 0), (9, 1), (9, 4), (9, 8), (9, None)]


def chain_name(n: int, bad: int | None) -> str:
    return f"c{n}-{'none' if bad is None else bad}"


@dataclass
class World:
    root: Path
    repo: Repo
    dirs: MountedVersions
    script: Path
    check: Check
    log: Path

    def bisect(self, check: Check, path: list[Version], good: bool = False):  # type: ignore[no-untyped-def]
        return bisect(self.repo, Runner(self.repo, self.dirs), check, path, good_given=good)

    def fresh_check(self, name: str) -> tuple[Check, Path]:
        """A test of its own (its own log, its own results), so cases do not share results."""
        log = self.root / f"{name}.log"
        return Checks(self.repo).add(name, norm_cmd(self.script, log, LIMIT) + f" # {name}"), log


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bisect")
    repo = Repo.init(root / "store")
    src = root / "src"
    for n, bad in CHAINS:
        name = chain_name(n, bad)
        for i in range(n):
            norm = (5.0 if bad is not None and i >= bad else 1.0) + 0.01 * i
            repo.import_dir(tiny(src / f"{name}-{i}", norm, seed=i), name, infer_parent=i > 0, message=f"step {i}")
    # across models: base@1 -> base@2 -> ft@1 [finetune] -> ft@2 -> q@1 [cast]: q brings the failure in
    repo.import_dir(tiny(src / "b1", 1.0), "base", infer_parent=False)
    repo.import_dir(tiny(src / "b2", 1.1), "base")
    repo.import_dir(tiny(src / "f1", 1.2), "ft", parents=["base@2"], how="finetune")
    repo.import_dir(tiny(src / "f2", 1.3), "ft")
    repo.import_dir(tiny(src / "q1", 7.0), "q", parents=["ft@2"], how="cast", message="cast with a bad scale")
    # a merge: mix@1 from x@1 (passes) and y@1 (fails); the failure came through its second parent
    repo.import_dir(tiny(src / "x1", 1.0), "x", infer_parent=False)
    repo.import_dir(tiny(src / "y0", 1.0), "y", infer_parent=False)
    repo.import_dir(tiny(src / "y1", 6.0), "y", how="finetune")
    repo.import_dir(tiny(src / "m1", 4.0), "mix", parents=["x@1", "y@2"], how="average")
    log = root / "norm.log"
    script = write_script(root)
    check = Checks(repo).add("norm", norm_cmd(script, log, LIMIT))
    try:
        with MountedVersions(root / "store") as dirs:
            yield World(root, repo, dirs, script, check, log)
    finally:
        repo.close()


@pytest.mark.parametrize(("n", "bad"), CHAINS, ids=[chain_name(n, b) for n, b in CHAINS])
def test_bisect_finds_the_first_failing_version_in_log_n_runs(world: World, n: int, bad: int | None) -> None:
    name = chain_name(n, bad)
    head = world.repo.resolve(name)
    path = ancestry(world.repo, head)
    assert [v.ref for v in path] == [f"{name}@{i + 1}" for i in range(n)]
    before = len(runs(world.log))
    b = world.bisect(world.check, path)
    ran = runs(world.log)[before:]
    assert b.runs == len(ran) <= 1 + math.ceil(math.log2(n)) and b.reused == 0
    assert set(ran) <= {v.ref for v in path} and len(set(ran)) == len(ran)  # no version run twice
    if bad is None:
        assert b.verdict == NEVER_FAILS and b.first_bad is None and ran == [head.ref]
    elif bad == 0:
        assert b.verdict == ROOT_FAILS and b.first_bad is not None and b.first_bad.ref == f"{name}@1"
        assert b.last_good is None
    else:
        assert b.verdict == FOUND
        assert b.first_bad is not None and b.first_bad.ref == f"{name}@{bad + 1}"
        assert b.last_good is not None and b.last_good.ref == f"{name}@{bad}"
        assert b.step() == f"a new version of {name}: step {bad}"
    # a second bisect reuses every result: nothing runs, the answer is the same
    again = world.bisect(world.check, path)
    assert again.runs == 0 and len(runs(world.log)) == before + len(ran)
    assert (again.verdict, again.first_bad, again.last_good) == (b.verdict, b.first_bad, b.last_good)


def test_known_results_narrow_the_search_before_anything_runs(world: World) -> None:
    check, log = world.fresh_check("narrow")
    path = ancestry(world.repo, world.repo.resolve("c9-4"))
    runner = Runner(world.repo, world.dirs)
    assert runner.one(check, path[1]).result.passed and not runner.one(check, path[6]).result.passed
    assert runs(log) == ["c9-4@2", "c9-4@7"]
    b = world.bisect(check, path)
    assert b.verdict == FOUND and b.first_bad == path[4] and b.last_good == path[3]
    ran = runs(log)[2:]
    assert b.runs == len(ran) <= math.ceil(math.log2(6 - 1)) and "c9-4@9" not in ran  # REF never run
    assert {p.version.ref for p in b.probes if p.cached} == {"c9-4@2", "c9-4@7"}


def test_good_bounds_the_path_and_is_taken_as_passing(world: World) -> None:
    check, log = world.fresh_check("good")
    head, good = world.repo.resolve("c9-8"), world.repo.resolve("c9-8@5")
    path = ancestry(world.repo, head, good)
    assert [v.number for v in path] == [5, 6, 7, 8, 9]
    b = world.bisect(check, path, good=True)
    assert b.verdict == FOUND and b.first_bad == head and b.last_good is not None and b.last_good.number == 8
    assert "c9-8@5" not in runs(log) and b.runs <= 1 + math.ceil(math.log2(4))
    with pytest.raises(ModelfsError, match="not on c9-8@9's first-parent ancestry"):
        ancestry(world.repo, head, world.repo.resolve("c5-2@1"))
    with pytest.raises(ModelfsError, match="nothing lies between"):
        world.bisect(check, ancestry(world.repo, head, head), good=True)
    bad_good = ancestry(world.repo, world.repo.resolve("c5-2"), world.repo.resolve("c5-2@4"))
    world.bisect(check, bad_good[1:])  # c5-2@5 is known to fail now
    Runner(world.repo, world.dirs).one(check, bad_good[0])  # and c5-2@4 too
    with pytest.raises(ModelfsError, match="known to fail at --good c5-2@4"):
        world.bisect(check, bad_good, good=True)


def test_the_path_crosses_models_and_names_the_derivation_step(world: World) -> None:
    q = world.repo.resolve("q")
    assert first_parent(world.repo, q) == world.repo.resolve("ft@2")  # no previous version: derived_from
    path = ancestry(world.repo, q)
    assert [v.ref for v in path] == ["base@1", "base@2", "ft@1", "ft@2", "q@1"]
    b = world.bisect(world.check, path)
    assert b.verdict == FOUND and b.first_bad == q and b.last_good is not None and b.last_good.ref == "ft@2"
    assert b.step() == "derived from ft@2 by cast: cast with a bad scale"
    doc = b.to_json()
    assert doc["first_bad"]["ref"] == "q@1" and doc["last_good"]["ref"] == "ft@2" and doc["verdict"] == FOUND
    assert doc["path"] == [v.ref for v in path] and doc["runs"] == b.runs == len(doc["probes"]) - b.reused


def test_a_given_path_walks_through_a_second_parent(world: World) -> None:
    mix = world.repo.resolve("mix")
    assert [v.ref for v in ancestry(world.repo, mix)] == ["x@1", "mix@1"]  # first parents: x passes
    path = given_path(world.repo, mix, ["y@1", "y@2"])
    assert [v.ref for v in path] == ["y@1", "y@2", "mix@1"]
    b = world.bisect(world.check, path)
    assert b.verdict == FOUND and b.first_bad is not None and b.first_bad.ref == "y@2"
    assert b.step() == "a new version of y by finetune"
    for refs, why in [(["x@1", "y@2"], "x@1 is not an ancestor of y@2"), (["y@2", "y@2"], "twice"),
                      (["y@2", "x@1"], "y@2 is not an ancestor of x@1"), (["mix@1", "y@1"], "oldest first")]:
        with pytest.raises(ModelfsError, match=why):
            given_path(world.repo, mix, refs)
    with pytest.raises(ModelfsError, match="not on the --path"):
        given_path(world.repo, mix, ["y@2"], good=world.repo.resolve("y@1"))
    assert [v.ref for v in given_path(world.repo, mix, ["y@1", "y@2"], good=world.repo.resolve("y@2"))] == \
        ["y@2", "mix@1"]
